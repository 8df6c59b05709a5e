"""Export a model as a TF Serving SavedModel on raw named inputs, and load it back.

An export directory holds:

- the SavedModel (``saved_model.pb``, ``variables/``) with signature ``serving_default``: one 1-D input per
  feature (``tf.string`` / ``tf.int64`` / ``tf.float32``, named as in the spec) → ``{"probability": [batch, 1]}``;
- ``feature_spec.json`` and ``model_settings.json``: what is needed to rebuild the Keras model;
- ``model.weights.h5``: the Keras weights, so a child model can warm-start from this version;
- ``assets.extra/tf_serving_warmup_requests`` when sample rows are given: TF Serving's warmup records
  (:mod:`freshrec.model.warmup`), replayed by the real binary and the local server before the version is
  AVAILABLE.

TF Serving ignores the other extra files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from freshrec.config import ModelSettings
from freshrec.model.builder import OUTPUT_NAME
from freshrec.model.spec import FeatureSpec, frame_to_inputs

SPEC_FILE = "feature_spec.json"
SETTINGS_FILE = "model_settings.json"
WEIGHTS_FILE = "model.weights.h5"
SIGNATURE = "serving_default"

_TF_DTYPES = {"string": "string", "int64": "int64", "float32": "float32"}


def attach(model: Any, spec: FeatureSpec, settings: ModelSettings) -> Any:
    """Remember the spec and settings on the model object (export and warm start read them)."""
    # Plain attributes: Keras does not track str values, so they do not end up in the weights.
    model._freshrec_spec_json = spec.to_json()
    model._freshrec_settings_json = settings.model_dump_json()
    return model


def spec_of(model: Any) -> FeatureSpec:
    text = getattr(model, "_freshrec_spec_json", None)
    if text is None:
        raise ValueError(
            "model has no feature spec attached; build it with freshrec.model.builder and attach()"
        )
    return FeatureSpec.from_json(text)


def settings_of(model: Any) -> ModelSettings:
    text = getattr(model, "_freshrec_settings_json", None)
    return ModelSettings.model_validate_json(text) if text else ModelSettings()


def export_model(
    model: Any,
    out_dir: Path | str,
    spec: FeatureSpec | None = None,
    *,
    warmup: pd.DataFrame | dict[str, np.ndarray] | None = None,
) -> Path:
    """Write the SavedModel (+ spec, settings and Keras weights) to ``out_dir``, atomically.

    The directory is written next to ``out_dir`` under a temporary name and renamed at the end, so a crash
    never leaves a half-written export at ``out_dir``. ``out_dir`` must not exist yet (or be empty).

    Args:
        model: a Keras model built by :mod:`freshrec.model.builder` (spec attached).
        out_dir: the export directory.
        spec: the feature spec (default: the one attached to the model).
        warmup: real sample rows (a frame with the model's input columns, or input arrays) for TF
            Serving's warmup records; None writes none (TF Serving then loads the version cold).

    Returns:
        ``out_dir``.
    """
    import keras
    import tensorflow as tf

    spec = spec or spec_of(model)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"export directory {out_dir} already exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    # mkdtemp makes the folder 0700: a model server running as another user (TF Serving's pods, the
    # cluster's model volume read by several workloads) could not read the version. Give it the umask's mode.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        # The serving function is traced once per model and spec: the online learner exports the same
        # model object again and again (a new tf.function would be traced anew each time).
        cached = getattr(model, "_freshrec_export_serve", None)
        if cached is not None and cached[0] == spec.to_json():
            serve = cached[1]
        else:
            signature = {
                f.name: tf.TensorSpec(shape=[None], dtype=_TF_DTYPES[f.dtype], name=f.name)
                for f in spec.features
            }

            @tf.function(input_signature=[signature])
            def serve(features):
                return {OUTPUT_NAME: tf.cast(model(features, training=False), tf.float32)}

            model._freshrec_export_serve = (spec.to_json(), serve)

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(SIGNATURE, serve)
        archive.write_out(str(tmp), verbose=False)
        if warmup is not None:
            from freshrec.model.warmup import predict_logs, write_warmup_requests

            rows = frame_to_inputs(warmup, spec) if isinstance(warmup, pd.DataFrame) else warmup
            # Only the signature's inputs: a frame may carry labels and ids the model does not take.
            rows = {name: np.asarray(rows[name]) for name in spec.input_names}
            write_warmup_requests(tmp, predict_logs(rows, settings_of(model).name, SIGNATURE))
        (tmp / SPEC_FILE).write_text(spec.to_json())
        (tmp / SETTINGS_FILE).write_text(settings_of(model).model_dump_json(indent=1))
        model.save_weights(str(tmp / WEIGHTS_FILE))
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_spec(export_dir: Path | str) -> FeatureSpec:
    """The feature spec stored beside a SavedModel."""
    path = Path(export_dir) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {SPEC_FILE} in {export_dir}: not a freshrec export")
    return FeatureSpec.from_json(path.read_text())


def load_keras_model(export_dir: Path | str, settings: ModelSettings | None = None) -> Any:
    """Rebuild the Keras model of an export and load its weights (for warm start and online learning).

    Args:
        export_dir: a directory written by :func:`export_model` (e.g. a repository version).
        settings: architecture to rebuild; defaults to the settings stored in the export.

    Raises:
        FileNotFoundError: the export has no Keras weights or spec.
        ValueError: the weights do not fit the architecture.
    """
    from freshrec.model.builder import build_model

    export_dir = Path(export_dir)
    spec = load_spec(export_dir)
    if settings is None:
        stored = export_dir / SETTINGS_FILE
        settings = (
            ModelSettings.model_validate_json(stored.read_text()) if stored.is_file() else ModelSettings()
        )
    weights = export_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(
            f"no Keras weights ({WEIGHTS_FILE}) in {export_dir}; cannot warm-start from it"
        )
    model = build_model(spec, settings)
    try:
        model.load_weights(str(weights))
    except ValueError as exc:
        raise ValueError(
            f"weights in {weights} do not fit a {settings.architecture} model built from its spec: {exc}"
        ) from exc
    return attach(model, spec, settings)


def predict_saved_model(path: Path | str, df: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
    """Probabilities from the SavedModel's ``serving_default`` signature on raw rows of ``df`` (1-D)."""
    import tensorflow as tf

    path = Path(path)
    spec = load_spec(path)
    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures[SIGNATURE]
    inputs = frame_to_inputs(df, spec)
    outs = []
    for start in range(0, len(df), batch_size):
        batch = {k: tf.constant(v[start : start + batch_size]) for k, v in inputs.items()}
        outs.append(fn(**batch)[OUTPUT_NAME].numpy().reshape(-1))
    return np.concatenate(outs) if outs else np.zeros(0, dtype=np.float32)


def signature_inputs(path: Path | str) -> dict[str, str]:
    """Input name → dtype name of the SavedModel's serving signature (what a client must send)."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures[SIGNATURE]
    _, kwargs = fn.structured_input_signature
    return {name: spec.dtype.name for name, spec in kwargs.items()}


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
