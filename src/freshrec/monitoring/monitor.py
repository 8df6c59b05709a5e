"""The monitor: one window in, the signals that hold out — pages, tickets and notices, with their evidence.

Per window it runs the drift and data-quality check (calibrated thresholds; growth normalised), the
label-free performance estimate (before the labels are looked at), the served-quality tests over the
window's labels, and the liveness checks of the loop's parts (stream feature job and online learner lag,
the server's version after a publish, guard failures in a row, failed retraining, aborted canaries). Every
signal is an alert of :mod:`freshrec.monitoring.catalogue`; drift never pages, it becomes a notice and a
retraining reason. The same :class:`Monitor` runs in ``freshrec run`` (the loop), in the on-call drill and
in the cluster's monitor CronJob, where :func:`freshrec.monitoring.prometheus.record_monitor` exports its
report for the PrometheusRules.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from freshrec.config import MonitorSettings, Settings
from freshrec.monitoring.catalogue import PAGE, QUALITY_ALERTS, Signal, inhibited
from freshrec.monitoring.drift.calibration import DriftCalibration
from freshrec.monitoring.drift.profile import ReferenceProfile
from freshrec.monitoring.drift.result import DriftResult
from freshrec.monitoring.estimate import Estimate, PerformanceEstimator
from freshrec.monitoring.served import ServedQuality, ServedQualityMonitor

log = logging.getLogger(__name__)

# The component whose lag each alert watches, and the MonitorSettings field holding its SLO.
LAG_ALERTS: dict[str, tuple[str, str]] = {
    "stream_features": ("FreshrecStreamFeaturesStale", "stream_features_slo_s"),
    "online_learner": ("FreshrecOnlineLearnerStalled", "online_learner_slo_s"),
}
COMPONENT_NAMES = {"stream_features": "stream feature job", "online_learner": "online learner"}


class ServingState(BaseModel):
    """What was published and what the model server answers with."""

    published_version: int | None = None
    published_at: float | None = None  # on the monitor's clock
    served_versions: list[int] = Field(default_factory=list)  # versions the server reports AVAILABLE
    answered_versions: list[int] = Field(default_factory=list)  # versions seen in the window's responses
    detail: str = ""


class PipelineEvent(BaseModel):
    """Something the loop's automation reported failing in this window."""

    kind: Literal["retrain_failed", "canary_aborted"]
    detail: str
    version: int | None = None


class DriftSummary(BaseModel):
    verdict: str
    reason: str
    drift_share: float
    dataset_score: float | None = None
    dataset_threshold: float | None = None
    drifted: list[str] = Field(default_factory=list)
    expected_logloss_shift: float | None = None
    quality_failures: list[str] = Field(default_factory=list)


class WindowReport(BaseModel):
    """What the monitor found in one window (saved as ``window-NNN.json`` beside the drift report)."""

    window: int
    created_at: datetime
    n: int
    signals: list[Signal] = Field(default_factory=list)
    inhibited: dict[str, str] = Field(default_factory=dict)
    drift: DriftSummary | None = None
    served: ServedQuality | None = None
    estimate: Estimate | None = None
    lags_s: dict[str, float | None] = Field(default_factory=dict)
    report: str = ""
    retrain_reason: str | None = None

    @property
    def pages(self) -> list[Signal]:
        """Signals that page a person (not inhibited by another page)."""
        return [s for s in self.signals if s.is_page and s.name not in self.inhibited]

    @property
    def notices(self) -> list[Signal]:
        return [s for s in self.signals if s.severity == "info"]

    @property
    def tickets(self) -> list[Signal]:
        return [s for s in self.signals if s.severity == "warning"]


def served_versions(base_url: str, model: str, timeout_s: float = 2.0) -> list[int]:
    """Versions the model server reports AVAILABLE (TF Serving's ``GET /v1/models/<name>``); [] if unreachable."""
    import requests

    try:
        resp = requests.get(f"{base_url}/v1/models/{model}", timeout=timeout_s)
        resp.raise_for_status()
        statuses = resp.json().get("model_version_status", [])
    except (requests.RequestException, ValueError) as exc:
        log.warning("model server status unavailable: %s", exc)
        return []
    return sorted(int(s["version"]) for s in statuses if s.get("state") == "AVAILABLE")


