"""Prometheus metrics of the monitor: the last drift check, and the alerts the monitor found.

The drift check is a short batch job (a CronJob or a pipeline step), so it does not serve ``/metrics``
itself; it writes its figures where Prometheus can still read them after the job has exited:

* a **textfile** in the node-exporter textfile-collector format (``write_textfile``, atomic rename;
  default ``<state_dir>/metrics/freshrec_drift_<model>.prom``), or
* a **Pushgateway** (``push``; grouping key job + model), the usual choice for Kubernetes CronJobs.

:func:`record_monitor` adds the monitor's verdicts: ``freshrec_monitor_alert{alertname, severity, cause}``
is 1 for each alert of the catalogue whose condition holds (the PrometheusRules in
``manifests/base/monitoring/prometheusrule-monitor.yaml`` fire on it, so Alertmanager gets the same alerts
the local console shows), with the evidence beside it (served and estimated logloss, CTR, lags).

``serve`` exposes a registry over HTTP for a long-running monitor process. ``freshrec_drift_last_success_
timestamp_seconds`` is what ``manifests/base/monitoring/prometheusrule-drift.yaml`` watches to page when
checks stop running; a failed check (:func:`record_failure`) keeps the previous success time.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from freshrec.monitoring.drift import DriftResult
    from freshrec.monitoring.monitor import WindowReport

log = logging.getLogger(__name__)

VERDICTS = ("ok", "drift", "quality_failure", "not_enough_data")
LAST_SUCCESS = "freshrec_drift_last_success_timestamp_seconds"


def record_check(
    result: DriftResult,
    model: str,
    registry: CollectorRegistry | None = None,
    *,
    now: float | None = None,
) -> CollectorRegistry:
    """Put the figures of one finished check into ``registry`` (a fresh one when ``None``)."""
    from prometheus_client import CollectorRegistry, Gauge

    from freshrec.monitoring.drift.result import QUALITY_CHECKS

    registry = registry or CollectorRegistry()
    now = time.time() if now is None else now
    labels = {"model": model}

    def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, ["model", *extra], registry=registry)

    gauge("freshrec_drift_share", "Share of checked features whose drift score passed its threshold.").labels(
        **labels
    ).set(result.drift_share)
    gauge("freshrec_drift_dataset_drift", "1 when the drift share reached the dataset threshold.").labels(
        **labels
    ).set(float(result.dataset_drift))
    verdict = gauge(
        "freshrec_drift_verdict", "1 for the verdict of the last check, 0 for the others.", ("verdict",)
    )
    for v in VERDICTS:
        verdict.labels(model=model, verdict=v).set(float(result.verdict == v))
    score = gauge(
        "freshrec_drift_feature_score",
        "Drift score of each feature (method-specific).",
        ("feature", "method"),
    )
    drifted = gauge("freshrec_drift_feature_drifted", "1 when the feature drifted.", ("feature",))
    threshold = gauge("freshrec_drift_feature_threshold", "Drift threshold of each feature.", ("feature",))
    for name, feat in result.features.items():
        score.labels(model=model, feature=name, method=feat.method).set(feat.score)
        drifted.labels(model=model, feature=name).set(float(feat.drifted))
        threshold.labels(model=model, feature=name).set(feat.threshold)
    if result.prediction_drift is not None:
        gauge("freshrec_drift_prediction_score", "Drift score of the model's predictions.").labels(
            **labels
        ).set(result.prediction_drift.score)
    if result.target_drift is not None:
        rate = gauge("freshrec_drift_target_rate", "Positive-label rate (CTR) per window.", ("window",))
        rate.labels(model=model, window="reference").set(result.target_drift.reference_rate)
        rate.labels(model=model, window="current").set(result.target_drift.current_rate)
    failures = gauge(
        "freshrec_drift_quality_failures", "Data-quality failures of the last check, by check.", ("check",)
    )
    for check in QUALITY_CHECKS:
        failures.labels(model=model, check=check).set(
            float(sum(f.check == check for f in result.quality_failures))
        )
    rows = gauge("freshrec_drift_rows", "Rows in each window of the last check.", ("window",))
    rows.labels(model=model, window="reference").set(result.n_reference)
    rows.labels(model=model, window="current").set(result.n_current)
    gauge("freshrec_drift_check_duration_seconds", "Wall time of the last check.").labels(**labels).set(
        result.timings_s.get("total", 0.0)
    )
    gauge("freshrec_drift_check_failed", "1 when the last check run failed with an error.").labels(
        **labels
    ).set(0.0)
    gauge("freshrec_drift_last_run_timestamp_seconds", "When a check last ran (success or not).").labels(
        **labels
    ).set(now)
    gauge(LAST_SUCCESS, "When a check last completed (any verdict).").labels(**labels).set(now)
    return registry


def record_monitor(
    report: WindowReport, model: str, registry: CollectorRegistry | None = None
) -> CollectorRegistry:
    """Put the monitor's findings of one window into ``registry`` (with :func:`record_check`'s figures).

    Only alerts whose condition holds get a series (value 1); pushing a registry replaces the previous
    one, so an alert that cleared disappears and Prometheus resolves it.
    """
    from prometheus_client import CollectorRegistry, Gauge

    registry = registry or CollectorRegistry()
    alert = Gauge(
        "freshrec_monitor_alert",
        "1 while the monitor finds the alert's condition (see freshrec.monitoring.catalogue).",
        ["model", "alertname", "severity", "cause", "version"],
        registry=registry,
    )
    for s in report.signals:
        alert.labels(
            model=model,
            alertname=s.name,
            severity=s.severity,
            cause=s.cause[:200],
            version=s.labels.get("version", ""),
        ).set(1.0)

    def gauge(name: str, doc: str, value: float | None, **extra: str) -> None:
        if value is None or value != value:  # NaN: no figure this window
            return
        g = Gauge(name, doc, ["model", *extra], registry=registry)
        g.labels(model=model, **extra).set(float(value))

    q = report.served
    if q is not None:
        gauge("freshrec_monitor_served_logloss", "Label-joined logloss of the served scores.", q.logloss)
        gauge(
            "freshrec_monitor_served_baseline_logloss",
            "Served logloss of the baseline windows.",
            q.baseline_logloss,
        )
        gauge("freshrec_monitor_served_auc", "Label-joined AUC of the served scores.", q.auc)
        gauge("freshrec_monitor_ctr", "Click-through rate of the window.", q.ctr)
        gauge("freshrec_monitor_baseline_ctr", "Click-through rate of the baseline windows.", q.baseline_ctr)
        gauge("freshrec_monitor_labelled_rows", "Rows of the window with their label.", float(q.n))
    if report.estimate is not None:
        gauge(
            "freshrec_monitor_estimated_logloss",
            "Label-free (CBPE) estimate of the served logloss.",
            report.estimate.logloss,
        )
    if report.drift is not None and report.drift.dataset_score is not None:
        gauge("freshrec_monitor_drift_score", "Calibrated dataset drift score.", report.drift.dataset_score)
        gauge("freshrec_monitor_drift_threshold", "Its threshold.", report.drift.dataset_threshold)
    if report.lags_s:
        g = Gauge(
            "freshrec_monitor_lag_seconds",
            "How far (event time) each component trails the stream's newest event.",
            ["model", "component"],
            registry=registry,
        )
        for component, lag in report.lags_s.items():
            if lag is not None:
                g.labels(model=model, component=component).set(lag)
    return registry


def record_failure(
    model: str, previous_textfile: Path | None = None, *, now: float | None = None
) -> CollectorRegistry:
    """A registry for a check that failed: failed=1, last run now, last success kept from the textfile."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    now = time.time() if now is None else now
    Gauge(
        "freshrec_drift_check_failed",
        "1 when the last check run failed with an error.",
        ["model"],
        registry=registry,
    ).labels(model=model).set(1.0)
    Gauge(
        "freshrec_drift_last_run_timestamp_seconds",
        "When a check last ran (success or not).",
        ["model"],
        registry=registry,
    ).labels(model=model).set(now)
    last = read_last_success(previous_textfile, model) if previous_textfile else None
    if last is not None:
        Gauge(
            LAST_SUCCESS, "When a check last completed (any verdict).", ["model"], registry=registry
        ).labels(model=model).set(last)
    return registry


