"""``freshrec rollout plan|analyze``: output and exit codes on a real prediction log and event log.

``analyze`` reads predictions written in the gateway's prediction-log format and events appended to a real
``EventLog``, joins them with ``predlog.join_clicks``, and exits 0 pass / 1 fail / 2 inconclusive. The
Prometheus path is exercised against a loopback HTTP server answering the instant-query API.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from freshrec.data.eventlog import EventLog
from freshrec.rollout.cli import app
from freshrec.rollout.plan import default_plan

T0 = datetime(2026, 11, 20, 12, tzinfo=UTC)


def write_logs(root, n: int, canary_scores: str, seed: int = 0):
    """Predictions of both arms (v1 stable, v2 canary) and the clicks that followed, on disk."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 5, size=n)
    label = (rng.random(n) < p).astype("int8")
    arm = np.where(np.arange(n) % 2 == 0, "stable", "canary")
    score = np.clip(p + rng.normal(0, 0.05, n), 0.01, 0.99)
    if canary_scores == "inverted":
        score = np.where(arm == "canary", 1 - p, score)
    served = pd.to_datetime([T0 + timedelta(seconds=i) for i in range(n)], utc=True)
    users, items = [f"u{i}" for i in range(n)], [f"i{i % 50}" for i in range(n)]
    preds = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "user_id": users,
            "item_id": items,
            "model_version": np.where(arm == "canary", 2, 1).astype("int64"),
            "arm": arm,
            "score": score,
            "served_at": served,
        }
    )
    pred_dir = root / "predictions"
    pred_dir.mkdir(parents=True)
    preds.to_parquet(pred_dir / "predictions-20261120T120000-0001.parquet", index=False)
    events = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "event_timestamp": served + pd.Timedelta(seconds=30),
            "user_id": users,
            "item_id": items,
            "label": label,
        }
    )
    EventLog(root / "eventlog").append(events)
    return pred_dir, root / "eventlog"


def invoke(settings, *args):
    return CliRunner().invoke(app, list(args), obj=settings, catch_exceptions=False)


@pytest.mark.parametrize(
    ("n", "canary", "code", "verdict"),
    [(4000, "good", 0, "pass"), (4000, "inverted", 1, "fail"), (120, "good", 2, "inconclusive")],
)
def test_analyze_exit_codes(settings, tmp_path, n, canary, code, verdict):
    preds, events = write_logs(tmp_path, n, canary)
    out = tmp_path / "result.json"
    result = invoke(
        settings,
        "analyze",
        f"--predictions={preds}",
        f"--events={events}",
        "--checks=score_shift,logloss,ctr",
        "--json",
        f"--out={out}",
    )
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["verdict"] == verdict
    saved = json.loads(out.read_text())
    assert saved["verdict"] == verdict
    assert saved["counts"]["canary"]["predictions"] > 0


def test_analyze_by_model_version(settings, tmp_path):
    """Cluster mode: the Job passes --canary-version, arms come from model_version."""
    preds, events = write_logs(tmp_path, 4000, "inverted")
    frame = pd.read_parquet(next(preds.glob("*.parquet")))
    frame.assign(arm="unknown").to_parquet(next(preds.glob("*.parquet")), index=False)
    result = invoke(
        settings, "analyze", f"--predictions={preds}", f"--events={events}", "--canary-version=2", "--json"
    )
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["counts"]["canary"]["predictions"] == len(frame) // 2


def test_analyze_rejects_unknown_checks(settings, tmp_path):
    preds, events = write_logs(tmp_path, 100, "good")
    result = invoke(settings, "analyze", f"--predictions={preds}", f"--events={events}", "--checks=auc")
    assert result.exit_code == 3  # a usage error, not a verdict
    assert "auc" in result.output


@pytest.mark.parametrize("missing", ["predictions", "events"])
def test_analyze_missing_inputs_are_errors_not_verdicts(settings, tmp_path, missing):
    """A path that is not there is a deployment that did not connect: exit 4 with one line, no traceback."""
    preds, events = write_logs(tmp_path, 100, "good")
    paths = {"predictions": preds, "events": events, missing: tmp_path / "nowhere"}
    result = invoke(
        settings, "analyze", f"--predictions={paths['predictions']}", f"--events={paths['events']}"
    )
    assert result.exit_code == 4, result.output
    assert f"--{missing}" in result.output and "does not exist" in result.output
    assert "Traceback" not in result.output


