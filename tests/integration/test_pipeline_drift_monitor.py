"""The drift-monitor pipeline through kfp.local on a synthetic stream with a known drift: the drift check
finds it, its notice reaches a webhook on loopback that asked for notices, and the trigger asks for retraining
once (cooldown). Drift is a notice, not a page: a receiver at the default ``min_severity`` would get nothing."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def webhook():
    """A loopback webhook receiver; yields (url, list of received JSON bodies)."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def test_drift_is_found_alerted_and_triggers_one_retraining(tmp_path, webhook):
    from freshrec.config import load_settings
    from freshrec.data.prepare import prepare_dataset
    from freshrec.data.synthetic import SyntheticConfig, generate
    from freshrec.pipelines.local import run_local

    url, received = webhook
    settings = load_settings(
        workdir=tmp_path / "work",
        data={"dataset": "synthetic", "datasets_dir": str(REPO.parent / "shared" / "datasets")},
        features={"repo_dir": str(REPO / "feature_repo")},
        alerts={"receivers": [{"kind": "webhook", "url": url, "min_severity": "info"}], "max_retries": 0},
        triggers={"cooldown_s": 3600.0},
    )
    # Six quiet days, then new items take most impressions and users click more.
    stream = SyntheticConfig(
        n_users=150,
        n_items=80,
        n_events=6000,
        days=8,
        seed=7,
        drift_at=0.75,
        new_items=40,
        new_item_share=0.7,
        ctr_shift=1.5,
    )
    prepare_dataset(generate(stream), settings)

    run = run_local(settings, pipeline="drift_monitor", window_hours=48.0, reference_hours=144.0)
    assert set(run.tasks) == {"drift-check", "alert", "trigger"}
    assert run.output("drift-check", "verdict") in ("drift", "quality_failure")
    result = json.loads(run.tasks["drift-check"].artifacts["result"].read_text())
    assert result["n_current"] > 0 and result["n_reference"] > 0
    assert result["drift_share"] == pytest.approx(run.output("drift-check", "drift_share"))
    assert "<html" in run.tasks["drift-check"].artifacts["report"].read_text().lower()
    assert run.output("alert", "open_alerts") >= 1 and run.output("alert", "failed_deliveries") == 0
    assert received, "the webhook got no alert"
    assert {r["severity"] for r in received} == {"info"}  # notices: the loop retrains by itself
    assert {r["alert"] for r in received} & {"FreshrecDataDrift", "FreshrecTargetDrift"}
    assert run.output("trigger", "retrain") is True
    assert run.output("trigger", "run_id").startswith("requested-")

    # The same drift an hour later (well, at once): the cooldown holds the second launch back.
    again = run_local(settings, pipeline="drift_monitor", window_hours=48.0, reference_hours=144.0)
    assert again.output("trigger", "retrain") is False
    assert "cooldown" in again.output("trigger", "reason")
    decisions = (settings.state_dir / "triggers" / "decisions.jsonl").read_text().splitlines()
    assert [json.loads(d)["action"] for d in decisions] == ["launch", "skip"]