def read_last_success(textfile: Path, model: str) -> float | None:
    """The last-success time recorded in a textfile, or ``None``."""
    from prometheus_client.parser import text_string_to_metric_families

    textfile = Path(textfile)
    if not textfile.exists():
        return None
    for family in text_string_to_metric_families(textfile.read_text()):
        for sample in family.samples:
            if sample.name == LAST_SUCCESS and sample.labels.get("model") == model:
                return float(sample.value)
    return None


def default_textfile(state_dir: Path, model: str) -> Path:
    return Path(state_dir) / "metrics" / f"freshrec_drift_{model}.prom"


def write_textfile(registry: CollectorRegistry, path: Path) -> Path:
    """Write the node-exporter textfile atomically (the collector must never read half a file)."""
    from prometheus_client import generate_latest

    from freshrec.io import atomic_write_bytes

    return atomic_write_bytes(path, generate_latest(registry))


def push(registry: CollectorRegistry, gateway: str, model: str, job: str = "freshrec_drift") -> None:
    """Push to a Prometheus Pushgateway, grouped by job and model (replaces that group's metrics)."""
    from prometheus_client import push_to_gateway

    push_to_gateway(gateway, job=job, registry=registry, grouping_key={"model": model}, timeout=10)


def serve(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> None:
    """Expose ``registry`` on ``http://addr:port/metrics`` from a daemon thread (long-running monitors)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=addr, registry=registry)


def record_screening(
    summary: dict, model: str, registry: CollectorRegistry | None = None
) -> CollectorRegistry:
    """The online learner's screening counters (``Screener.summary()``) as Prometheus series.

    ``freshrec_screening_held_batches`` (batches waiting for an operator) is what to alert on: held data
    is neither learned nor lost until someone releases or drops it.
    """
    from prometheus_client import CollectorRegistry, Gauge

    registry = registry or CollectorRegistry()

    def gauge(name: str, doc: str, value: float, **extra: str) -> None:
        Gauge(name, doc, ["model", *extra], registry=registry).labels(model=model, **extra).set(float(value))

    gauge("freshrec_screening_batches_screened", "Micro-batches screened.", summary["batches_screened"])
    gauge("freshrec_screening_batches_held_total", "Micro-batches held so far.", summary["batches_held"])
    gauge(
        "freshrec_screening_events_held_total", "Events in held micro-batches so far.", summary["events_held"]
    )
    gauge(
        "freshrec_screening_held_batches",
        "Micro-batches held now (not released, not dropped).",
        summary["held_now"],
    )
    gauge("freshrec_screening_held_events", "Events held now.", summary["held_events_now"])
    gauge(
        "freshrec_screening_batches_released_total",
        "Held batches released and learned.",
        summary["batches_released"],
    )
    gauge(
        "freshrec_screening_batches_dropped_total",
        "Held batches dropped by an operator.",
        summary["batches_dropped"],
    )
    by_test = Gauge(
        "freshrec_screening_holds_by_test_total",
        "Held micro-batches per failed screening test.",
        ["model", "test"],
        registry=registry,
    )
    for test, n in summary["holds_by_test"].items():
        by_test.labels(model=model, test=test).set(float(n))
    return registry
