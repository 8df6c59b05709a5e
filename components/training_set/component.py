"""Training set: point-in-time features for every event, split by time into train / valid / test."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output
from kfp.dsl.python_component import PythonComponent


def training_set(
    workdir: str,
    settings_json: str,
    events: Input[Dataset],
    train_set: Output[Dataset],
    valid_set: Output[Dataset],
    test_set: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """Build the point-in-time training frame (``features.training_set_engine``) and split it by time.

    Args:
        workdir: freshrec state directory.
        settings_json: settings as JSON (merged over the defaults).
        events: the event snapshot from ingest (the entity frame: ids, timestamps, labels).
        train_set: output Parquet, the oldest ``data.train_fraction`` of events.
        valid_set: output Parquet, the next ``data.valid_fraction``.
        test_set: output Parquet, the newest events (evaluation and the drift "current" window).
        metrics: rows and positive rate per split.
    """
    import json

    import pandas as pd

    from freshrec.config import load_settings
    from freshrec.data.datasets import time_split
    from freshrec.features import store

    settings = load_settings(None, **{**json.loads(settings_json or "{}"), "workdir": workdir})
    frame = store.training_set(settings, pd.read_parquet(events.path))
    fractions = (
        settings.data.train_fraction,
        settings.data.valid_fraction,
        1.0 - settings.data.train_fraction - settings.data.valid_fraction,
    )
    for name, part, out in zip(
        ("train", "valid", "test"),
        time_split(frame, fractions),
        (train_set, valid_set, test_set),
        strict=True,
    ):
        part.to_parquet(out.path, index=False)
        out.metadata["rows"] = len(part)
        out.metadata["start"] = str(part["event_timestamp"].min())
        out.metadata["end"] = str(part["event_timestamp"].max())
        metrics.log_metric(f"{name}_rows", len(part))
        metrics.log_metric(f"{name}_positive_rate", float(part["label"].mean()) if len(part) else 0.0)


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`training_set` in ``image``."""
    return dsl.component(training_set, base_image=image, install_kfp_package=False)
