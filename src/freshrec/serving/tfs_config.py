"""TF Serving's ``BatchingParameters`` and ``MonitoringConfig`` text protos, and its batching rules.

The ``tensorflow-serving-api`` wheel ships the API and model-config protos but not
``servables/tensorflow/session_bundle_config.proto`` (``BatchingParameters``) nor
``config/monitoring_config.proto`` (``MonitoringConfig``). The two messages are declared here with the same
package (``tensorflow.serving``), names, field numbers and types as TF Serving 2.21 declares them, in a
private descriptor pool, so a file parses here exactly when ``tensorflow_model_server``'s
``ParseProtoTextFile`` accepts it (an unknown or misspelt field is an error in both).

The checks in :func:`batching_options` are the ones the binary makes when it wraps a session for batching
(``bundle_factory_util.cc``, ``batching_session.cc``); the defaults are those of TensorFlow's
``SharedBatchScheduler::QueueOptions``.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, kind: int, type_name: str = "", repeated: bool = False) -> _F:
    field = _F(name=name, number=number, type=kind)
    field.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name:
        field.type_name = type_name
    return field


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    msg = _F.TYPE_MESSAGE
    i64, s, b = ".google.protobuf.Int64Value", ".google.protobuf.StringValue", ".google.protobuf.BoolValue"
    batching = descriptor_pb2.DescriptorProto(
        name="BatchingParameters",
        field=[
            _field("max_batch_size", 1, msg, i64),
            _field("batch_timeout_micros", 2, msg, i64),
            _field("max_enqueued_batches", 3, msg, i64),
            _field("num_batch_threads", 4, msg, i64),
            _field("thread_pool_name", 5, msg, s),
            _field("allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True),
            _field("pad_variable_length_inputs", 7, _F.TYPE_BOOL),
            _field("enable_large_batch_splitting", 8, msg, b),
            _field("max_execution_batch_size", 9, msg, i64),
        ],
    )
    prometheus = descriptor_pb2.DescriptorProto(
        name="PrometheusConfig",
        field=[_field("enable", 1, _F.TYPE_BOOL), _field("path", 2, _F.TYPE_STRING)],
    )
    monitoring = descriptor_pb2.DescriptorProto(
        name="MonitoringConfig",
        field=[_field("prometheus_config", 1, msg, ".tensorflow.serving.PrometheusConfig")],
    )
    pool.Add(
        descriptor_pb2.FileDescriptorProto(
            name="freshrec/tensorflow_serving_config.proto",
            package="tensorflow.serving",
            syntax="proto3",
            dependency=["google/protobuf/wrappers.proto"],
            message_type=[batching, prometheus, monitoring],
        )
    )
    return pool


_POOL = _build_pool()
BatchingParameters: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
)
MonitoringConfig: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
)

# TF Serving's default metrics path when prometheus_config.path is empty (prometheus_exporter.h).
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def parse_text_proto(path: Path | str, message_class: Any) -> Any:
    """Parse an ascii proto file as ``tensorflow_model_server`` does.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: ``Invalid protobuf file: '<path>'`` with the parser's reason.
    """
    path = Path(path)
    message = message_class()
    try:
        text_format.Parse(path.read_text(), message)
    except text_format.ParseError as exc:
        raise ValueError(f"Invalid protobuf file: '{path}': {exc}") from exc
    return message


@dataclass(frozen=True)
class BatchingOptions:
    """The effective batching settings of one server (defaults filled in, rules checked)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 1
    thread_pool_name: str = "model_server_batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 1000

    @property
    def execution_limit(self) -> int:
        """The most rows one batch runs with (``max_execution_batch_size`` when splitting)."""
        return self.max_execution_batch_size if self.enable_large_batch_splitting else self.max_batch_size


def batching_options(params: Any | None = None) -> BatchingOptions:
    """Effective options from a ``BatchingParameters`` message (None: ``--enable_batching`` alone).

    Raises:
        ValueError: the rules TF Serving enforces at load (``allowed_batch_sizes`` monotonic and ending at
            ``max_batch_size``, or at ``max_execution_batch_size`` with large-batch splitting; positive sizes).
    """
    if params is None:
        params = BatchingParameters()
    max_batch = params.max_batch_size.value if params.HasField("max_batch_size") else 1000
    splitting = params.HasField("enable_large_batch_splitting") and params.enable_large_batch_splitting.value
    max_exec = (
        params.max_execution_batch_size.value if params.HasField("max_execution_batch_size") else max_batch
    )
    threads = params.num_batch_threads.value if params.HasField("num_batch_threads") else os.cpu_count() or 1
    allowed = tuple(int(x) for x in params.allowed_batch_sizes)
    if max_batch <= 0:
        raise ValueError(f"max_batch_size must be positive, got {max_batch}")
    if threads <= 0:
        raise ValueError(f"num_batch_threads must be >= 1, got {threads}")
    if allowed:
        if any(b <= a for a, b in itertools.pairwise(allowed)) or allowed[0] <= 0:
            raise ValueError("allowed_batch_sizes entries must be monotonically increasing")
        if splitting:
            if allowed[-1] > max_batch:
                raise ValueError(
                    "Last entry in allowed_batch_sizes must be less than or equal to max_batch_size; "
                    f"last entry was {allowed[-1]}; expected {max_batch}"
                )
            if allowed[-1] != max_exec:
                raise ValueError(
                    "Last entry in allowed_batch_sizes must be equal to max_execution_batch_size; "
                    f"last entry was {allowed[-1]}; expected {max_exec}"
                )
        elif allowed[-1] != max_batch:
            raise ValueError(
                "Last entry in allowed_batch_sizes must match max_batch_size; "
                f"last entry was {allowed[-1]}; expected {max_batch}"
            )
    return BatchingOptions(
        max_batch_size=max_batch,
        batch_timeout_micros=(
            params.batch_timeout_micros.value if params.HasField("batch_timeout_micros") else 0
        ),
        max_enqueued_batches=(
            params.max_enqueued_batches.value if params.HasField("max_enqueued_batches") else 10
        ),
        num_batch_threads=threads,
        thread_pool_name=(
            params.thread_pool_name.value
            if params.HasField("thread_pool_name")
            else "model_server_batch_threads"
        ),
        allowed_batch_sizes=allowed,
        pad_variable_length_inputs=bool(params.pad_variable_length_inputs),
        enable_large_batch_splitting=bool(splitting),
        max_execution_batch_size=max_exec if splitting else max_batch,
    )


def load_batching_file(path: Path | str) -> BatchingOptions:
    """Parse and check a ``--batching_parameters_file``."""
    return batching_options(parse_text_proto(path, BatchingParameters))


def prometheus_path(path: Path | str | None) -> str | None:
    """The metrics path a ``--monitoring_config_file`` exports (None: no metrics, as TF Serving without one)."""
    if path is None:
        return None
    config = parse_text_proto(path, MonitoringConfig)
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
