"""TF Serving warmup records: ``assets.extra/tf_serving_warmup_requests`` beside a SavedModel.

TF Serving (``--enable_model_warmup``, on by default) replays this file before it reports a version
AVAILABLE: a TFRecord file, each record a serialized ``tensorflow.serving.PredictionLog``; at most 1000
records; each replayed ``--num_request_iterations_for_warmup`` times (default once); a record that fails
fails the load. An export writes a few ``predict_log`` records built from real rows (the validation window
in batch training, the newest learned events in the online learner) at the batch sizes the server will
see, so the first ranking request after a canary starts does not pay graph tracing and allocation.
The local server replays the same file the same way (``freshrec.serving.loader``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ASSETS_EXTRA = "assets.extra"
REQUESTS_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # WarmupConsts::kMaxNumRecords
# One record per size: single-item lookups, a page of candidates, a large ranking request.
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 10, 100)


def warmup_path(export_dir: Path | str) -> Path:
    """Where TF Serving looks for the warmup records of a SavedModel directory."""
    return Path(export_dir) / ASSETS_EXTRA / REQUESTS_FILE


def predict_logs(
    inputs: dict[str, np.ndarray],
    model_name: str,
    signature_name: str = "serving_default",
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
) -> list[Any]:
    """``PredictionLog`` messages with ``predict_log.request`` of the given batch sizes, from real rows.

    Rows are taken in order and wrap around when a size exceeds the rows given.

    Raises:
        ValueError: no rows, inputs of different lengths, or more than :data:`MAX_RECORDS` sizes.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    lengths = {name: len(v) for name, v in inputs.items()}
    if not lengths or len(set(lengths.values())) != 1 or next(iter(lengths.values())) == 0:
        raise ValueError(f"warmup inputs need the same, non-zero number of rows per input; got {lengths}")
    if len(batch_sizes) > MAX_RECORDS:
        raise ValueError(f"at most {MAX_RECORDS} warmup records, asked for {len(batch_sizes)}")
    rows = next(iter(lengths.values()))
    logs = []
    for size in batch_sizes:
        take = np.arange(size) % rows
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature_name
        for name, values in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(values)[take]))
        logs.append(
            prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        )
    return logs


def write_warmup_requests(export_dir: Path | str, logs: Iterable[Any]) -> Path:
    """Write ``PredictionLog`` messages as the TFRecord file TF Serving replays; returns its path."""
    import tensorflow as tf

    path = warmup_path(export_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(export_dir: Path | str) -> list[Any]:
    """The ``PredictionLog`` records of a SavedModel directory ([] when it has none, as TF Serving allows).

    Raises:
        ValueError: a record is not a PredictionLog, the file is not TFRecord, or it has more than 1000
            records (TF Serving fails the load in each case).
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    path = warmup_path(export_dir)
    if not path.is_file():
        return []
    logs = []
    try:
        for i, record in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
            if i >= MAX_RECORDS:
                raise ValueError(f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}")
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(record)
            except DecodeError as exc:
                raise ValueError(f"Failed to parse warmup record {i} from {path}: {exc}") from exc
            logs.append(log)
    except tf.errors.DataLossError as exc:
        raise ValueError(f"{path} is not a TFRecord file: {exc.message}") from exc
    return logs


def request_arrays(log: Any) -> tuple[str, dict[str, np.ndarray]]:
    """(signature name, named input arrays) of a ``predict_log`` record.

    Raises:
        ValueError: the record is not a predict log (this server replays predict requests only).
    """
    import tensorflow as tf

    kind = log.WhichOneof("log_type")
    if kind != "predict_log":
        raise ValueError(f"Unsupported log_type for warmup: {kind} (this server serves Predict only)")
    request = log.predict_log.request
    return request.model_spec.signature_name, {
        name: tf.make_ndarray(proto) for name, proto in request.inputs.items()
    }