def lag_signals(
    progress: Mapping[str, pd.Timestamp | None], head: pd.Timestamp, m: MonitorSettings
) -> list[Signal]:
    """A page for each component (``stream_features``, ``online_learner``) further behind than its SLO."""
    out = []
    for component, newest in progress.items():
        if component not in LAG_ALERTS:
            continue
        lag = None if newest is None else max((head - pd.Timestamp(newest)).total_seconds(), 0.0)
        alert, slo_field = LAG_ALERTS[component]
        slo = float(getattr(m, slo_field))
        if lag is not None and lag <= slo:
            continue
        behind = "has processed nothing" if lag is None else f"is {_duration(lag)} behind the stream"
        last = "never" if newest is None else pd.Timestamp(newest).isoformat()
        out.append(
            Signal.of(
                alert,
                f"the {COMPONENT_NAMES[component]} {behind} (newest event it processed: {last}; "
                f"stream head {head.isoformat()}; SLO {_duration(slo)})",
                component,
                lag_s=lag,
                slo_s=slo,
                newest_processed=last,
                head=head.isoformat(),
            )
        )
    return out


def guard_failures_in_a_row(exports: Sequence[Any]) -> int:
    """How many of the latest export attempts (records with ``passed``) failed their guard in a row."""
    n = 0
    for rec in reversed(exports):
        if getattr(rec, "passed", True):
            break
        n += 1
    return n


def signals_from_drift(result: DriftResult) -> list[Signal]:
    """The signals a drift result calls for: data-quality pages, drift notices."""
    base = {"verdict": result.verdict, "report": str(result.html_path or result.json_path or "")}
    out: list[Signal] = []
    by_alert: dict[str, list[Any]] = {}
    for failure in result.quality_failures:
        if failure.check == "row_count":
            out.append(Signal.of("FreshrecNotEnoughData", failure.message, "rows", **base))
            continue
        by_alert.setdefault(QUALITY_ALERTS[failure.check], []).append(failure)
    for name, failures in by_alert.items():
        columns = sorted({f.column for f in failures if f.column})
        out.append(
            Signal.of(
                name,
                "; ".join(f.message for f in failures[:5]),
                ",".join(columns),
                **base,
                failures=[f.model_dump() for f in failures[:20]],
            )
        )
    if result.dataset_drift:
        cal = result.calibration
        score = (
            f"dataset drift score {cal.dataset_score:.2f} >= {cal.dataset_threshold:.2f}"
            if cal is not None
            else f"drift share {result.drift_share:.2f}"
        )
        feats = result.drifted_features
        out.append(
            Signal.of(
                "FreshrecDataDrift",
                f"data drift ({score}): {', '.join(feats[:8]) or 'spread over many features'}; retraining",
                ",".join(feats),
                **base,
                drift_share=round(result.drift_share, 4),
                drifted_features=feats,
            )
        )
    e = result.expected_logloss
    if e is not None and e.drifted:
        out.append(
            Signal.of(
                "FreshrecPredictionDrift",
                f"predictions move the expected logloss {e.reference:.3f} -> {e.current:.3f} ({e.shift:+.3f})",
                "predictions",
                **base,
                expected_logloss=e.model_dump(),
            )
        )
    t = result.target_drift
    if t is not None and t.drifted:
        out.append(
            Signal.of(
                "FreshrecTargetDrift",
                f"click rate {t.reference_rate:.3f} -> {t.current_rate:.3f}",
                "CTR",
                **base,
                reference_rate=t.reference_rate,
                current_rate=t.current_rate,
            )
        )
    return out


def drift_summary(result: DriftResult) -> DriftSummary:
    """The parts of a drift result a window report keeps."""
    return DriftSummary(
        verdict=result.verdict,
        reason=result.reason,
        drift_share=result.drift_share,
        dataset_score=result.calibration.dataset_score if result.calibration else None,
        dataset_threshold=result.calibration.dataset_threshold if result.calibration else None,
        drifted=result.drifted_features,
        expected_logloss_shift=result.expected_logloss.shift if result.expected_logloss else None,
        quality_failures=[f.message for f in result.quality_failures],
    )


def report_from_drift(result: DriftResult, window: int = 0) -> WindowReport:
    """A window report with only what a drift check finds (data quality pages, drift notices)."""
    signals = signals_from_drift(result)
    return WindowReport(
        window=window,
        created_at=result.created_at,
        n=result.n_current,
        signals=signals,
        inhibited=inhibited(signals),
        drift=drift_summary(result),
        report=str(result.html_path or result.json_path or ""),
    )


