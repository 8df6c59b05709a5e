"""The cluster's alerting config, rendered from the catalogue: the PrometheusRule and the Alertmanager route.

``manifests/base/monitoring/prometheusrule-monitor.yaml`` and ``.../alertmanager/freshrec-route.yaml`` are
these functions' output, checked in and compared in the tests (as the pipelines' YAML is); ``freshrec
alerts rules`` rewrites them. One source for the alert names, severities, runbook links and inhibitions
means the cluster pages exactly as the local console does.

* Alerts the monitor evaluates fire on ``freshrec_monitor_alert{alertname=...} == 1`` (the drift CronJob
  pushes it; a cleared alert's series disappears from the next push, and Prometheus resolves it).
* The monitor's own health (stale, absent, failing checks) is watched on ``freshrec_drift_*`` timestamps:
  the monitor cannot report that it stopped.
* Every rule carries ``severity`` (critical | warning | info), ``service: freshrec``, ``area`` and a
  ``runbook_url``; the object carries the labels common Prometheus rule selectors pick up.
"""

from __future__ import annotations

from typing import Any

from freshrec.config import Settings
from freshrec.monitoring.catalogue import ALERTS, INHIBITIONS, AlertSpec

# Labels on the PrometheusRule objects: kube-prometheus-stack's default ruleSelector matches the Helm
# release (``release: kube-prometheus-stack``), kube-prometheus' manifests use prometheus/role. Change
# them with a kustomize label patch in an overlay if your Prometheus selects on something else.
RULE_SELECTOR_LABELS = {"release": "kube-prometheus-stack", "prometheus": "k8s", "role": "alert-rules"}

# Seconds without a completed check before the monitor itself pages (the CronJob runs every 30 min).
MONITOR_STALE_S = 7200

_SUMMARY: dict[str, str] = {
    "FreshrecFeatureMissing": "Feature(s) {{ $labels.cause }} of {{ $labels.model }} went null or disappeared",
    "FreshrecFeatureTypeChanged": "Column(s) {{ $labels.cause }} of {{ $labels.model }} changed type",
    "FreshrecFeatureConstant": "Feature(s) {{ $labels.cause }} of {{ $labels.model }} are constant",
    "FreshrecFeatureOutOfRange": "Feature(s) {{ $labels.cause }} of {{ $labels.model }} out of their training range",
    "FreshrecEntityJoinBroken": "The {{ $labels.cause }} join of {{ $labels.model }} stopped matching",
    "FreshrecFeatureSkew": "Served features {{ $labels.cause }} of {{ $labels.model }} differ from offline",
    "FreshrecServedQualityDrop": "Served logloss of {{ $labels.model }} jumped (cause: {{ $labels.cause }})",
    "FreshrecServedQualityDegraded": "Served logloss of {{ $labels.model }} degraded; retraining",
    "FreshrecCTRCollapse": "CTR of {{ $labels.model }} collapsed",
    "FreshrecEstimatedQualityDrop": "Label-free estimate of {{ $labels.model }}'s logloss rose",
    "FreshrecStreamFeaturesStale": "The stream feature job of {{ $labels.model }} is behind its SLO",
    "FreshrecOnlineLearnerStalled": "The online learner of {{ $labels.model }} is behind its SLO",
    "FreshrecOnlineGuardFailing": "The online learner's exports of {{ $labels.model }} keep failing the guard",
    "FreshrecServingStaleVersion": "The server of {{ $labels.model }} serves an old version ({{ $labels.cause }})",
    "FreshrecRetrainFailed": "Retraining of {{ $labels.model }} failed",
    "FreshrecCanaryAborted": "Canary {{ $labels.cause }} of {{ $labels.model }} was aborted",
    "FreshrecNotEnoughData": "Too few rows to check {{ $labels.model }}'s window",
    "FreshrecDataDrift": "Data drift on {{ $labels.model }} ({{ $labels.cause }}); retraining",
    "FreshrecPredictionDrift": "Prediction drift on {{ $labels.model }} moves the expected logloss",
    "FreshrecTargetDrift": "Click rate of {{ $labels.model }} moved",
}


def _annotations(spec: AlertSpec, base_url: str, summary: str, description: str) -> dict[str, str]:
    return {"summary": summary, "description": description, "runbook_url": spec.runbook_url(base_url)}


def _labels(spec: AlertSpec) -> dict[str, str]:
    return {"severity": spec.severity, "service": "freshrec", "area": spec.area}


