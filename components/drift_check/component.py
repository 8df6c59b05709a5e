"""Drift check: the recent window of the event log against the window before it."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Markdown, Metrics, Output
from kfp.dsl.python_component import PythonComponent


def drift_check(
    workdir: str,
    settings_json: str,
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    result: Output[Artifact],
    window_hours: float = 24.0,
    reference_hours: float = 168.0,
    now: str = "",
) -> NamedTuple("DriftCheckOutputs", [("verdict", str), ("drift_share", float)]):
    """Compare the features of the last ``window_hours`` of events with the ``reference_hours`` before them.

    Features are computed point-in-time from the event log and the profile tables (the same frame the
    model trains on), so the check sees what the model sees.

    Args:
        workdir: freshrec state directory (event log, profile tables, reports).
        settings_json: settings as JSON (merged over the defaults; ``drift`` holds the thresholds).
        report: the Evidently HTML report.
        summary: Markdown table of per-feature drift and the quality failures.
        metrics: drift share and per-feature scores.
        result: the drift result JSON (what alert and trigger read, by name).
        window_hours: length of the recent ("current") window.
        reference_hours: length of the reference window just before it.
        now: end of the recent window (ISO 8601); empty: just after the newest event in the log (replayed
            data carries old timestamps, so the wall clock would see an empty window).

    Returns:
        The verdict (ok | drift | quality_failure | not_enough_data) and the share of drifted features.
    """
    import json
    import tempfile
    from collections import namedtuple

    import pandas as pd

    from freshrec.config import load_settings
    from freshrec.data.eventlog import EventLog
    from freshrec.features.store import table_paths
    from freshrec.features.training_set import build_training_frame
    from freshrec.monitoring.drift import check_drift, write_pipeline_outputs

    settings = load_settings(None, **{**json.loads(settings_json or "{}"), "workdir": workdir})
    events = EventLog(settings.eventlog_dir).read()
    if events.empty:
        raise ValueError(f"the event log {settings.eventlog_dir} is empty: nothing to check")
    end = pd.Timestamp(now) if now else events["event_timestamp"].max() + pd.Timedelta(microseconds=1)
    end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    split = end - pd.Timedelta(hours=window_hours)
    start = split - pd.Timedelta(hours=reference_hours)
    # Activity features need the history before the windows too, so build on everything up to `end`.
    history = events[events["event_timestamp"] < end]
    tables = table_paths(settings)
    frame = build_training_frame(
        history, pd.read_parquet(tables["user_profile"]), pd.read_parquet(tables["item_profile"])
    )
    ts = frame["event_timestamp"]
    reference, current = frame[(ts >= start) & (ts < split)], frame[ts >= split]
    title = f"Drift {split:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M}"
    # No columns named: every column but settings.drift.ignore_columns, times and the label.
    with tempfile.TemporaryDirectory() as out_dir:
        drift = check_drift(reference, current, None, settings.drift, out_dir, score_column="")
        logged = write_pipeline_outputs(drift, report.path, summary.path, title)
    with open(result.path, "w") as f:
        f.write(drift.model_dump_json(indent=2))
    result.metadata.update({"verdict": drift.verdict, "window_start": str(split), "window_end": str(end)})
    for name, value in {**logged, "reference_rows": len(reference), "current_rows": len(current)}.items():
        metrics.log_metric(name, value)
    return namedtuple("DriftCheckOutputs", ["verdict", "drift_share"])(
        str(drift.verdict), float(drift.drift_share)
    )


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`drift_check` in ``image``."""
    return dsl.component(drift_check, base_image=image, install_kfp_package=False)
