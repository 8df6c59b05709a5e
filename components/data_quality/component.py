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
    import tempfile
    from collections import namedtuple

    import pandas as pd

    from freshrec.config import load_settings
    from freshrec.monitoring.drift import check_drift, write_pipeline_outputs

    settings = load_settings(None, **{**json.loads(settings_json or "{}"), "workdir": workdir})
    ref = pd.read_parquet(reference.path)
    cur = pd.read_parquet(current.path)
    # No columns named: every column but settings.drift.ignore_columns, times and the label.
    with tempfile.TemporaryDirectory() as out_dir:
        drift = check_drift(ref, cur, None, settings.drift, out_dir, score_column="")
        logged = write_pipeline_outputs(drift, report.path, summary.path, "Data quality and drift")
    with open(result.path, "w") as f:
        f.write(drift.model_dump_json(indent=2))
    for name, value in logged.items():
        metrics.log_metric(name, value)
    data_ok = drift.verdict in ("ok", "drift")
    result.metadata["verdict"] = drift.verdict
    return namedtuple("DataQualityOutputs", ["data_ok", "verdict"])(data_ok, str(drift.verdict))


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`data_quality` in ``image``."""
    return dsl.component(data_quality, base_image=image, install_kfp_package=False)
