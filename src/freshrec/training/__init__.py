"""Batch training of the CTR model: tf.data input, early stopping, warm start, crash resume, GPUs.

The training set (a frame from ``freshrec.features.training_set.build_training_frame`` or a Parquet file of
it) is turned into column arrays once; a ``tf.data`` pipeline slices, shuffles and batches them, so no
pandas work happens per epoch. Validation is the later, time-ordered slice the caller passes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from freshrec.config import ModelSettings, TrainingSettings
from freshrec.model.spec import FeatureSpec, frame_to_inputs, labels_of
from freshrec.training.metrics import auc, logloss

log = logging.getLogger(__name__)

Frame = pd.DataFrame | str | Path
# progress(epoch_done, epochs, logs) — e.g. a rich progress bar in the CLI
ProgressFn = Callable[[int, int, dict[str, float]], None]
WARMUP_ROWS = 100


@dataclass
class TrainResult:
    """The trained model (best epoch's weights), its spec and what happened."""

    model: Any
    spec: FeatureSpec
    history: dict[str, list[float]]
    metrics: dict[str, float]
    model_settings: ModelSettings
    parent: str | None = None
    warm_started: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def export(self, out_dir: Path | str) -> Path:
        """Write the SavedModel (+ spec, Keras weights and TF Serving warmup records of validation rows)
        with :func:`freshrec.model.export.export_model`."""
        from freshrec.model.export import export_model

        return export_model(self.model, out_dir, self.spec, warmup=self.extra.get("warmup_inputs"))


def load_columns(source: Frame, spec: FeatureSpec) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Model inputs and labels from a frame or a Parquet file/folder (read column by column with pyarrow).

    Raises:
        ValueError: a column is missing or a label is not 0/1.
        FileNotFoundError: the Parquet path does not exist.
    """
    if isinstance(source, pd.DataFrame):
        return frame_to_inputs(source, spec), labels_of(source, spec)
    import pyarrow.parquet as pq

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"training data not found: {path}")
    wanted = [*spec.input_names, spec.label]
    table = pq.read_table(path, columns=wanted)
    # A thin frame of exactly the needed columns, converted column by column (no full copy of the file).
    frame = pd.DataFrame({name: table.column(name).to_numpy(zero_copy_only=False) for name in wanted})
    try:
        return frame_to_inputs(frame, spec), labels_of(frame, spec)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def make_dataset(
    inputs: dict[str, np.ndarray],
    labels: np.ndarray,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 42,
    sample_weight: np.ndarray | None = None,
) -> Any:
    """A ``tf.data.Dataset`` of (feature dict, label[, weight]) batches over column arrays held once in memory.

    Shuffling permutes row indices each epoch and gathers whole batches (one ``tf.gather`` per column),
    instead of shuffling and batching row by row, which costs a per-row step for every column.
    """
    import tensorflow as tf

    n = len(labels)
    columns: tuple[Any, ...] = (
        {k: tf.convert_to_tensor(v) for k, v in inputs.items()},
        tf.convert_to_tensor(labels),
    )
    if sample_weight is not None:
        columns = (*columns, tf.convert_to_tensor(np.asarray(sample_weight, dtype=np.float32)))
    indices = tf.data.Dataset.range(n)
    if shuffle:
        indices = indices.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    indices = indices.batch(batch_size)
    data = tf.data.Dataset.from_tensors(columns).repeat()

    def gather(idx: Any, cols: Any) -> Any:
        return tf.nest.map_structure(lambda t: tf.gather(t, idx), cols)

    ds = tf.data.Dataset.zip((indices, data)).map(
        gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def _strategy() -> Any:
    """MirroredStrategy over the visible GPUs; the default (single-device) strategy on CPU."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    return tf.distribute.get_strategy()


def _callbacks(
    training: TrainingSettings,
    checkpoint_dir: Path | None,
    progress: ProgressFn | None,
    monitor: str,
) -> list[Any]:
    import keras

    mode = "max" if monitor.endswith("auc") else "min"
    callbacks: list[Any] = [
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=training.early_stopping_patience, restore_best_weights=True
        )
    ]
    if training.lr_reduce_factor < 1:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor,
                mode=mode,
                factor=training.lr_reduce_factor,
                patience=training.lr_reduce_patience,
                min_lr=training.min_learning_rate,
                min_delta=0.0,
            )
        )
    if checkpoint_dir is not None:
        # Saves the model, optimizer and epoch counter each epoch; a rerun with the same folder resumes.
        callbacks.append(keras.callbacks.BackupAndRestore(str(checkpoint_dir), delete_checkpoint=True))

    class _Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = {k: float(v) for k, v in (logs or {}).items()}
            logs.setdefault(
                "learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            )
            log.info(
                "epoch %d/%d %s",
                epoch + 1,
                training.epochs,
                " ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items())),
            )
            if progress is not None:
                progress(epoch + 1, training.epochs, logs)

    callbacks.append(_Progress())
    return callbacks


def train(
    train_df: Frame,
    valid_df: Frame,
    spec: FeatureSpec,
    model_settings: ModelSettings | None = None,
    training_settings: TrainingSettings | None = None,
    parent: Path | str | None = None,
    checkpoint_dir: Path | str | None = None,
    progress: ProgressFn | None = None,
    callbacks: list[Any] | None = None,
    verbose: int = 0,
    sample_weight: np.ndarray | None = None,
) -> TrainResult:
    """Train a CTR model; return it with the best validation epoch's weights.

    Args:
        train_df: training-set rows (earlier in time), a frame or a Parquet path.
        valid_df: validation rows (later in time than ``train_df``), same columns.
        spec: the feature spec; adapted to ``train_df`` here when it has no stats yet. With a ``parent``
            the parent's spec is used instead (its stats and tables belong to its weights).
        model_settings: architecture and sizes.
        training_settings: batch size, epochs, learning rate, patience, seed, mixed precision.
        parent: a model export / repository version directory to warm-start from (needs its
            ``model.weights.h5``); ids unseen by the parent hash into its fixed tables.
        checkpoint_dir: where to keep a per-epoch backup; after a crash, the same call resumes there.
        progress: called after each epoch with ``(epoch, epochs, logs)``.
        callbacks: extra Keras callbacks.
        verbose: Keras ``fit`` verbosity (0 silent; progress goes to ``logging`` and ``progress``).
        sample_weight: one weight per training row (e.g. :mod:`freshrec.training.feedback`'s); the
            validation rows are never weighted, so early stopping compares epochs on the plain window.

    Raises:
        ValueError: bad columns/labels, empty frames, or a parent incompatible with ``model_settings``.
    """
    import keras

    model_settings = model_settings or ModelSettings()
    training = training_settings or TrainingSettings()
    keras.utils.set_random_seed(training.seed)

    parent_spec: FeatureSpec | None = None
    if parent is not None:
        from freshrec.model.export import load_spec

        parent_spec = load_spec(parent)
        missing = [n for n in parent_spec.input_names if n not in spec.input_names]
        if missing:
            log.warning("parent %s takes inputs %s that the new spec lacks", parent, missing)
        spec = parent_spec
    if not spec.adapted:
        if not isinstance(train_df, pd.DataFrame):
            train_df = pd.read_parquet(train_df, columns=[*spec.input_names, spec.label])
        spec = spec.adapt(train_df)

    x_train, y_train = load_columns(train_df, spec)
    x_valid, y_valid = load_columns(valid_df, spec)
    if len(y_train) == 0:
        raise ValueError("training frame is empty")
    if len(y_valid) == 0:
        raise ValueError("validation frame is empty")
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        if len(sample_weight) != len(y_train):
            raise ValueError(
                f"sample_weight has {len(sample_weight)} values for {len(y_train)} training rows"
            )
        if not np.all(np.isfinite(sample_weight)) or (sample_weight < 0).any():
            raise ValueError("sample_weight must be finite and non-negative")

    policy_before = keras.config.dtype_policy()
    strategy = _strategy()
    if training.mixed_precision:
        # float16 on GPUs (with loss scaling, added by compile); bfloat16 is the CPU's fast half type.
        import tensorflow as tf

        keras.config.set_dtype_policy(
            "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
        )
    try:
        with strategy.scope():
            if parent is not None:
                from freshrec.model.export import load_keras_model

                model = load_keras_model(parent, model_settings)
            else:
                from freshrec.model.builder import build_model
                from freshrec.model.export import attach

                model = attach(build_model(spec, model_settings), spec, model_settings)
            model.compile(
                optimizer=keras.optimizers.Adam(training.learning_rate),
                loss=keras.losses.BinaryCrossentropy(),
                metrics=[keras.metrics.AUC(name="auc")],
            )
    finally:
        keras.config.set_dtype_policy(policy_before)

    batch = training.batch_size * max(1, strategy.num_replicas_in_sync)
    train_ds = make_dataset(
        x_train, y_train, batch, shuffle=True, seed=training.seed, sample_weight=sample_weight
    )
    valid_ds = make_dataset(x_valid, y_valid, max(batch, 4096), shuffle=False)

    initial = model.evaluate(valid_ds, verbose=0, return_dict=True)
    log.info(
        "training %s on %d rows (valid %d), initial val loss %.4f%s",
        model_settings.architecture,
        len(y_train),
        len(y_valid),
        initial["loss"],
        f", warm start from {parent}" if parent else "",
    )
    monitor = "val_auc" if 0 < y_valid.sum() < len(y_valid) else "val_loss"
    start = time.perf_counter()
    hist = model.fit(
        train_ds,
        validation_data=valid_ds,
        epochs=training.epochs,
        shuffle=False,  # the dataset shuffles itself (each epoch, seeded)
        callbacks=[
            *_callbacks(training, Path(checkpoint_dir) if checkpoint_dir else None, progress, monitor),
            *(callbacks or []),
        ],
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    epochs_run = len(history.get("loss", []))

    p_valid = np.asarray(model.predict(valid_ds, verbose=0), dtype=np.float64).reshape(-1)
    best_values = history.get(monitor, [])
    metrics = {
        "val_auc": auc(y_valid, p_valid),
        "val_logloss": logloss(y_valid, p_valid),
        # before any training step (and before a resumed backup is restored): a warm start shows here
        "initial_val_loss": float(initial["loss"]),
        "epochs_run": float(epochs_run),
        "best_epoch": float(
            (int(np.argmax(best_values)) if monitor == "val_auc" else int(np.argmin(best_values))) + 1
            if best_values
            else 0
        ),
        "train_rows": float(len(y_train)),
        "valid_rows": float(len(y_valid)),
        "train_seconds": seconds,
        "examples_per_s": len(y_train) * epochs_run / seconds if seconds > 0 and epochs_run else math.nan,
    }
    log.info(
        "trained: val_auc %.4f val_logloss %.4f (%d epochs)",
        metrics["val_auc"],
        metrics["val_logloss"],
        epochs_run,
    )
    return TrainResult(
        model=model,
        spec=spec,
        history=history,
        metrics=metrics,
        model_settings=model_settings,
        parent=str(parent) if parent is not None else None,
        warm_started=parent is not None,
        # Real rows for TF Serving's warmup records: the newest (validation) window is what serving sees next.
        extra={"warmup_inputs": {k: v[:WARMUP_ROWS] for k, v in x_valid.items()}},
    )


@dataclass
class TrainingRun:
    """What :func:`run_training` did: metrics of candidate and production, the verdict, the version."""

    dataset: str
    architecture: str
    candidate: dict[str, float]
    production: dict[str, float] | None
    production_version: int | None
    slices: dict[str, dict[str, float]]
    blessing: dict[str, Any]
    train_metrics: dict[str, float]
    data_window: dict[str, str]
    parent_version: int | None
    infra: dict[str, Any] | None = None
    version: int | None = None
    labelled_stable: bool = False

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def run_training(
    settings: Any,
    dataset: str | None = None,
    architecture: str | None = None,
    parent_version: int | None = None,
    publish: bool = False,
    progress: ProgressFn | None = None,
    data: Any | None = None,
) -> TrainingRun:
    """The whole batch flow: load a described dataset, build its training set, split, train, evaluate on the
    test window (candidate and the stable version), bless, and optionally infra-check and publish.

    The first blessed version published into an empty repository also gets the ``stable`` label (there is
    nothing to canary against); later versions are left for the canary rollout to promote. Every published
    version's training frame is kept as its drift reference (``freshrec.model.references``), and the stable
    version's becomes ``stable.parquet``, as the pipeline's push and rollout steps do.

    Args:
        settings: a :class:`freshrec.config.Settings`.
        dataset: a dataset description name or YAML path (default ``settings.data.dataset``).
        architecture: ``dcn`` or ``lr`` (default ``settings.model.architecture``).
        parent_version: warm-start from this repository version (default: the stable one when
            ``settings.training.warm_start``; ``0`` forces a cold start).
        publish: export, infra-check and publish the candidate when it is blessed.
        progress: per-epoch callback.
        data: an already loaded ``freshrec.data.datasets.Dataset`` (e.g. from the synthetic generator);
            ``dataset`` is then ignored.
    """
    from freshrec.data.datasets import load_dataset, load_description
    from freshrec.evaluation import bless, evaluate
    from freshrec.features.training_set import training_frames
    from freshrec.io import staging_dir
    from freshrec.model import predict
    from freshrec.model.export import predict_saved_model
    from freshrec.model.repository import ModelRepository
    from freshrec.model.spec import FeatureSpec

    model_settings = settings.model
    if architecture:
        model_settings = model_settings.model_copy(update={"architecture": architecture})
    if data is None:
        description = load_description(dataset or settings.data.dataset)
        data = load_dataset(description, settings.data.datasets_dir)
    description = data.description
    fractions = (
        settings.data.train_fraction,
        settings.data.valid_fraction,
        1.0 - settings.data.train_fraction - settings.data.valid_fraction,
    )
    train_df, valid_df, test_df = training_frames(data, fractions)
    repo = ModelRepository(settings.models_dir, model_settings.name)
    stable = repo.stable()
    if parent_version is None and settings.training.warm_start:
        parent_version = stable
    parent_dir = repo.path(parent_version) if parent_version else None
    spec = FeatureSpec.for_description(description, model_settings.id_hash_buckets, frame=train_df)
    if parent_dir is not None:
        from freshrec.model.export import load_spec

        if load_spec(parent_dir).structure_hash() != spec.structure_hash():
            log.warning(
                "parent version %s has another feature layout; warm start keeps the parent's", parent_version
            )
    from freshrec.training.feedback import feedback_training_frame

    fit_df, weights, feedback = feedback_training_frame(train_df, settings)
    result = train(
        fit_df,
        valid_df,
        spec,
        model_settings,
        settings.training,
        parent=parent_dir,
        checkpoint_dir=settings.state_dir / "training-backup" / model_settings.name,
        progress=progress,
        sample_weight=weights,
    )
    if feedback.mode != "off":
        result.metrics.update({f"feedback_{k}": v for k, v in feedback.to_dict().items()})
    known = {"known_users": set(train_df["user_id"]), "known_items": set(train_df["item_id"])}
    scored = test_df.assign(score=predict(result.model, test_df, result.spec))
    report = evaluate(scored, **known)
    production = None
    if stable is not None:
        production = evaluate(
            test_df.assign(score=predict_saved_model(repo.path(stable), test_df)), **known
        ).metrics
    verdict = bless(report.metrics, production, settings.blessing)
    run = TrainingRun(
        dataset=description.name,
        architecture=model_settings.architecture,
        candidate=report.metrics,
        production=production,
        production_version=stable,
        slices=report.slices,
        blessing=verdict.to_dict(),
        train_metrics=result.metrics,
        data_window={
            "train_start": str(train_df["event_timestamp"].min()),
            "train_end": str(train_df["event_timestamp"].max()),
            "test_start": str(test_df["event_timestamp"].min()),
            "test_end": str(test_df["event_timestamp"].max()),
            "split": description.split,
        },
        parent_version=parent_version or None,
    )
    if not publish:
        return run
    if not verdict.blessed:
        log.warning("candidate not blessed (%s); not published", "; ".join(verdict.reasons))
        return run
    from freshrec.model.infra import infra_check

    # Export beside the versions (same file system, so publish can rename instead of copy); the dot
    # prefix keeps it invisible to readers of the repository and to TF Serving.
    with staging_dir(repo.root, prefix="staging-export") as tmp:
        export_dir = result.export(Path(tmp) / "export")
        sample = test_df.head(64)
        check = infra_check(export_dir, sample, predict(result.model, sample, result.spec))
        run.infra = check.to_dict()
        if not check.ok:
            log.error("infra check failed: %s; not published", check.message)
            return run
        run.version = repo.publish(
            export_dir,
            {
                "metrics": report.metrics,
                "slices": report.slices,
                "production_metrics": production,
                "production_version": stable,
                "train_metrics": result.metrics,
                "data_window": run.data_window,
                "dataset": description.name,
                "parent_version": run.parent_version,
                "feature_spec_hash": result.spec.hash(),
                "architecture": model_settings.architecture,
                "blessing": verdict.to_dict(),
                "infra_check": check.to_dict(),
            },
            move=True,
        )
    # The drift monitor's reference for this version, as the pipeline's push step writes it: the training
    # frame (the CronJob compares the event log with the stable version's, references/<model>/stable.parquet).
    from freshrec.model.references import ReferenceStore

    references = ReferenceStore(settings.references_dir, model_settings.name)
    references.write_frame(run.version, train_df)
    if stable is None:
        repo.set_label("stable", run.version)
        references.promote(run.version)
        run.labelled_stable = True
    return run
