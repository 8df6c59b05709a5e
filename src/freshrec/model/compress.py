"""A compressed serving variant: distil a published version into a smaller DCN-V2 on the same raw inputs.

The student keeps the parent's feature spec (so the serving signature — input names and dtypes — is
identical and the gateway needs no change) and shrinks the architecture: smaller embeddings, one
low-rank cross layer, a narrow deep tower (:data:`STUDENT`). It is fitted on the parent's predicted
probabilities (soft labels, the distillation target) blended with the clicks, then evaluated and blessed
against the parent on the same window with :func:`freshrec.evaluation.bless` — the parent plays the
production model — and published as its own version with ``parent_version`` and ``compressed_from``.

Verdict (``benchmarks/bench_explain_compress.py``): on MovieLens-100k the student loses < 0.002 AUC with
a quarter of the parameters, but it is NOT faster at batch 100 in-process (ratio ~0.95): at that batch the
cost is the per-op overhead of the raw-input encodings (hashing, lookups, normalisation of every input),
not the cross and deep layers the student shrinks. So nothing compresses by default — the loop and the
pipeline never call it; ``freshrec models compress --version N`` is there for a deployment whose batches
are large enough for the dense layers to dominate.

float16 weights are not offered: TF Serving on CPU runs float16 matmuls slower than float32, and the
SavedModel would still carry float32 casts on its inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from freshrec.config import BlessingSettings, ModelSettings

# The student's architecture (overrides of the parent's ModelSettings).
STUDENT: dict[str, Any] = {
    "embedding_dim": 4,
    "cross_layers": 1,
    "cross_rank": 4,
    "deep_units": [32],
    "dropout": 0.0,
}


@dataclass
class Compression:
    """The outcome: metrics of both on the window, the verdict, and the published version (if any)."""

    parent_version: int
    parent_metrics: dict[str, float]
    student_metrics: dict[str, float]
    blessing: dict[str, Any]
    student_settings: dict[str, Any]
    parameters: dict[str, int]
    seconds: float
    version: int | None = None
    slices: dict[str, Any] = field(default_factory=dict)

    @property
    def auc_loss(self) -> float:
        return float(self.parent_metrics["auc"]) - float(self.student_metrics["auc"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "parent_version": self.parent_version,
            "version": self.version,
            "auc_loss": self.auc_loss,
            "parent_metrics": self.parent_metrics,
            "student_metrics": self.student_metrics,
            "blessing": self.blessing,
            "student_settings": self.student_settings,
            "parameters": self.parameters,
            "seconds": self.seconds,
        }


def student_settings(parent: ModelSettings, **overrides: Any) -> ModelSettings:
    """The parent's settings with the student's smaller architecture."""
    if parent.architecture != "dcn":
        raise ValueError(f"only a dcn version can be compressed, this one is {parent.architecture!r}")
    return parent.model_copy(update={**STUDENT, **overrides})


def distil(
    parent_dir: Path | str,
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame | None = None,
    *,
    epochs: int = 6,
    batch_size: int = 512,
    learning_rate: float = 3e-3,
    soft_weight: float = 0.8,
    seed: int = 0,
    **overrides: Any,
) -> Any:
    """Fit the student on ``soft_weight`` x parent probability + (1 - soft_weight) x click; return it.

    Raises:
        ValueError: the parent is not a DCN, or the frames lack the parent's inputs.
    """
    import keras

    from freshrec.model.builder import build_model
    from freshrec.model.export import attach, load_keras_model, load_spec
    from freshrec.model.spec import frame_to_inputs, labels_of

    parent_dir = Path(parent_dir)
    spec = load_spec(parent_dir)
    teacher = load_keras_model(parent_dir)
    settings = student_settings(_settings_of(parent_dir), **overrides)
    keras.utils.set_random_seed(seed)
    student = attach(build_model(spec, settings), spec, settings)
    x = frame_to_inputs(train_df, spec)
    soft = np.asarray(teacher.predict(x, batch_size=4096, verbose=0)).reshape(-1)
    target = soft_weight * soft + (1 - soft_weight) * labels_of(train_df, spec)
    student.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
    callbacks, validation = [], None
    if valid_df is not None and len(valid_df):
        xv = frame_to_inputs(valid_df, spec)
        tv = np.asarray(teacher.predict(xv, batch_size=4096, verbose=0)).reshape(-1)
        validation = (xv, soft_weight * tv + (1 - soft_weight) * labels_of(valid_df, spec))
        callbacks = [keras.callbacks.EarlyStopping(patience=1, restore_best_weights=True)]
    student.fit(
        x,
        target.astype(np.float32),
        batch_size=batch_size,
        epochs=epochs,
        validation_data=validation,
        callbacks=callbacks,
        verbose=0,
    )
    return student


def _settings_of(export_dir: Path) -> ModelSettings:
    from freshrec.model.export import SETTINGS_FILE

    stored = export_dir / SETTINGS_FILE
    return ModelSettings.model_validate_json(stored.read_text()) if stored.is_file() else ModelSettings()


def count_parameters(model: Any) -> int:
    return int(sum(np.prod(w.shape) for w in model.weights))


def compress_version(
    repo: Any,
    version: int,
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame | None,
    test_df: pd.DataFrame,
    *,
    policy: BlessingSettings | None = None,
    publish: bool = True,
    epochs: int = 6,
    batch_size: int = 512,
    seed: int = 0,
) -> Compression:
    """Distil ``version`` of ``repo``, evaluate both on ``test_df``, bless the student against the parent,
    and publish it (when blessed and ``publish``) with its parent recorded.

    Raises:
        freshrec.model.repository.RepositoryError: no such version.
        ValueError: the version cannot be compressed (not a DCN) or the frames do not fit it.
    """
    from freshrec.evaluation import bless, evaluate
    from freshrec.io import staging_dir
    from freshrec.model.explain import keras_predictor, saved_model_predictor
    from freshrec.model.export import export_model, load_keras_model

    start = time.perf_counter()
    repo.metadata(version)  # raises RepositoryError for an unknown version
    parent_dir = repo.path(version)
    student = distil(parent_dir, train_df, valid_df, epochs=epochs, batch_size=batch_size, seed=seed)
    # The cold-start slices need ids; a window without them is scored overall only.
    have_ids = all(c in df.columns for c in ("user_id", "item_id") for df in (train_df, test_df))
    kw = (
        {"known_users": set(train_df["user_id"]), "known_items": set(train_df["item_id"])} if have_ids else {}
    )
    ids = {} if "user_id" in test_df.columns else {"user_id": np.full(len(test_df), "")}
    parent_eval = evaluate(test_df.assign(score=saved_model_predictor(parent_dir)(test_df), **ids), **kw)
    student_eval = evaluate(test_df.assign(score=keras_predictor(student)(test_df), **ids), **kw)
    verdict = bless(student_eval.metrics, parent_eval.metrics, policy)
    parent_params = count_parameters(load_keras_model(parent_dir))
    result = Compression(
        parent_version=version,
        parent_metrics=parent_eval.metrics,
        student_metrics=student_eval.metrics,
        blessing=verdict.to_dict(),
        student_settings=student_settings(_settings_of(parent_dir)).model_dump(),
        parameters={"parent": parent_params, "student": count_parameters(student)},
        seconds=0.0,
        slices=student_eval.slices,
    )
    if publish and verdict.blessed:
        with staging_dir(repo.root, prefix="staging-compress") as tmp:
            export_dir = export_model(student, Path(tmp) / "export", warmup=test_df.head(64))
            parent_meta = repo.metadata(version)
            result.version = repo.publish(
                export_dir,
                {
                    "metrics": student_eval.metrics,
                    "slices": student_eval.slices,
                    "production_metrics": parent_eval.metrics,
                    "production_version": version,
                    "parent_version": version,
                    "compressed_from": version,
                    "compression": {
                        "method": "distillation",
                        "student": STUDENT,
                        "parameters": result.parameters,
                    },
                    "dataset": parent_meta.get("dataset"),
                    "feature_spec_hash": parent_meta.get("feature_spec_hash"),
                    "architecture": "dcn",
                    "blessing": verdict.to_dict(),
                },
                move=True,
            )
    result.seconds = time.perf_counter() - start
    return result


def predict_throughput(
    export_dir: Path | str, frame: pd.DataFrame, batch: int = 100, seconds: float = 3.0
) -> float:
    """Rows/s of the SavedModel's ``serving_default`` signature in-process, on batches of ``batch`` rows."""
    import tensorflow as tf

    from freshrec.model.export import SIGNATURE, load_spec
    from freshrec.model.spec import frame_to_inputs

    fn = tf.saved_model.load(str(export_dir)).signatures[SIGNATURE]
    inputs = frame_to_inputs(frame.head(batch), load_spec(export_dir))
    tensors = {k: tf.constant(v) for k, v in inputs.items()}
    for _ in range(5):
        fn(**tensors)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(**tensors)
        calls += 1
    return calls * batch / (time.perf_counter() - start)
