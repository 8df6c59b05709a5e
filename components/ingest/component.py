"""Ingest: validate new events into the event log and snapshot the window the pipeline trains on."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output
from kfp.dsl.python_component import PythonComponent


def ingest(
    workdir: str,
    settings_json: str,
    events: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
    dataset: str = "",
    source_path: str = "",
) -> NamedTuple("IngestOutputs", [("received", int), ("accepted", int), ("quarantined", int)]):
    """Bring events into the event log, then write the whole log as one Parquet snapshot.

    Args:
        workdir: freshrec state directory.
        settings_json: settings as JSON (merged over the defaults).
        events: output Parquet snapshot of the event log after ingestion (what later steps read).
        metrics: received / accepted / quarantined counts.
        report: Markdown summary with the quarantine reasons.
        dataset: a dataset name or description file to prepare (load, validate, write to the log and the
            profile tables); empty: the settings' dataset when the log is empty, else nothing.
        source_path: an event file to ingest (validated, bad rows quarantined with reasons).
    """
    import json
    from collections import namedtuple
    from pathlib import Path

    from freshrec.config import load_settings
    from freshrec.data.eventlog import EventLog
    from freshrec.data.ingest import ingest_file
    from freshrec.data.prepare import prepare

    settings = load_settings(None, **{**json.loads(settings_json or "{}"), "workdir": workdir})
    log = EventLog(settings.eventlog_dir)
    done = None
    if source_path:
        done = ingest_file(Path(source_path), settings)
    elif dataset or not log.files():
        done = prepare(settings, dataset=dataset or None).ingest
    counts = {
        "received": done.received if done else 0,
        "accepted": done.accepted if done else 0,
        "quarantined": done.quarantined if done else 0,
    }
    snapshot = log.read()
    snapshot.to_parquet(events.path, index=False)
    events.metadata["rows"] = len(snapshot)
    for name, value in counts.items():
        metrics.log_metric(name, value)
    metrics.log_metric("log_rows", len(snapshot))
    reasons = dict(done.reasons) if done else {}
    lines = ["# Ingest", "", "| | rows |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in counts.items()]
    lines += [f"| event log | {len(snapshot)} |", "", "## Quarantine reasons", ""]
    lines += [f"- {reason}: {n}" for reason, n in sorted(reasons.items())] or ["- none"]
    with open(report.path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return namedtuple("IngestOutputs", ["received", "accepted", "quarantined"])(**counts)


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`ingest` in ``image``."""
    return dsl.component(ingest, base_image=image, install_kfp_package=False)
