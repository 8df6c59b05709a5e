"""The cluster's alerting config agrees with the alert catalogue, and every alert has a runbook.

The PrometheusRule and the Alertmanager route are rendered from ``freshrec.monitoring.catalogue``; the
checked-in files must equal the rendering (as the pipelines' YAML must). No Alertmanager binary runs here:
the route is checked against the fields and matcher syntax of Alertmanager's configuration (its
``config.go``), the rules' objects against the PrometheusRule CRD by ``test_manifests``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from freshrec.config import Settings
from freshrec.monitoring.catalogue import ALERTS, INHIBITIONS, SEVERITIES
from freshrec.monitoring.rules import RULE_SELECTOR_LABELS, alertmanager_route, prometheus_rule

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "manifests" / "base" / "monitoring"
RULE_FILES = [
    MONITORING / "prometheusrule-monitor.yaml",
    REPO / "manifests" / "base" / "serving" / "prometheusrule-serving.yaml",
]
MATCHER = re.compile(r'^[a-zA-Z_][a-zA-Z0-9_]*(=|!=|=~|!~)"[^"]*"$')


def _rules() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in RULE_FILES:
        obj = yaml.safe_load(path.read_text())
        assert obj["kind"] == "PrometheusRule"
        assert RULE_SELECTOR_LABELS.items() <= obj["metadata"]["labels"].items(), path
        for group in obj["spec"]["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["alert"] not in out, f"{rule['alert']} defined twice"
                    out[rule["alert"]] = rule
    return out


def test_checked_in_files_are_the_rendering():
    rendered = prometheus_rule(Settings())
    assert yaml.safe_load((MONITORING / "prometheusrule-monitor.yaml").read_text()) == rendered, (
        "run `freshrec alerts rules` after changing the catalogue"
    )
    assert (
        yaml.safe_load((MONITORING / "alertmanager" / "freshrec-route.yaml").read_text())
        == alertmanager_route()
    )


def test_every_alert_has_one_rule_with_its_severity_labels_and_runbook():
    rules = _rules()
    assert set(rules) == set(ALERTS)
    base = Settings().alerts.runbook_base_url
    for name, rule in rules.items():
        spec = ALERTS[name]
        assert rule["labels"] == {"severity": spec.severity, "service": "freshrec", "area": spec.area}, name
        assert rule["labels"]["severity"] in SEVERITIES
        assert rule["annotations"]["runbook_url"] == f"{base}/{name}.md"
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if spec.source == "monitor":
            assert (
                rule["expr"]
                == f'max by (model, cause, version) (freshrec_monitor_alert{{alertname="{name}"}}) == 1'
            )


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_runbook_says_what_to_look_at_and_what_to_do(name):
    path = REPO / ALERTS[name].runbook
    assert path.is_file(), f"{name} has no runbook at {path}"
    text = path.read_text()
    assert text.startswith(f"# {name}\n")
    assert f"**Severity:** `{ALERTS[name].severity}`" in text
    for section in ("## What it means", "## What to look at", "## What to do"):
        assert section in text, (name, section)
        body = text.split(section, 1)[1].split("\n## ", 1)[0]
        assert len(body.strip()) > 40, (name, section)


def test_runbook_index_lists_every_alert():
    index = (REPO / "docs" / "runbooks" / "README.md").read_text()
    assert all(f"[{n}]({n}.md)" in index for n in ALERTS)
    assert {p.stem for p in (REPO / "docs" / "runbooks").glob("*.md")} == {*ALERTS, "README"}


# Fields of Alertmanager's configuration (prometheus/alertmanager config/config.go) that the fragment uses.
ROUTE_KEYS = {
    "receiver",
    "group_by",
    "matchers",
    "routes",
    "continue",
    "group_wait",
    "group_interval",
    "repeat_interval",
    "mute_time_intervals",
    "active_time_intervals",
}
INHIBIT_KEYS = {"source_matchers", "target_matchers", "equal"}
RECEIVER_KEYS = {"name", "pagerduty_configs", "slack_configs", "webhook_configs", "email_configs"}


def _walk(route: dict) -> list[dict]:
    return [route, *(r for child in route.get("routes", []) for r in _walk(child))]


def test_alertmanager_route_groups_routes_by_severity_and_inhibits_as_locally():
    cfg = yaml.safe_load((MONITORING / "alertmanager" / "freshrec-route.yaml").read_text())
    assert set(cfg) == {"route", "inhibit_rules", "receivers"}
    receivers = {r["name"]: r for r in cfg["receivers"]}
    for r in cfg["receivers"]:
        assert set(r) <= RECEIVER_KEYS
        for kind in ("pagerduty_configs", "slack_configs"):
            for c in r.get(kind, []):
                assert c["send_resolved"] is True  # resolve messages
                assert not any(k in c for k in ("routing_key", "api_url", "service_key"))  # secrets by file
    for route in _walk(cfg["route"]):
        assert set(route) <= ROUTE_KEYS
        assert route["receiver"] in receivers
        assert all(MATCHER.match(m) for m in route.get("matchers", [])), route
    root = cfg["route"]
    assert root["matchers"] == ['service="freshrec"'] and root["group_by"] == ["alertname", "model"]
    by_severity = {m.split('"')[1]: r["receiver"] for r in root["routes"] for m in r["matchers"]}
    assert by_severity == {
        "critical": "freshrec-pager",
        "warning": "freshrec-tickets",
        "info": "freshrec-notices",
    }
    assert (
        "pagerduty_configs" in receivers["freshrec-pager"]
        and "pagerduty_configs" not in receivers["freshrec-notices"]
    )

    assert len(cfg["inhibit_rules"]) == len(INHIBITIONS)
    for got, rule in zip(cfg["inhibit_rules"], INHIBITIONS, strict=True):
        assert set(got) <= INHIBIT_KEYS and got["equal"] == list(rule.equal)
        assert all(MATCHER.match(m) for m in got["source_matchers"] + got["target_matchers"])
        sources = re.fullmatch(r'alertname=~?"(.*)"', got["source_matchers"][1]).group(1).split("|")
        targets = re.fullmatch(r'alertname=~?"(.*)"', got["target_matchers"][1]).group(1).split("|")
        assert tuple(sources) == rule.sources and tuple(targets) == rule.targets
        assert set(sources) | set(targets) <= set(ALERTS)


def test_a_canary_abort_inhibits_the_drift_notices_of_that_version():
    (rule,) = [r for r in INHIBITIONS if r.sources == ("FreshrecCanaryAborted",)]
    assert {"FreshrecDataDrift", "FreshrecPredictionDrift"} <= set(rule.targets) and "version" in rule.equal
