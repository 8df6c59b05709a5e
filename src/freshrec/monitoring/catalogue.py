"""Every alert freshrec raises, by what it asks of a person: one list for both modes.

Severities (the Prometheus community's scheme, one for everything):

* ``critical`` — **page**: something is broken that no automation will fix, and users get worse
  recommendations until a person acts (a feature producer broke, the served model got worse, a part of
  the loop stopped);
* ``warning`` — a ticket for working hours: worth a look, nothing breaks if it waits;
* ``info`` — a **notice**: the loop saw it and responded by itself (drift → retraining); it goes to the
  run report, the console and the metrics, never to a pager.

Locally the monitor evaluates each alert and hands firing ones to the receivers (console, Slack, PagerDuty,
webhook). In a cluster the same monitor (the drift CronJob) exports ``freshrec_monitor_alert`` (1 while an
alert's condition holds) with its evidence as metrics, and the PrometheusRules in
``manifests/base/monitoring/`` turn them into alerts for Alertmanager; freshrec posts nothing there itself.
Alerts with ``source="prometheus"`` exist only as rules (the monitor cannot report its own absence, and the
serving SLOs come from TF Serving's metrics). Every alert has a runbook, ``docs/runbooks/<name>.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")
PAGE: Severity = "critical"
RUNBOOK_DIR = "docs/runbooks"


@dataclass(frozen=True)
class AlertSpec:
    """One alert: its name (the Prometheus ``alertname``), severity and what it means."""

    name: str
    severity: Severity
    area: Literal["data_quality", "served_quality", "pipeline", "serving", "drift", "monitor"]
    meaning: str
    source: Literal["monitor", "prometheus"] = "monitor"

    @property
    def runbook(self) -> str:
        """The runbook's path in the repository."""
        return f"{RUNBOOK_DIR}/{self.name}.md"

    def runbook_url(self, base_url: str) -> str:
        """The runbook's URL under ``base_url`` (``alerts.runbook_base_url``)."""
        return f"{base_url.rstrip('/')}/{self.name}.md"


_ALL = [
    # data quality: a producer of the model's inputs broke
    AlertSpec("FreshrecFeatureMissing", "critical", "data_quality", "a feature went null (missing share past its limit) or a column disappeared"),
    AlertSpec("FreshrecFeatureTypeChanged", "critical", "data_quality", "a column's stored type changed (numbers arrive as strings, ...)"),
    AlertSpec("FreshrecFeatureConstant", "critical", "data_quality", "a feature that varies is constant in the window"),
    AlertSpec("FreshrecFeatureOutOfRange", "critical", "data_quality", "values far outside the reference range or unseen categories"),
    AlertSpec("FreshrecEntityJoinBroken", "critical", "data_quality", "the user or item lookup stopped matching: its features are missing together"),
    AlertSpec("FreshrecFeatureSkew", "critical", "data_quality", "served features differ from the offline features of the same keys"),
    # served quality: the model users get is worse
    AlertSpec("FreshrecServedQualityDrop", "critical", "served_quality", "label-joined logloss of the served scores jumped far above its baseline, or the ranking inverted"),
    AlertSpec("FreshrecServedQualityDegraded", "warning", "served_quality", "label-joined logloss rose significantly above its baseline, less than a jump; retraining is triggered"),
    AlertSpec("FreshrecCTRCollapse", "critical", "served_quality", "the click-through rate fell far below its baseline"),
    AlertSpec("FreshrecEstimatedQualityDrop", "warning", "served_quality", "the label-free (CBPE) estimate of the logloss rose above the baseline before labels arrived"),
    # the loop stopped or is failing
    AlertSpec("FreshrecStreamFeaturesStale", "critical", "pipeline", "the stream feature job stopped updating features (lag past its freshness SLO)"),
    AlertSpec("FreshrecOnlineLearnerStalled", "critical", "pipeline", "the online learner stopped learning (lag past its freshness SLO)"),
    AlertSpec("FreshrecOnlineGuardFailing", "critical", "pipeline", "the online learner's export guard failed several times in a row"),
    AlertSpec("FreshrecServingStaleVersion", "critical", "pipeline", "the model server keeps serving an old version after a publish"),
    AlertSpec("FreshrecRetrainFailed", "critical", "pipeline", "the retraining pipeline failed"),
    AlertSpec("FreshrecCanaryAborted", "critical", "pipeline", "a canary was aborted (errors, latency or a failed analysis)"),
    AlertSpec("FreshrecNotEnoughData", "warning", "pipeline", "a monitored window had too few rows to check (traffic or ingest dropped)"),
    # drift: evidence and a retraining trigger, never a page
    AlertSpec("FreshrecDataDrift", "info", "drift", "the features moved past their calibrated thresholds; retraining is triggered"),
    AlertSpec("FreshrecPredictionDrift", "info", "drift", "the predictions moved the expected logloss past its calibrated limit"),
    AlertSpec("FreshrecTargetDrift", "info", "drift", "the click rate moved past its limit (not a collapse)"),
    # the monitor itself (rules only)
    AlertSpec("FreshrecMonitorStale", "critical", "monitor", "no monitor check has completed for too long: nothing is being watched", "prometheus"),
    AlertSpec("FreshrecMonitorAbsent", "critical", "monitor", "no monitor check ever reported its metrics", "prometheus"),
    AlertSpec("FreshrecMonitorFailing", "warning", "monitor", "monitor checks end in an error", "prometheus"),
    # serving SLOs (rules on TF Serving's metrics)
    AlertSpec("CtrServingHighErrorRate", "critical", "serving", "more than 1 % of predict requests fail", "prometheus"),
    AlertSpec("CtrServingHighLatency", "warning", "serving", "predict p99 latency above its SLO", "prometheus"),
    AlertSpec("CtrServingDown", "critical", "serving", "no healthy model server is scraped", "prometheus"),
]  # fmt: skip

