"""Data quality + drift: compare the newest window with the training window (Evidently)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output
from kfp.dsl.python_component import PythonComponent


def data_quality(
    workdir: str,
    settings_json: str,
    reference: Input[Dataset],
    current: Input[Dataset],
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    result: Output[Artifact],
) -> NamedTuple("DataQualityOutputs", [("data_ok", bool), ("verdict", str)]):
    """Check data quality and drift of ``current`` against ``reference``.

    Drift alone does not block a push (new data is why we retrain); a data-quality failure or too few rows
    does.

    Args:
        workdir: freshrec state directory.
        settings_json: settings as JSON (merged over the defaults; ``drift`` holds the thresholds).
        reference: the training frame.
        current: the evaluation frame (newest events).
        report: the Evidently HTML report.
        summary: Markdown table of per-feature drift and the quality failures.
        metrics: drift share and per-feature drift scores.
        result: the drift result JSON (``DriftResult.load`` reads it).

    Returns:
        ``data_ok`` (verdict is ``ok`` or ``drift``) and the verdict.
    """
    import json
    import shutil
    import tempfile
    from collections import namedtuple

    import pandas as pd

    from freshrec.config import load_settings
    from freshrec.drift import check_drift

    settings = load_settings(None, **{**json.loads(settings_json or "{}"), "workdir": workdir})
    ref = pd.read_parquet(reference.path)
    cur = pd.read_parquet(current.path)
    skip = {"event_id", "event_timestamp", "label", "user_id", "item_id", "created"}
    columns = [c for c in ref.columns if c not in skip and c in cur.columns]
    with tempfile.TemporaryDirectory() as out_dir:
        drift = check_drift(ref, cur, columns, settings.drift, out_dir, score_column="")
        if drift.html_path:
            shutil.copyfile(drift.html_path, report.path)
        else:
            with open(report.path, "w") as f:
                f.write(f"<html><body><p>No report: {drift.reason}</p></body></html>")
    with open(result.path, "w") as f:
        f.write(drift.model_dump_json(indent=2))
    data_ok = drift.verdict in ("ok", "drift")
    metrics.log_metric("drift_share", float(drift.drift_share))
    metrics.log_metric("quality_failures", len(drift.quality_failures))
    rows = ["| feature | method | score | threshold | drifted |", "|---|---|---|---|---|"]
    for name, feature in drift.features.items():
        metrics.log_metric(f"drift_{name}", float(feature.score))
        rows.append(
            f"| {name} | {feature.method} | {feature.score:.4f} | {feature.threshold} | {feature.drifted} |"
        )
    failures = [f"- {failure.message}" for failure in drift.quality_failures] or ["- none"]
    with open(summary.path, "w") as f:
        f.write(
            "\n".join(
                [
                    f"# Data quality and drift: {drift.verdict}",
                    "",
                    drift.reason,
                    "",
                    "Quality failures:",
                    *failures,
                    "",
                    *rows,
                ]
            )
            + "\n"
        )
    result.metadata["verdict"] = drift.verdict
    return namedtuple("DataQualityOutputs", ["data_ok", "verdict"])(data_ok, str(drift.verdict))


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`data_quality` in ``image``."""
    return dsl.component(data_quality, base_image=image, install_kfp_package=False)
