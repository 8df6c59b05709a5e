"""The monitor as a batch job: ``freshrec drift check``, the cluster's CronJob.

Between two runs the job keeps no state of its own, so it rebuilds what the loop's :class:`Monitor` carries
from window to window out of the shared files:

* drift thresholds: calibrated on the reference frame itself: its last part is the reference profile,
  windows of the current window's size from before it are the null windows;
* served quality: the prediction log joined with the clicks of the event log (the canary analysis' join);
  the current window is the last ``window`` of predictions, the baseline the ``served_baseline_windows``
  windows before it, and the label-free estimate is calibrated on the baseline's labelled rows;
* liveness: the online learner's checkpoint (its newest learned event) against the event log's newest
  event, and the model server's status against the repository's ``stable`` label.

It returns the drift result and the window report; the CLI prints them, pushes the metrics (the
PrometheusRules fire on them) and syncs the local receivers.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from freshrec.config import Settings
from freshrec.monitoring.catalogue import Signal, inhibited
from freshrec.monitoring.drift.result import DriftResult
from freshrec.monitoring.monitor import (
    ServingState,
    WindowReport,
    _dedupe,
    _serving_signals,
    lag_signals,
    report_from_drift,
    served_signals,
)

log = logging.getLogger(__name__)


def calibrated_check(
    settings: Settings,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Any,
    out_dir: Path | None,
    *,
    html: bool = True,
    calibrate: bool = True,
    profile_cache_dir: Path | None = None,
    cache_key: str | None = None,
) -> tuple[DriftResult, list[str]]:
    """The drift check with thresholds calibrated on the reference's own earlier windows when it can.

    Returns the result and notes on how the thresholds were set (printed by the CLI).
    """
    from freshrec.monitoring.drift.calibration import calibrate as fit
    from freshrec.monitoring.drift.check import build_reference_profile, check_drift

    m = settings.monitor
    notes: list[str] = []
    if "event_timestamp" in reference.columns:  # windows are cut by position: time order first
        reference = reference.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    window_rows = len(current)
    origin = (
        pd.to_datetime(reference["event_timestamp"], utc=True).min()
        if "event_timestamp" in reference.columns and len(reference)
        else None
    )
    reference_rows = max(2 * window_rows, len(reference) // 5)
    earlier = reference.iloc[: max(len(reference) - reference_rows, 0)]
    enough = window_rows > 0 and len(earlier) >= m.calibration_min_windows * window_rows
    if not (calibrate and enough):
        if calibrate:
            notes.append(
                f"fixed thresholds: the reference ({len(reference)} rows) holds fewer than "
                f"{m.calibration_min_windows} windows of {window_rows} rows before its last {reference_rows}"
            )
        result = check_drift(
            reference,
            current,
            columns,
            settings.drift,
            out_dir,
            html=html,
            profile_cache_dir=profile_cache_dir,
            cache_key=cache_key,
        )
        return result, notes
    tail = reference.iloc[-reference_rows:]
    prof = build_reference_profile(
        tail,
        columns,
        settings.drift,
        growth_origin=origin,
        profile_cache_dir=profile_cache_dir,
        cache_key=f"{cache_key}-tail{reference_rows}" if cache_key else None,
    )
    cal = fit(
        prof,
        earlier,
        columns,
        settings.drift,
        window_rows=window_rows,
        max_windows=m.calibration_windows,
        false_alarm_rate=m.false_alarm_rate,
        score_column=settings.drift.score_column if settings.drift.score_column in reference else "",
        min_windows=m.calibration_min_windows,
    )
    notes.append(
        f"thresholds calibrated on {cal.windows} windows of {window_rows} rows before the last {reference_rows} "
        f"reference rows (false-alarm rate {cal.false_alarm_rate:g})"
    )
    result = check_drift(
        prof, current, columns, settings.drift, out_dir, html=html, calibration=cal, growth_origin=origin
    )
    return result, notes


def served_window_signals(
    settings: Settings, predictions_dir: Path, events: pd.DataFrame, window: pd.Timedelta
) -> tuple[list[Signal], dict[str, Any]]:
    """Served-quality and estimate signals of the last ``window`` of the prediction log."""
    from freshrec.monitoring.estimate import PerformanceEstimator
    from freshrec.monitoring.served import ServedQualityMonitor
    from freshrec.serving.predlog import join_clicks, read_predictions

    m = settings.monitor
    preds = read_predictions(predictions_dir)
    if preds.empty:
        return [], {"predictions": 0}
    end = preds["served_at"].max()
    preds = preds[preds["served_at"] > end - window * (m.served_baseline_windows + 1)]
    labelled = join_clicks(preds, events, settings.rollout.click_window_s)
    served = ServedQualityMonitor(
        baseline_windows=m.served_baseline_windows,
        min_labels=m.min_labels,
        max_logloss_increase=m.max_logloss_increase,
        page_logloss_increase=m.page_logloss_increase,
        ctr_collapse_ratio=m.ctr_collapse_ratio,
        alpha=m.alpha,
    )
    estimator = PerformanceEstimator(max_rows=m.estimate_max_rows, min_rows=m.estimate_min_rows)
    bounds = [end - window * k for k in range(m.served_baseline_windows + 1, -1, -1)]
    *baseline, (lo, _) = list(itertools.pairwise(bounds))  # the baseline windows, then the current one
    current = labelled[labelled["served_at"] > lo]
    for b_lo, b_hi in baseline:
        part = labelled[
            (labelled["served_at"] > b_lo) & (labelled["served_at"] <= b_hi) & labelled["label"].notna()
        ]
        if len(part):
            served.seed(part["score"].to_numpy(float), part["label"].to_numpy(float))
            estimator.observe(part["score"].to_numpy(float), part["label"].to_numpy(float))
    estimate = estimator.estimate(current["score"].to_numpy(float))
    known = current[current["label"].notna()]
    quality = (
        served.check(known["score"].to_numpy(float), known["label"].to_numpy(float)) if len(known) else None
    )
    facts = {"predictions": len(current), "labelled": len(known), "served": quality, "estimate": estimate}
    return served_signals(quality, estimate, m.estimate_max_logloss_increase), facts


def learner_newest(state_dir: Path, model: str) -> pd.Timestamp | None:
    """The newest event the online learner's latest checkpoint learned (None: no checkpoint)."""
    root = Path(state_dir) / "online" / model
    pointer = root / "CURRENT"
    if not pointer.is_file():
        return None
    try:
        state = json.loads((root / pointer.read_text().strip() / "state.json").read_text())
        newest = state["totals"].get("newest_learned_time")
    except (OSError, ValueError, KeyError) as exc:
        log.warning("online learner checkpoint unreadable: %s", exc)
        return None
    return pd.Timestamp(newest) if newest else None


