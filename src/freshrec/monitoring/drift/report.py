"""Reports of a check: the Evidently HTML report on bounded samples, and the pipeline artifacts.

Results are read from Evidently snapshots by metric type and column, never by list position.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from freshrec.config import DriftSettings
from freshrec.monitoring.drift.profile import ReferenceProfile, stratified_sample
from freshrec.monitoring.drift.result import ColumnKind, DriftResult, FeatureDrift, _stem


def _evidently_report(
    result: DriftResult,
    prof: ReferenceProfile,
    cur: pd.DataFrame,
    columns: Mapping[str, ColumnKind],
    evidently_only: Mapping[str, tuple[str, float]],
    settings: DriftSettings,
    out_dir: Path | str | None,
    stem: str | None,
    html: bool,
) -> None:
    """Run Evidently on bounded samples (or on full columns for methods only Evidently has)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import (
        MissingValueCount,
        OutRangeValueCount,
        RowCount,
        ValueDrift,
    )

    present = [c for c in columns if c in cur.columns]
    extras = [
        c
        for c in (settings.score_column, settings.target_column)
        if c and c in cur.columns and c not in columns
    ]
    ref_sample = prof.sample if prof.sample is not None else pd.DataFrame(columns=present)
    ref_sample = ref_sample[[c for c in present + extras if c in ref_sample.columns]]
    cur_sample = stratified_sample(cur, settings.max_sample_rows, settings.target_column, 0, present + extras)
    if evidently_only:
        # Methods without a fast path are computed by Evidently on the full current window; the reference
        # profile holds only a sample, so these columns are as exact as the sample allows.
        cur_sample = cur[present + extras]
    result.report_sample_rows = {"reference": len(ref_sample), "current": len(cur_sample)}

    numeric = [c for c in present if columns[c] == "numeric"] + [
        c for c in extras if c == settings.score_column
    ]
    categorical = [c for c in present if columns[c] == "categorical"]
    categorical += [c for c in extras if c == settings.target_column]
    ref_sample, cur_sample = ref_sample.copy(), cur_sample.copy()
    for c in categorical:
        ref_sample[c] = ref_sample[c].astype(str).where(ref_sample[c].notna())
        cur_sample[c] = cur_sample[c].astype(str).where(cur_sample[c].notna())
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)

    methods: dict[str, tuple[str, float]] = {n: (f.method, f.threshold) for n, f in result.features.items()}
    methods.update(evidently_only)
    metrics: list[Any] = [RowCount()]
    # No DriftedColumnsCount: it recomputes every column's drift (about half the report's cost) and, on a
    # sample, could show a count that contradicts the full-data verdict in the JSON.
    for name, (method, threshold) in methods.items():
        metrics.append(ValueDrift(column=name, method=method, threshold=threshold))
    if result.prediction_drift is not None:
        pd_ = result.prediction_drift
        metrics.append(ValueDrift(column=pd_.name, method=pd_.method, threshold=pd_.threshold))
    for name in present:
        metrics.append(MissingValueCount(column=name))
        if columns[name] == "numeric" and len(prof.sorted_values.get(name, ())):
            v = prof.sorted_values[name]
            span = v[-1] - v[0]
            lo = float(v[0] - settings.out_of_range_margin * span)
            hi = float(v[-1] + settings.out_of_range_margin * span)
            metrics.append(OutRangeValueCount(column=name, left=lo, right=hi))

    snapshot = Report(metrics).run(
        Dataset.from_pandas(cur_sample, data_definition=definition),
        Dataset.from_pandas(ref_sample, data_definition=definition),
    )
    values = _value_drift_by_column(snapshot.dict())
    for name, feat in result.features.items():
        feat.report_score = values.get(name)
    if result.prediction_drift is not None:
        result.prediction_drift.report_score = values.get(result.prediction_drift.name)
    for name, (method, threshold) in evidently_only.items():
        score = values.get(name)
        if score is None:
            result.skipped[name] = f"Evidently returned no value for method {method!r}"
            continue
        drifted = score < threshold if _is_p_value(method) else score >= threshold
        result.features[name] = FeatureDrift(
            name=name,
            kind=columns[name],
            method=method,
            threshold=threshold,
            score=score,
            drifted=drifted,
            exact=len(ref_sample) == prof.n_rows,
            report_score=score,
            n_reference=len(ref_sample),
            n_current=len(cur_sample),
        )
    if html and out_dir is not None:
        path = Path(out_dir) / f"{stem or _stem(result)}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.html")
        snapshot.save_html(str(tmp))
        os.replace(tmp, path)
        result.html_path = path


def _is_p_value(method: str) -> bool:
    # Evidently's statistical tests return p-values (drift when below the threshold); distances do not.
    return "p_value" in method.lower() or method in {
        "ks",
        "chisquare",
        "z",
        "t_test",
        "mannw",
        "anderson",
        "cramer_von_mises",
        "fisher_exact",
        "g_test",
        "es",
    }


def _value_drift_by_column(snapshot: dict[str, Any]) -> dict[str, float]:
    """ValueDrift values keyed by column, found by metric type in the snapshot (never by position)."""
    out: dict[str, float] = {}
    for metric in snapshot.get("metrics", []):
        config = metric.get("config", {})
        if str(config.get("type", "")).endswith(":ValueDrift") and isinstance(
            metric.get("value"), int | float
        ):
            out[str(config["column"])] = float(metric["value"])
    return out


def write_pipeline_outputs(
    result: DriftResult, report_path: str, summary_path: str, title: str
) -> dict[str, float]:
    """Write a check's KFP artifacts and return the metrics to log (shared by the pipeline components).

    ``report_path`` gets the Evidently HTML report (or a page saying why there is none), ``summary_path`` a
    Markdown page: the verdict, its reason, the quality failures and a row per feature. The returned metrics
    are the drift share, the number of quality failures and each feature's drift score (``drift_<name>``).
    """
    if result.html_path:
        Path(report_path).write_bytes(Path(result.html_path).read_bytes())
    else:
        Path(report_path).write_text(f"<html><body><p>No report: {result.reason}</p></body></html>")
    metrics = {
        "drift_share": float(result.drift_share),
        "quality_failures": float(len(result.quality_failures)),
    }
    rows = ["| feature | method | score | threshold | drifted |", "|---|---|---|---|---|"]
    for name, feature in sorted(result.features.items()):
        metrics[f"drift_{name}"] = float(feature.score)
        rows.append(
            f"| {name} | {feature.method} | {feature.score:.4f} | {feature.threshold} | {feature.drifted} |"
        )
    failures = [f"- {failure.message}" for failure in result.quality_failures] or ["- none"]
    lines = [f"# {title}: {result.verdict}", "", result.reason, "", "Quality failures:", *failures, "", *rows]
    Path(summary_path).write_text("\n".join(lines) + "\n")
    return metrics