def served_signals(q: ServedQuality | None, est: Estimate | None, estimate_margin: float) -> list[Signal]:
    """Pages for a served-quality drop or a CTR collapse, naming the side that broke."""
    if q is None:
        return []
    out: list[Signal] = []
    ev = q.model_dump()
    steady = est is not None and math.isfinite(q.baseline_logloss) and est.logloss - q.baseline_logloss < 0.02
    if q.ctr_collapsed:
        out.append(
            Signal.of(
                "FreshrecCTRCollapse",
                f"CTR collapsed to {q.ctr:.3f} from {q.baseline_ctr:.3f} (x{q.ctr_ratio:.2f}, p={q.ctr_p_value:.1e}, "
                f"n={q.n}): clicks stopped arriving — check click tracking and the label join",
                "CTR",
                **ev,
            )
        )
    if q.ranking_inverted or q.logloss_dropped:
        if q.ranking_inverted:
            cause = "labels"
            why = (
                f"ranking inverted: AUC {q.auc:.3f} (baseline {q.baseline_auc:.3f}) — clicks rank below "
                "non-clicks: the labels look flipped or the click join pairs the wrong rows"
            )
        elif steady:
            cause = "labels"
            why = (
                f"the label-free estimate stays at {est.logloss:.3f}: inputs and scores did not change, "  # type: ignore[union-attr]
                "the labels did (label pipeline, click join, or a real change in what users click)"
            )
        else:
            cause = "model"
            why = "the label-free estimate rose too: the inputs moved (see the drift report)"
        out.append(
            Signal.of(
                "FreshrecServedQualityDrop",
                f"served logloss {q.logloss:.3f} vs baseline {q.baseline_logloss:.3f} "
                f"(+{q.logloss_increase:.3f}, p={q.logloss_p_value:.1e}, n={q.n}); {why}",
                cause,
                **ev,
                estimated_logloss=est.logloss if est else None,
            )
        )
    elif q.logloss_degraded:
        out.append(
            Signal.of(
                "FreshrecServedQualityDegraded",
                f"served logloss {q.logloss:.3f} vs baseline {q.baseline_logloss:.3f} "
                f"(+{q.logloss_increase:.3f}, p={q.logloss_p_value:.1e}, n={q.n}); retraining",
                "model",
                **ev,
                estimated_logloss=est.logloss if est else None,
            )
        )
    if (
        est is not None
        and math.isfinite(q.baseline_logloss)
        and est.logloss - q.baseline_logloss > estimate_margin
    ):
        out.append(
            Signal.of(
                "FreshrecEstimatedQualityDrop",
                f"label-free estimate of the logloss {est.logloss:.3f} vs served baseline "
                f"{q.baseline_logloss:.3f} (+{est.logloss - q.baseline_logloss:.3f})",
                "predictions",
                estimate=est.model_dump(),
                baseline_logloss=q.baseline_logloss,
            )
        )
    return out