def serving_state(settings: Settings, serving_url: str) -> ServingState:
    """The repository's stable version (with its publish time) and what the server reports AVAILABLE."""
    from freshrec.model.repository import ModelRepository
    from freshrec.monitoring.monitor import served_versions

    repo = ModelRepository(settings.models_dir, settings.model.name)
    stable = repo.stable()
    published_at = None
    if stable is not None:
        created = repo.metadata(stable).get("created_at")
        published_at = datetime.fromisoformat(created).timestamp() if created else None
    return ServingState(
        published_version=stable,
        published_at=published_at,
        served_versions=served_versions(serving_url, settings.model.name),
    )


def window_report(
    settings: Settings,
    result: DriftResult,
    *,
    events: pd.DataFrame | None = None,
    predictions_dir: Path | None = None,
    window: pd.Timedelta | None = None,
    serving_url: str | None = None,
) -> tuple[WindowReport, dict[str, Any]]:
    """The drift result's signals plus served quality, the learner's lag and the server's version."""
    report = report_from_drift(result)
    signals = list(report.signals)
    facts: dict[str, Any] = {}
    if (
        predictions_dir is not None
        and events is not None
        and window is not None
        and Path(predictions_dir).is_dir()
    ):
        extra, facts = served_window_signals(settings, Path(predictions_dir), events, window)
        signals += extra
        report.served, report.estimate = facts.get("served"), facts.get("estimate")
    if events is not None and len(events):
        head = pd.to_datetime(events["event_timestamp"], utc=True).max()
        learner = learner_newest(settings.state_dir, settings.model.name)
        if learner is not None or (settings.state_dir / "online" / settings.model.name).exists():
            progress = {"online_learner": learner}
            signals += lag_signals(progress, head, settings.monitor)
            report.lags_s = {
                "online_learner": None if learner is None else max((head - learner).total_seconds(), 0.0)
            }
    if serving_url:
        state = serving_state(settings, serving_url)
        publishes = {state.published_version: state.published_at} if state.published_at else {}
        signals += _serving_signals(state, time.time(), settings.monitor.serving_publish_grace_s, publishes)
    report.signals = _dedupe(signals)
    report.inhibited = inhibited(report.signals)
    return report, facts