def prometheus_rule(settings: Settings | None = None) -> dict[str, Any]:
    """The ``freshrec-monitor`` PrometheusRule: the monitor's alerts and the monitor's health."""
    settings = settings or Settings()
    base = settings.alerts.runbook_base_url
    monitor_rules = []
    for spec in ALERTS.values():
        if spec.source != "monitor":
            continue
        monitor_rules.append(
            {
                "alert": spec.name,
                "expr": f'max by (model, cause, version) (freshrec_monitor_alert{{alertname="{spec.name}"}}) == 1',
                "labels": _labels(spec),
                "annotations": _annotations(
                    spec,
                    base,
                    _SUMMARY[spec.name],
                    f"{spec.meaning[0].upper()}{spec.meaning[1:]}. Found by the freshrec monitor (drift "
                    "CronJob): the evidence is in the job's log and report and in the freshrec_monitor_* "
                    "metrics of the same push.",
                ),
            }
        )
    stale, absent, failing = (
        ALERTS[n] for n in ("FreshrecMonitorStale", "FreshrecMonitorAbsent", "FreshrecMonitorFailing")
    )
    health = [
        {
            "alert": stale.name,
            "expr": f"time() - max by (model) (freshrec_drift_last_success_timestamp_seconds) > {MONITOR_STALE_S}",
            "for": "5m",
            "labels": _labels(stale),
            "annotations": _annotations(
                stale,
                base,
                "Monitor checks for {{ $labels.model }} stopped completing",
                "No check has completed for {{ $value | humanizeDuration }}: data quality, served quality and "
                "the loop's liveness are not being watched. Check the freshrec-drift-monitor CronJob.",
            ),
        },
        {
            "alert": absent.name,
            "expr": "absent(freshrec_drift_last_success_timestamp_seconds)",
            "for": "2h",
            "labels": _labels(absent),
            "annotations": _annotations(
                absent,
                base,
                "No freshrec monitor check has ever reported",
                "freshrec_drift_last_success_timestamp_seconds is missing: the monitor never ran or its metrics "
                "do not reach Prometheus (Pushgateway / textfile collector).",
            ),
        },
        {
            "alert": failing.name,
            "expr": "max by (model) (freshrec_drift_check_failed) == 1",
            "for": "1h",
            "labels": _labels(failing),
            "annotations": _annotations(
                failing,
                base,
                "Monitor checks for {{ $labels.model }} end in an error",
                "The last monitor runs for {{ $labels.model }} failed; see the CronJob's logs.",
            ),
        },
    ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "freshrec-monitor",
            "labels": {"app.kubernetes.io/name": "freshrec-monitor", **RULE_SELECTOR_LABELS},
        },
        "spec": {
            "groups": [
                {"name": "freshrec-monitor-health", "rules": health},
                {"name": "freshrec-monitor-alerts", "rules": monitor_rules},
            ]
        },
    }


def _names(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else "|".join(names)


def alertmanager_route() -> dict[str, Any]:
    """The Alertmanager config fragment for freshrec: route by severity, group, inhibit, send resolves.

    Merge ``route`` under your root route's ``routes``, append ``inhibit_rules`` and ``receivers`` (fill in
    the secrets' file paths; Alertmanager reads them at send time, they never sit in the config).
    """

    def match(names: tuple[str, ...]) -> str:
        return f'alertname="{names[0]}"' if len(names) == 1 else f'alertname=~"{_names(names)}"'

    return {
        "route": {
            "receiver": "freshrec-tickets",
            "matchers": ['service="freshrec"'],
            # One notification per alert and model: a page names one broken thing.
            "group_by": ["alertname", "model"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            "routes": [
                {"matchers": ['severity="critical"'], "receiver": "freshrec-pager", "repeat_interval": "1h"},
                {
                    "matchers": ['severity="warning"'],
                    "receiver": "freshrec-tickets",
                    "repeat_interval": "12h",
                },
                {"matchers": ['severity="info"'], "receiver": "freshrec-notices", "repeat_interval": "24h"},
            ],
        },
        "inhibit_rules": [
            {
                "source_matchers": ['service="freshrec"', match(rule.sources)],
                "target_matchers": ['service="freshrec"', match(rule.targets)],
                "equal": list(rule.equal),
            }
            for rule in INHIBITIONS
        ],
        "receivers": [
            {
                "name": "freshrec-pager",
                "pagerduty_configs": [
                    {
                        "routing_key_file": "/etc/alertmanager/secrets/freshrec/pagerduty-routing-key",
                        "send_resolved": True,
                        "severity": "critical",
                        "description": "{{ .CommonAnnotations.summary }}",
                        "links": [{"href": "{{ .CommonAnnotations.runbook_url }}", "text": "runbook"}],
                    }
                ],
            },
            {
                "name": "freshrec-tickets",
                "slack_configs": [
                    {
                        "api_url_file": "/etc/alertmanager/secrets/freshrec/slack-webhook-url",
                        "channel": "#freshrec-oncall",
                        "send_resolved": True,
                        "title": "[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }} ({{ .CommonLabels.model }})",
                        "text": "{{ .CommonAnnotations.summary }}\n{{ .CommonAnnotations.description }}\n"
                        "Runbook: {{ .CommonAnnotations.runbook_url }}",
                    }
                ],
            },
            {
                # Notices: what the loop saw and did by itself. A channel to read, never a pager; leave the
                # receiver without configs to drop them (they are also in the run report and the metrics).
                "name": "freshrec-notices",
            },
        ],
    }