class Monitor:
    """Watches a model's windows: drift and quality, served quality, the loop's liveness.

    Args:
        settings: ``drift`` (methods, quality limits), ``monitor`` (what pages), ``model.name``.
        reference: the profile of the production model's reference window (or the frame to build it).
        columns: the checked feature columns (see :func:`~freshrec.monitoring.drift.resolve_columns`).
        calibration: drift thresholds fitted on earlier windows (``None``: the fixed thresholds).
        growth_origin: the stream's first event, for the growth-normalised columns.
        out_dir: where each window's drift report (HTML + JSON) and ``window-NNN.json`` go.
        html: render the Evidently HTML report per window.
        seed_scores, seed_labels: labelled scores from before the first window (the reference scored by
            the production model): the first calibration of the estimate and the first served baseline.
    """

    def __init__(
        self,
        settings: Settings,
        reference: ReferenceProfile | pd.DataFrame,
        columns: Any,
        *,
        calibration: DriftCalibration | None = None,
        growth_origin: pd.Timestamp | str | None = None,
        out_dir: Path | None = None,
        html: bool = False,
        seed_scores: np.ndarray | None = None,
        seed_labels: np.ndarray | None = None,
    ) -> None:
        m = settings.monitor
        from freshrec.monitoring.drift.check import build_reference_profile

        self.settings = settings
        self.reference = (
            reference
            if isinstance(reference, ReferenceProfile)
            else build_reference_profile(reference, columns, settings.drift, growth_origin=growth_origin)
        )
        self.columns = columns
        self.calibration = calibration
        self.growth_origin = growth_origin
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.html = html
        self.estimator = PerformanceEstimator(max_rows=m.estimate_max_rows, min_rows=m.estimate_min_rows)
        self.served = ServedQualityMonitor(
            baseline_windows=m.served_baseline_windows,
            min_labels=m.min_labels,
            max_logloss_increase=m.max_logloss_increase,
            page_logloss_increase=m.page_logloss_increase,
            ctr_collapse_ratio=m.ctr_collapse_ratio,
            alpha=m.alpha,
        )
        if seed_scores is not None and seed_labels is not None:
            self.estimator.observe(seed_scores, seed_labels)
            self.served.seed(seed_scores, seed_labels)
        self.reports: list[WindowReport] = []
        self._publishes: dict[int, float] = {}  # version -> when it was first seen published

    def observe(
        self,
        window: int,
        frame: pd.DataFrame,
        *,
        head_time: pd.Timestamp | None = None,
        now: float | None = None,
        offline: pd.DataFrame | None = None,
        progress: Mapping[str, pd.Timestamp | None] | None = None,
        serving: ServingState | None = None,
        guard_failures_in_a_row: int = 0,
        events: Sequence[PipelineEvent] = (),
    ) -> WindowReport:
        """Check one window.

        Args:
            window: its number (names the files).
            frame: the window's rows: features as served, ``score`` (served), ``label`` (NaN where the
                label has not arrived yet), ``event_timestamp``.
            head_time: the newest event of the stream (default: the window's newest).
            now: the monitor's clock in seconds (wall time; a replay may pass its own).
            offline: the same rows' offline features (train/serve skew check).
            progress: per component (``stream_features``, ``online_learner``), the newest event it has
                processed (``None``: nothing yet).
            serving: published vs served versions.
            guard_failures_in_a_row: the online learner's consecutive failed export guards.
            events: failures the automation reported in this window.
        """
        from freshrec.monitoring.drift.check import check_drift

        m = self.settings.monitor
        score_col, label_col = (
            self.settings.drift.score_column or "score",
            self.settings.drift.target_column or "label",
        )
        head = (
            pd.Timestamp(head_time) if head_time is not None else pd.Timestamp(frame["event_timestamp"].max())
        )
        now = float(now if now is not None else datetime.now(UTC).timestamp())
        drift_dir = self.out_dir / "drift" if self.out_dir is not None else None
        result = check_drift(
            self.reference,
            frame,
            self.columns,
            self.settings.drift,
            drift_dir,
            served=frame if offline is not None else None,
            offline=offline,
            stem=f"window-{window:03d}",
            html=self.html,
            calibration=self.calibration,
            growth_origin=self.growth_origin,
        )
        signals = signals_from_drift(result)

        scores = (
            frame[score_col].to_numpy(dtype=np.float64) if score_col in frame else np.full(len(frame), np.nan)
        )
        labels = (
            pd.to_numeric(frame[label_col], errors="coerce").to_numpy(dtype=np.float64)
            if label_col in frame
            else np.full(len(scores), np.nan)
        )
        estimate = self.estimator.estimate(scores)  # before this window's labels are used
        served = self.served.check(scores, labels)
        labelled = np.isfinite(labels) & np.isfinite(scores)
        if labelled.any() and not (served and (served.ranking_inverted or served.ctr_collapsed)):
            self.estimator.observe(scores[labelled], labels[labelled])
        signals += served_signals(served, estimate, m.estimate_max_logloss_increase)

        lags = {
            c: None if t is None else max((head - pd.Timestamp(t)).total_seconds(), 0.0)
            for c, t in (progress or {}).items()
        }
        signals += lag_signals(progress or {}, head, m)
        if serving is not None:
            if serving.published_version is not None and serving.published_at is not None:
                self._publishes.setdefault(serving.published_version, serving.published_at)
            signals += _serving_signals(serving, now, m.serving_publish_grace_s, self._publishes)
        if guard_failures_in_a_row >= m.guard_failures_to_page:
            signals.append(
                Signal.of(
                    "FreshrecOnlineGuardFailing",
                    f"the online learner's export guard failed {guard_failures_in_a_row} times in a row: no fresh "
                    "version reaches serving",
                    "online_learner",
                    failures_in_a_row=guard_failures_in_a_row,
                )
            )
        for event in events:
            name = "FreshrecRetrainFailed" if event.kind == "retrain_failed" else "FreshrecCanaryAborted"
            sig = Signal.of(name, event.detail, "retraining" if event.kind == "retrain_failed" else "canary")
            if event.version is not None:
                sig.labels["version"] = str(event.version)
                sig.cause = f"v{event.version}"
            signals.append(sig)

        signals = _dedupe(signals)
        report = WindowReport(
            window=window,
            created_at=datetime.now(UTC),
            n=len(frame),
            signals=signals,
            inhibited=inhibited(signals),
            drift=drift_summary(result),
            served=served,
            estimate=estimate,
            lags_s=lags,
            report=str(result.html_path or result.json_path or ""),
        )
        broken = any(s.is_page for s in signals)
        reasons = [
            s
            for s in signals
            if s.name in ("FreshrecDataDrift", "FreshrecPredictionDrift", "FreshrecServedQualityDegraded")
        ]
        if reasons and not broken:  # retraining while something is broken would learn the breakage
            report.retrain_reason = "monitor: " + "; ".join(s.summary for s in reasons)
        if self.out_dir is not None:
            from freshrec.monitoring.drift.result import _write_json

            _write_json(self.out_dir / f"window-{window:03d}.json", report.model_dump_json(indent=2))
        self.reports.append(report)
        return report


