"""`freshrec drift check` and `freshrec alerts test|list` through the real typer apps."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from freshrec.config import AlertReceiver
from freshrec.monitoring.alerts.cli import app as alerts_app
from freshrec.monitoring.drift import DriftResult
from freshrec.monitoring.drift.cli import app as drift_app


def _windows(tmp_path):
    rng = np.random.default_rng(0)
    n = 2000

    def frame(shift: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "event_id": [f"e{i}" for i in range(n)],
                "event_timestamp": pd.date_range("2024-01-01", periods=n, freq="min", tz="UTC"),
                "user_age": rng.normal(30 + 3 * shift, 5, n),
                "user_gender": rng.choice(["F", "M"], n, p=[0.5 - 0.3 * shift, 0.5 + 0.3 * shift]),
                "item_year": rng.normal(1990, 10, n),
                "label": rng.integers(0, 2, n).astype("int8"),
            }
        )

    ref, cur = tmp_path / "ref.parquet", tmp_path / "cur.csv"
    frame(0.0).to_parquet(ref)
    frame(1.0).to_csv(cur, index=False)
    return ref, cur


def test_drift_check_prints_verdict_and_writes_result_metrics_alert(settings, tmp_path):
    ref, cur = _windows(tmp_path)
    out = tmp_path / "reports"
    result = CliRunner().invoke(
        drift_app,
        ["check", "--reference", str(ref), "--current", str(cur), "--out", str(out), "--no-html", "--strict"],
        obj=settings,
        catch_exceptions=False,
    )
    assert result.exit_code == 1  # --strict: drift is not ok
    assert "verdict: drift" in result.output and "result: " in result.output
    (json_path,) = out.glob("*.json")
    saved = DriftResult.load(json_path)
    # ids and timestamps are not compared; label is the target, not a feature
    assert set(saved.features) == {"user_age", "user_gender", "item_year"}
    assert saved.drifted_features == ["user_age", "user_gender"]
    prom = (settings.state_dir / "metrics" / "freshrec_drift_ctr.prom").read_text()
    assert 'freshrec_drift_share{model="ctr"} 0.666' in prom
    # the PrometheusRules' input: the notice is a series of freshrec_monitor_alert (severity info)
    assert 'freshrec_monitor_alert{alertname="FreshrecDataDrift",cause="user_age,user_gender"' in prom
    assert "NOTICE FreshrecDataDrift" in result.output
    state = json.loads((settings.state_dir / "alerts" / "state.json").read_text())
    assert list(state["open"]) == ["ctr/FreshrecDataDrift"]  # a notice: drift is not a page


def test_drift_check_columns_and_missing_file(settings, tmp_path):
    ref, cur = _windows(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(
        drift_app,
        ["check", "-r", str(ref), "-c", str(ref), "--columns", "item_year", "--no-html", "--no-alert"],
        obj=settings,
        catch_exceptions=False,
    )
    assert ok.exit_code == 0 and "verdict: ok" in ok.output and "item_year" in ok.output
    missing = runner.invoke(
        drift_app, ["check", "-r", str(tmp_path / "nope.parquet"), "-c", str(cur)], obj=settings
    )
    assert missing.exit_code == 2 and "nope.parquet" in missing.output
    prom = (settings.state_dir / "metrics" / "freshrec_drift_ctr.prom").read_text()
    assert 'freshrec_drift_check_failed{model="ctr"} 1.0' in prom
    assert "freshrec_drift_last_success_timestamp_seconds" in prom  # kept from the earlier success


def test_alerts_test_reports_each_delivery(settings):
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings.alerts.receivers = [
            AlertReceiver(kind="webhook", name="hook", url=f"http://127.0.0.1:{server.server_address[1]}"),
            AlertReceiver(kind="slack", name="slack", secret_env="FRESHREC_TEST_UNSET_SLACK"),
        ]
        settings.alerts.max_retries = 0
        runner = CliRunner()
        result = runner.invoke(alerts_app, ["test"], obj=settings, catch_exceptions=False)
        assert result.exit_code == 1  # slack has no secret
        assert "hook" in result.output and "is not set" in result.output  # the table may wrap the name
        assert got and got[0]["alert"] == "FreshrecTest"
        only = runner.invoke(alerts_app, ["test", "--receiver", "hook"], obj=settings, catch_exceptions=False)
        assert only.exit_code == 0 and len(got) == 2
        listed = runner.invoke(alerts_app, ["list"], obj=settings, catch_exceptions=False)
        assert "no open alerts" in listed.output
    finally:
        server.shutdown()
        server.server_close()


def test_drift_check_on_the_event_log_with_features(settings, tmp_path):
    from freshrec.data.eventlog import EventLog
    from freshrec.data.synthetic import generate
    from freshrec.features.training_set import build_training_frame

    ds = generate(seed=3, n_events=6000, n_users=300, n_items=200, days=10.0)
    EventLog(settings.eventlog_dir).append(ds.events, source_id="synthetic")
    settings.tables_dir.mkdir(parents=True)
    ds.users.to_parquet(settings.tables_dir / "users.parquet")
    ds.items.to_parquet(settings.tables_dir / "items.parquet")
    ref = tmp_path / "reference.parquet"
    build_training_frame(ds.events, ds.users, ds.items).iloc[:3000].to_parquet(ref)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        drift_app,
        [
            "check",
            f"--reference={ref}",
            f"--current={settings.eventlog_dir}",
            "--with-features",
            "--last-hours=72",
            f"--out={out}",
            "--no-html",
            "--no-alert",
        ],
        obj=settings,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    (json_path,) = out.glob("*.json")
    saved = DriftResult.load(json_path)
    assert {"user_age", "item_genres", "user_events_7d", "item_ctr_total"} <= set(saved.features)
    assert not {"event_id", "date", "user_id"} & set(saved.columns)
    assert 0 < saved.n_current < 6000  # the last 72 hours only


def test_drift_check_in_a_cluster_pages_on_served_quality_and_a_stalled_learner(settings, tmp_path):
    """The CronJob's view: the prediction log joined with the event log's clicks, the learner's checkpoint."""
    from freshrec.serving.predlog import PredictionLog

    rng = np.random.default_rng(5)
    n, hours = 6000, 24.0
    ts = pd.date_range("2024-01-01", periods=n, freq=f"{int(4 * hours * 3600 / n)}s", tz="UTC")
    score = rng.beta(3, 3, n)
    label = (rng.random(n) < score).astype("int8")
    last_day = ts >= ts.max() - pd.Timedelta(hours=hours)
    label[last_day] = 1 - label[last_day]  # the click join starts pairing the wrong rows: labels flip
    events = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "event_timestamp": ts,
            "user_id": [f"u{i}" for i in range(n)],
            "item_id": [f"i{i % 50}" for i in range(n)],
            "label": label,
            "user_age": rng.normal(35, 8, n),
        }
    )
    log = PredictionLog(tmp_path / "predictions")
    for i in range(n):  # one ranking request per impression, served a second before it
        log.add(
            f"r{i}",
            f"u{i}",
            [f"i{i % 50}"],
            1,
            "stable",
            np.array([score[i]]),
            int((ts[i] - pd.Timedelta(seconds=1)).value),
        )
    log.flush()
    events.to_parquet(tmp_path / "events.parquet")
    events[~last_day].to_parquet(tmp_path / "ref.parquet")
    # The learner's checkpoint says it learned nothing after the second day.
    ckpt = settings.state_dir / "online" / "ctr"
    (ckpt / "ckpt-1").mkdir(parents=True)
    learned = ts[n // 2].isoformat()
    (ckpt / "ckpt-1" / "state.json").write_text(json.dumps({"totals": {"newest_learned_time": learned}}))
    (ckpt / "CURRENT").write_text("ckpt-1")
    args = [
        "check",
        "-r",
        str(tmp_path / "ref.parquet"),
        "-c",
        str(tmp_path / "events.parquet"),
        "--columns",
        "user_age",
    ]
    args += ["--last-hours", str(hours), "--events", str(tmp_path / "events.parquet")]
    args += ["--predictions", str(tmp_path / "predictions"), "--no-html", "--no-alert"]
    result = CliRunner().invoke(drift_app, args, obj=settings, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "PAGE FreshrecServedQualityDrop" in out and "ranking inverted" in out
    assert "PAGE FreshrecOnlineLearnerStalled" in out
    assert "fixed thresholds: the reference (4484 rows) holds fewer than 4 windows" in out
    prom = (settings.state_dir / "metrics" / "freshrec_drift_ctr.prom").read_text()
    assert 'freshrec_monitor_alert{alertname="FreshrecServedQualityDrop",cause="labels"' in prom
    assert "freshrec_monitor_served_logloss" in prom and "freshrec_monitor_estimated_logloss" in prom
