"""The local canary controller driving the real gateway and the real model server.

Real parts: ``ModelServer`` (TF-Serving-compatible, gRPC + REST) loading SavedModels from a real
``ModelRepository``; the ranking ``Gateway`` over HTTP (admin API for weights and stats, sticky split,
prediction log as Parquet); clicks appended to a real ``EventLog``; ``local_controller`` as ``freshrec rollout run`` wires it (``HttpTrafficRouter``,
``RepositoryPromoter`` waiting for the canary to be AVAILABLE, ``PredictionLogSource``). Only the plan's clock is injected: each ``sleep`` sends real rank requests
instead of waiting. Clicks happen with probability 0.5 for every impression, so a canary that is the
same model as stable passes and a canary with a +4 logit bias (scores near 1) fails on logloss.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import requests

from freshrec.config import load_settings
from freshrec.data.eventlog import EventLog
from freshrec.model.repository import ModelRepository
from freshrec.rollout.controller import local_controller
from freshrec.rollout.plan import CanaryPlan
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PLAN = CanaryPlan.model_validate(
    {
        "steps": [
            {"set_weight": 30},
            {"pause": {"duration_s": 60}},
            {"analysis": {"checks": ["error_rate", "latency_p99", "score_shift", "logloss", "ctr"]}},
            {"set_weight": 100},
        ]
    }
)


def lookup(user_id: str, item_ids: list[str], as_of=None) -> pd.DataFrame:
    n = len(item_ids)
    return pd.DataFrame(
        {
            "user_id": [user_id] * n,
            "item_id": item_ids,
            "user_age": np.full(n, 30, dtype=np.int64),
            "item_ctr_total": np.linspace(0.1, 0.4, n).astype(np.float32),
        }
    )


class Traffic:
    """Sends rank requests to the gateway and appends the clicks that follow to the event log."""

    def __init__(self, gateway, eventlog: EventLog, seed: int = 0):
        self.gateway = gateway
        self.eventlog = eventlog
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.t = 0.0
        self.batches = 0

    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        rows = []
        for _ in range(40):
            user = f"u{self.rng.integers(0, 100_000)}"
            items = [f"i{k}" for k in self.rng.choice(500, size=10, replace=False)]
            r = requests.post(
                f"{self.gateway.url}/v1/rank", json={"user_id": user, "item_ids": items}, timeout=10
            )
            assert r.status_code == 200, r.text
            now = pd.Timestamp(datetime.now(UTC))
            rows += [(user, item, now, int(self.rng.random() < 0.5)) for item in items]
        self.gateway.predlog.flush()
        self.batches += 1
        events = pd.DataFrame(rows, columns=["user_id", "item_id", "event_timestamp", "label"])
        events["event_id"] = [f"s{self.seed}-b{self.batches}-{i}" for i in range(len(events))]
        events["event_timestamp"] = pd.to_datetime(events["event_timestamp"], utc=True) + pd.Timedelta(
            seconds=1
        )
        events["label"] = events["label"].astype("int8")
        self.eventlog.append(events, source_id=f"seed-{self.seed}-batch-{self.batches}")
        self.t += seconds


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from freshrec.serving.demo import publish_demo_version
    from freshrec.serving.gateway import Gateway
    from freshrec.serving.server import ModelServer

    settings = load_settings(
        workdir=tmp_path_factory.mktemp("rollout-e2e") / "work",
        serving={"poll_interval_s": 0.1},
        # Latency is not under test here (a loaded 2-core machine; first requests to a new version are cold).
        rollout={
            "min_clicks": 50,
            "min_requests": 30,
            "min_predictions": 50,
            "analysis_interval_s": 30,
            "max_p99_latency_ms": 5000,
        },
    )
    repo = ModelRepository(settings.models_dir, "ctr")
    assert publish_demo_version(settings.models_dir, bias=0.0, seed=0) == 1
    repo.set_label("stable", 1)
    assert repo.publish(repo.path(1), {"copy_of": 1}) == 2  # the same model again
    assert publish_demo_version(settings.models_dir, bias=4.0, seed=0) == 3  # scores near 1
    server = ModelServer(settings, rest_port=free_port(), grpc_port=free_port()).start()
    gateway = Gateway(settings, lookup=lookup, port=0, admin_port=0, model_target=server.grpc_target).start()
    try:
        yield settings, repo, server, gateway
    finally:
        gateway.stop()
        server.stop()


def run(settings, repo, server, gateway, version: int):
    traffic = Traffic(gateway, EventLog(settings.eventlog_dir), seed=version)
    controller = local_controller(
        settings,
        PLAN,
        gateway_url=gateway.admin_url,
        model_server_url=server.rest_url,
        clock=traffic.clock,
        sleep=traffic.sleep,
    )
    return controller.run(version)


def test_same_model_is_promoted_then_bad_model_is_rolled_back(stack):
    settings, repo, server, gateway = stack

    report = run(settings, repo, server, gateway, 2)
    assert report.outcome == "promoted", json.dumps(report.to_dict(), default=str)[:2000]
    assert repo.labels() == {"stable": 2}
    assert gateway.canary() == {"version": None, "weight": 0}
    analyses = [e for e in report.timeline if e.action == "analysis"]
    # Too few canary requests at first: the controller waited and analysed again rather than guess.
    assert [e.verdict for e in analyses][-1] == "pass"
    analysis = analyses[-1]
    counts = analysis.analysis["counts"]
    assert counts["canary"]["requests"] > 0 and counts["canary"]["clicks"] >= 50
    served = {c["name"]: c["status"] for c in analysis.analysis["checks"]}
    assert served == dict.fromkeys(["error_rate", "latency_p99", "score_shift", "logloss", "ctr"], "pass")

    report = run(settings, repo, server, gateway, 3)
    assert report.outcome == "rolled_back"
    assert repo.labels() == {"stable": 2}
    assert gateway.canary()["weight"] == 0
    reasons = " ".join(report.timeline[-1].reasons)
    assert "logloss" in reasons and "score_shift" in reasons
    # The prediction log shows the canary really served version 3 to part of the users.
    preds = pd.concat(pd.read_parquet(p) for p in settings.predictions_dir.glob("predictions-*.parquet"))
    assert set(preds.loc[preds["arm"] == "canary", "model_version"]) == {2, 3}
    assert len(list((settings.reports_dir / "rollout").glob("canary-v*.json"))) == 2


def test_rollout_run_command_against_live_traffic(stack, tmp_path):
    """``freshrec rollout run`` in real time: traffic flows from a thread while the plan runs."""
    import threading

    import yaml
    from typer.testing import CliRunner

    from freshrec.rollout.cli import app

    settings, repo, server, gateway = stack
    stable = repo.stable()
    version = repo.publish(repo.path(stable), {"copy_of": stable})
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        yaml.safe_dump(
            {
                "steps": [
                    {"set_weight": 50},
                    {"pause": {"duration_s": 1, "until_clicks": 60}},
                    {"analysis": {"checks": ["error_rate", "score_shift", "logloss", "ctr"]}},
                    {"set_weight": 100},
                ]
            }
        )
    )
    fast = settings.model_copy(
        update={
            "rollout": settings.rollout.model_copy(
                update={"analysis_interval_s": 0.5, "max_inconclusive_wait_s": 120}
            )
        }
    )
    traffic = Traffic(gateway, EventLog(settings.eventlog_dir), seed=100 + version)
    stop = threading.Event()

    def flow():
        while not stop.is_set():
            traffic.sleep(0.2)

    thread = threading.Thread(target=flow, daemon=True)
    thread.start()
    try:
        result = CliRunner().invoke(
            app,
            [
                "run",
                f"--version={version}",
                f"--gateway={gateway.admin_url}",
                f"--serving-url={server.rest_url}",
                f"--plan-file={plan_file}",
            ],
            obj=fast,
        )
    finally:
        stop.set()
        thread.join(30)
    assert result.exit_code == 0, result.output
    assert "promoted" in result.output
    assert repo.labels() == {"stable": version}
    assert gateway.canary() == {"version": None, "weight": 0}