def _serving_signals(
    serving: ServingState, now: float, grace_s: float, publishes: Mapping[int, float]
) -> list[Signal]:
    """The server is stale when a version published more than ``grace_s`` ago is still not what it serves.

    What it serves is the newest version its answers carried (else the newest it reports AVAILABLE); the
    clock starts at the *earliest* publish it has not caught up with, so a stream of newer publishes does
    not keep restarting it.
    """
    v = serving.published_version
    if v is None:
        return []
    # What the server reports AVAILABLE decides (the window's answers may predate the publish); the
    # versions its answers carried are evidence.
    answered = sorted(set(serving.answered_versions))
    current = max(serving.served_versions) if serving.served_versions else 0
    pending = [p for p, _ in sorted(publishes.items()) if current < p <= v]
    if not pending:
        return []
    since = now - publishes[pending[0]]
    if since < grace_s:
        return []
    old = f"v{current}" if current else "no version"
    return [
        Signal.of(
            "FreshrecServingStaleVersion",
            f"v{pending[0]} was published {_duration(since)} ago (newest: v{v}) but the model server still "
            f"serves {old}"
            + (f" (answers carried {answered})" if answered else "")
            + (f"; {serving.detail}" if serving.detail else ""),
            f"serving:{old}->v{v}",
            published_version=v,
            served_versions=serving.served_versions,
            answered_versions=answered,
            since_publish_s=since,
        )
    ]


def _dedupe(signals: list[Signal]) -> list[Signal]:
    """One signal per alert name: a second one (e.g. two lag checks) joins the first's summary."""
    out: dict[str, Signal] = {}
    for s in signals:
        if s.name in out:
            first = out[s.name]
            first.summary += "; " + s.summary
            first.cause = ",".join(c for c in (first.cause, s.cause) if c)
        else:
            out[s.name] = s
    # Pages first, then tickets, then notices: the order a person reads them in.
    return sorted(out.values(), key=lambda s: (s.severity != PAGE, s.severity == "info"))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def monitor_for_stream(
    settings: Settings,
    history: pd.DataFrame,
    columns: Any,
    *,
    reference_rows: int,
    window_rows: int,
    growth_origin: pd.Timestamp | str | None = None,
    out_dir: Path | None = None,
    html: bool = False,
) -> Monitor:
    """A :class:`Monitor` for the windows that follow ``history`` (the production model's training rows).

    The reference is the last ``reference_rows`` rows of ``history``; the drift thresholds are calibrated on
    up to ``monitor.calibration_windows`` windows of ``window_rows`` rows before it (the fixed thresholds
    when the history is too short, with a warning). The estimate and the served baseline start with the
    first monitored window's labels, not the reference's: those are training rows, scored in-sample, and
    would make every later window look worse (and the estimate over-confident).
    """
    from freshrec.monitoring.drift.calibration import calibrate
    from freshrec.monitoring.drift.check import build_reference_profile

    m = settings.monitor
    history = history.reset_index(drop=True)
    reference = history.iloc[-reference_rows:]
    earlier = history.iloc[: max(len(history) - reference_rows, 0)]
    prof = build_reference_profile(reference, columns, settings.drift, growth_origin=growth_origin)
    score_col = settings.drift.score_column or "score"
    calibration = None
    try:
        calibration = calibrate(
            prof,
            earlier,
            columns,
            settings.drift,
            window_rows=window_rows,
            max_windows=m.calibration_windows,
            false_alarm_rate=m.false_alarm_rate,
            score_column=score_col if score_col in history else "",
            min_windows=m.calibration_min_windows,
        )
    except ValueError as exc:
        log.warning("drift thresholds not calibrated, the fixed ones apply: %s", exc)
    return Monitor(
        settings,
        prof,
        columns,
        calibration=calibration,
        growth_origin=growth_origin,
        out_dir=out_dir,
        html=html,
    )