def test_analyze_unreadable_predictions_exit_5(settings, tmp_path):
    _, events = write_logs(tmp_path, 100, "good")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "predictions-0001.parquet").write_bytes(b"not parquet")
    result = invoke(settings, "analyze", f"--predictions={bad}", f"--events={events}")
    assert result.exit_code == 5, result.output
    assert "cannot read the analysis inputs" in result.output


def test_analyze_waits_for_the_plans_clicks(settings, tmp_path):
    """--min-clicks (the plan's until_clicks) keeps a passing canary waiting until it has that many clicks."""
    preds, events = write_logs(tmp_path, 4000, "good")
    args = [f"--predictions={preds}", f"--events={events}", "--interval-s=0.05", "--json"]
    started = time.monotonic()
    passing = invoke(settings, "analyze", *args)
    one_analysis_s = time.monotonic() - started
    assert passing.exit_code == 0, passing.output
    clicks = json.loads(passing.stdout)["counts"]["canary"]["clicks"]
    # Long enough for at least three analyses however slow this machine is (CI has 2 shared cores).
    max_wait = 3 * one_analysis_s + 0.2
    waited = invoke(settings, "analyze", *args, f"--min-clicks={clicks + 1}", f"--max-wait-s={max_wait:.2f}")
    assert waited.stderr.count(f"{clicks} canary clicks < {clicks + 1}") >= 2
    # After the wait it judges what it has (still a pass here: the clicks suffice for rollout.min_clicks).
    assert waited.exit_code == 0


class FakePrometheus:
    """Answers /api/v1/query with values chosen per arm (by pod template hash) and metric."""

    def __init__(self, values):
        self.values = values
        self.queries: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                query = parse_qs(url.query)["query"][0]
                outer.queries.append(query)
                arm = "canary" if 'rollouts_pod_template_hash="cccc"' in query else "stable"
                kind = (
                    "latency"
                    if "histogram_quantile" in query
                    else ("errors" if 'status!="OK"' in query else "requests")
                )
                value = outer.values[arm][kind]
                result = [] if value is None else [{"metric": {}, "value": [1700000000, str(value)]}]
                body = json.dumps(
                    {"status": "success", "data": {"resultType": "vector", "result": result}}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize(("canary_p99", "code"), [(35.0, 0), (480.0, 1)])
def test_analyze_with_prometheus_stats(settings, tmp_path, canary_p99, code):
    preds, events = write_logs(tmp_path, 200, "good")
    prom = FakePrometheus(
        {
            "stable": {"requests": 5000, "errors": 3, "latency": 30.0},
            "canary": {"requests": 900, "errors": 1, "latency": canary_p99},
        }
    )
    try:
        result = invoke(
            settings,
            "analyze",
            f"--predictions={preds}",
            f"--events={events}",
            "--checks=error_rate,latency_p99",
            f"--prometheus={prom.url}",
            "--canary-hash=cccc",
            "--stable-hash=ssss",
            "--json",
        )
    finally:
        prom.close()
    assert result.exit_code == code, result.output
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["latency_p99"]["canary"] == canary_p99
    assert checks["error_rate"]["canary"] == pytest.approx(1 / 900)
    assert all(f'namespace="{settings.rollout.namespace}"' in q for q in prom.queries)


def test_plan_command_prints_both_forms(settings):
    result = invoke(settings, "plan", "--argo")
    assert result.exit_code == 0
    assert yaml.safe_load(result.stdout) == default_plan().to_argo_steps()
    result = invoke(settings, "plan")
    assert "set_weight: 10" in result.stdout and "setWeight: 10" in result.stdout


def test_analyze_time_filter_and_waiting(settings, tmp_path):
    """--since after every prediction leaves nothing to compare: inconclusive, after re-checking."""
    preds, events = write_logs(tmp_path, 4000, "good")
    result = invoke(
        settings,
        "analyze",
        f"--predictions={preds}",
        f"--events={events}",
        "--since=2030-01-01T00:00:00",
        "--max-wait-s=0.3",
        "--interval-s=0.1",
        "--json",
    )
    assert result.exit_code == 2
    assert json.loads(result.stdout)["counts"]["canary"]["predictions"] == 0
    assert result.stderr.count("waiting") >= 2  # analysed again while waiting
    bad = invoke(settings, "analyze", f"--predictions={preds}", f"--events={events}", "--since=yesterday")
    assert bad.exit_code == 3 and "ISO" in bad.output
