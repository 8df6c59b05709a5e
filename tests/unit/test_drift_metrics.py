"""Prometheus metrics of a drift check, and the PrometheusRule that watches them."""

from __future__ import annotations

import re
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from freshrec.monitoring.drift import DriftResult, FeatureDrift, QualityFailure
from freshrec.monitoring.prometheus import (
    default_textfile,
    read_last_success,
    record_check,
    record_failure,
    serve,
    write_textfile,
)

RULE = (
    Path(__file__).resolve().parents[2] / "manifests" / "base" / "monitoring" / "prometheusrule-monitor.yaml"
)


def _result() -> DriftResult:
    return DriftResult(
        verdict="quality_failure",
        reason="x",
        created_at=datetime.now(UTC),
        n_reference=1000,
        n_current=800,
        features={
            "user_age": FeatureDrift(
                name="user_age", kind="numeric", method="wasserstein", threshold=0.1, score=0.42, drifted=True
            ),
            "user_gender": FeatureDrift(
                name="user_gender",
                kind="categorical",
                method="jensenshannon",
                threshold=0.1,
                score=0.03,
                drifted=False,
            ),
        },
        drift_share=0.5,
        dataset_drift=True,
        quality_failures=[
            QualityFailure(check="missing_share", column="user_age", value=0.3, limit=0.05, message="m"),
            QualityFailure(check="missing_share", column="item_year", value=0.2, limit=0.05, message="m"),
        ],
        timings_s={"total": 1.5},
    )


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_textfile_holds_the_last_check(tmp_path):
    path = write_textfile(
        record_check(_result(), "ctr", now=1_700_000_000.0), default_textfile(tmp_path, "ctr")
    )
    assert path == tmp_path / "metrics" / "freshrec_drift_ctr.prom"
    s = _samples(path.read_text())
    assert s[("freshrec_drift_share", (("model", "ctr"),))] == 0.5
    assert (
        s[
            (
                "freshrec_drift_feature_score",
                (("feature", "user_age"), ("method", "wasserstein"), ("model", "ctr")),
            )
        ]
        == 0.42
    )
    assert s[("freshrec_drift_feature_drifted", (("feature", "user_gender"), ("model", "ctr")))] == 0.0
    assert s[("freshrec_drift_quality_failures", (("check", "missing_share"), ("model", "ctr")))] == 2.0
    assert s[("freshrec_drift_quality_failures", (("check", "out_of_range"), ("model", "ctr")))] == 0.0
    assert s[("freshrec_drift_verdict", (("model", "ctr"), ("verdict", "quality_failure")))] == 1.0
    assert s[("freshrec_drift_verdict", (("model", "ctr"), ("verdict", "ok")))] == 0.0
    assert s[("freshrec_drift_last_success_timestamp_seconds", (("model", "ctr"),))] == 1_700_000_000.0
    assert not list(path.parent.glob("*.tmp*"))  # written atomically


def test_failed_check_keeps_last_success(tmp_path):
    path = default_textfile(tmp_path, "ctr")
    write_textfile(record_check(_result(), "ctr", now=1000.0), path)
    write_textfile(record_failure("ctr", path, now=5000.0), path)
    s = _samples(path.read_text())
    assert s[("freshrec_drift_check_failed", (("model", "ctr"),))] == 1.0
    assert s[("freshrec_drift_last_run_timestamp_seconds", (("model", "ctr"),))] == 5000.0
    assert read_last_success(path, "ctr") == 1000.0
    assert read_last_success(path, "other") is None


def test_http_exposition(port_factory):
    port = port_factory()
    serve(record_check(_result(), "ctr"), port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'freshrec_drift_share{model="ctr"} 0.5' in body


def test_prometheus_rule_watches_metrics_that_exist():
    rule = yaml.safe_load(RULE.read_text())
    assert rule["kind"] == "PrometheusRule" and rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    stale = rules["FreshrecMonitorStale"]
    assert re.search(r"time\(\) - .*freshrec_drift_last_success_timestamp_seconds.*> \d+", stale["expr"])
    assert stale["labels"]["severity"] == "critical"
    from datetime import UTC, datetime

    from freshrec.monitoring.catalogue import Signal
    from freshrec.monitoring.monitor import WindowReport
    from freshrec.monitoring.prometheus import record_monitor

    exported = {f.name for f in record_check(_result(), "ctr").collect()}
    exported |= {f.name for f in record_failure("ctr").collect()}
    report = WindowReport(
        window=0,
        created_at=datetime.now(UTC),
        n=10,
        signals=[Signal.of("FreshrecFeatureMissing", "x", "user_age")],
    )
    monitor = {f.name: f for f in record_monitor(report, "ctr").collect()}
    (sample,) = monitor["freshrec_monitor_alert"].samples
    assert sample.value == 1.0 and sample.labels["alertname"] == "FreshrecFeatureMissing"
    assert sample.labels["severity"] == "critical" and sample.labels["cause"] == "user_age"
    exported |= set(monitor)
    for r in rules.values():
        for name in re.findall(r"freshrec_[a-z_]+", r["expr"]):
            assert name in exported, (
                f"{r['alert']} uses {name}, which freshrec.monitoring.prometheus never exports"
            )