ALERTS: dict[str, AlertSpec] = {a.name: a for a in _ALL}

# The data-quality check of the drift result behind each data-quality alert.
QUALITY_ALERTS: dict[str, str] = {
    "missing_column": "FreshrecFeatureMissing",
    "missing_share": "FreshrecFeatureMissing",
    "type_change": "FreshrecFeatureTypeChanged",
    "constant": "FreshrecFeatureConstant",
    "out_of_range": "FreshrecFeatureOutOfRange",
    "unseen_categories": "FreshrecFeatureOutOfRange",
    "entity_join": "FreshrecEntityJoinBroken",
    "skew": "FreshrecFeatureSkew",
}


def spec(name: str) -> AlertSpec:
    """The alert called ``name``; a clear error for a name that is not in the catalogue."""
    try:
        return ALERTS[name]
    except KeyError:
        raise KeyError(f"unknown alert {name!r}; known: {sorted(ALERTS)}") from None


@dataclass(frozen=True)
class Inhibition:
    """While one of the ``sources`` fires for a model, ``targets`` with the same labels (``equal``) stay quiet.

    The same rules are the Alertmanager ``inhibit_rules`` in ``manifests/base/monitoring/alertmanager``
    (a test keeps the two equal) and are applied by the local alert manager, so both modes page alike.
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    equal: tuple[str, ...] = ("model",)
    why: str = ""


# Pages that name a cause; a served-quality drop at the same time is their symptom.
_CAUSES = (
    "FreshrecFeatureMissing", "FreshrecFeatureTypeChanged", "FreshrecFeatureConstant", "FreshrecFeatureOutOfRange",
    "FreshrecEntityJoinBroken", "FreshrecFeatureSkew", "FreshrecStreamFeaturesStale", "FreshrecOnlineLearnerStalled",
    "FreshrecServingStaleVersion", "FreshrecCTRCollapse",
)  # fmt: skip

INHIBITIONS: tuple[Inhibition, ...] = (
    Inhibition(("FreshrecCanaryAborted",), ("FreshrecDataDrift", "FreshrecPredictionDrift"), ("model", "version"),
               "the aborted canary is the cause; its drift notices add nothing"),
    Inhibition(("FreshrecStreamFeaturesStale",), ("FreshrecFeatureSkew", "FreshrecFeatureConstant", "FreshrecFeatureOutOfRange"),
               ("model",), "stale stream features are what makes served features differ, freeze or leave their range"),
    Inhibition(("FreshrecFeatureMissing", "FreshrecFeatureTypeChanged"), ("FreshrecFeatureSkew",), ("model",),
               "a feature gone null or retyped differs from its offline value by itself"),
    Inhibition(("FreshrecEntityJoinBroken",), ("FreshrecFeatureMissing",), ("model",),
               "a broken join is why the entity's features are missing"),
    Inhibition(_CAUSES, ("FreshrecServedQualityDrop", "FreshrecServedQualityDegraded", "FreshrecEstimatedQualityDrop"),
               ("model",), "the named cause explains the quality drop; page for the cause"),
    Inhibition(("FreshrecCTRCollapse",), ("FreshrecTargetDrift",), ("model",),
               "a CTR collapse moves the target rate by itself"),
    Inhibition(("FreshrecOnlineLearnerStalled",), ("FreshrecOnlineGuardFailing",), ("model",),
               "a stalled learner's guard has nothing new to judge"),
    Inhibition(("CtrServingDown",), ("CtrServingHighErrorRate", "CtrServingHighLatency", "FreshrecServingStaleVersion"),
               ("namespace",), "no server is up: its error rate, latency and version follow"),
    Inhibition(("FreshrecMonitorStale",), ("FreshrecMonitorFailing",), ("model",),
               "checks that do not complete also fail"),
)  # fmt: skip


class Signal(BaseModel):
    """One alert condition that holds now, with the evidence a person needs to act on it."""

    name: str
    severity: Severity
    summary: str
    cause: str = ""  # what broke, named (a column, a component, "labels", "CTR", a version)
    evidence: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)  # extra routing labels (version, ...)

    @classmethod
    def of(cls, name: str, summary: str, cause: str = "", **evidence: Any) -> Signal:
        """A signal of the catalogue's alert ``name`` (its severity comes from there)."""
        return cls(name=name, severity=spec(name).severity, summary=summary, cause=cause, evidence=evidence)

    @property
    def is_page(self) -> bool:
        return self.severity == PAGE


def inhibited(signals: list[Signal], model_labels: dict[str, str] | None = None) -> dict[str, str]:
    """``{target name: source name}`` for the signals that an active source inhibits."""
    base = model_labels or {}
    active = {s.name: {**base, **s.labels} for s in signals}
    out: dict[str, str] = {}
    for rule in INHIBITIONS:
        for source in rule.sources:
            if source not in active:
                continue
            src = active[source]
            for s in signals:
                if s.name in rule.targets and s.name not in out and s.name != source:
                    tgt = {**base, **s.labels}
                    if all(src.get(k) == tgt.get(k) for k in rule.equal):
                        out[s.name] = source
    return out
