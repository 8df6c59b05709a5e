"""The local canary controller against an in-process traffic router and a real ModelRepository.

The router splits simulated users between the arms with the gateway's own sticky hash
(``freshrec.serving.gateway.arm_for``); each version scores items by a known rule, and clicks are drawn
from known probabilities, so a good canary must be promoted and a bad one rolled back. Predictions are
joined with clicks by the real ``predlog.join_clicks``. Time is an injected clock: each ``sleep``
advances it and serves the traffic of that interval.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from freshrec.config import RolloutSettings
from freshrec.model.repository import ModelRepository
from freshrec.rollout.analysis import ArmStats
from freshrec.rollout.controller import LocalCanaryController, RepositoryPromoter, RolloutError
from freshrec.rollout.plan import CanaryPlan
from freshrec.serving.gateway import arm_for
from freshrec.serving.predlog import join_clicks

T0 = datetime(2026, 11, 1, tzinfo=UTC)


class SimulatedTraffic:
    """Users ranking items through a weighted canary: the TrafficRouter protocol, in process."""

    def __init__(
        self, repo: ModelRepository, behaviour: dict[int, str], requests_per_s: float = 20.0, seed: int = 0
    ):
        self.repo = repo
        self.behaviour = behaviour  # version -> "good" | "inverted"
        self.requests_per_s = requests_per_s
        self.rng = np.random.default_rng(seed)
        self.version: int | None = None
        self.weight = 0
        self.history: list[tuple[int | None, int]] = []
        self.preds: list[pd.DataFrame] = []
        self.events: list[pd.DataFrame] = []
        self.counts = {"stable": ArmStats(), "canary": ArmStats()}
        self.fail_at_weights: set[int] = set()
        self.now = T0

    # TrafficRouter
    def set_canary(self, version: int | None, weight: int) -> None:
        if weight in self.fail_at_weights:
            raise ConnectionError("gateway unreachable")
        if weight > 0:
            # The gateway can only route to a version the model server loads (labelled in the repository).
            assert version in self.repo.labels().values(), "canary routed before it was labelled"
        self.version, self.weight = version, weight
        self.history.append((version, weight))

    def stats(self) -> dict[str, ArmStats]:
        return dict(self.counts)

    def serve(self, seconds: float) -> None:
        n = int(seconds * self.requests_per_s)
        if n == 0:
            return
        users = [f"u{self.rng.integers(0, 5000)}" for _ in range(n)]
        arms = [arm_for(u, self.weight) if self.version else "stable" for u in users]
        p = self.rng.beta(2, 5, size=n)
        label = (self.rng.random(n) < p).astype("int8")
        stable = self.repo.stable()
        versions = np.array([self.version if a == "canary" else stable for a in arms])
        inverted = np.array([self.behaviour[int(v)] == "inverted" for v in versions])
        score = np.where(inverted, 1 - p, np.clip(p + self.rng.normal(0, 0.05, n), 0.01, 0.99))
        served = pd.to_datetime([self.now + timedelta(seconds=seconds * i / n) for i in range(n)], utc=True)
        items = [f"i{k}" for k in range(n)]
        self.preds.append(
            pd.DataFrame(
                {
                    "request_id": items,
                    "user_id": users,
                    "item_id": items,
                    "model_version": versions,
                    "arm": arms,
                    "score": score,
                    "served_at": served,
                }
            )
        )
        self.events.append(
            pd.DataFrame(
                {
                    "user_id": users,
                    "item_id": items,
                    "event_timestamp": served + pd.Timedelta(seconds=5),
                    "label": label,
                }
            )
        )
        for a in ("stable", "canary"):
            k = sum(1 for x in arms if x == a)
            c = self.counts[a]
            self.counts[a] = ArmStats(c.requests + k, c.errors, 4.0, 12.0)
        self.now += timedelta(seconds=seconds)

    def joined(self) -> pd.DataFrame:
        if not self.preds:
            return pd.DataFrame(columns=["arm", "model_version", "score", "label"])
        return join_clicks(
            pd.concat(self.preds, ignore_index=True), pd.concat(self.events, ignore_index=True), 60
        )


class Clock:
    def __init__(self, traffic: SimulatedTraffic):
        self.t = 0.0
        self.traffic = traffic

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.traffic.serve(seconds)
        self.t += seconds


def publish(repo: ModelRepository, tmp_path, tag: str) -> int:
    """A version directory as the repository requires it (SavedModel files; contents unused here)."""
    export = tmp_path / f"export-{tag}"
    (export / "variables").mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"\x08\x01")
    return repo.publish(export, {"tag": tag})


@pytest.fixture
def repo(tmp_path):
    repo = ModelRepository(tmp_path / "models", "ctr")
    v1 = publish(repo, tmp_path, "v1")
    repo.set_label("stable", v1)
    publish(repo, tmp_path, "v2")
    return repo


SETTINGS = RolloutSettings(
    min_clicks=50, min_requests=100, analysis_interval_s=30, max_inconclusive_wait_s=600
)


def controller(repo, traffic, tmp_path, settings=SETTINGS, plan=None):
    clock = Clock(traffic)
    return LocalCanaryController(
        plan or CanaryPlan.default(),
        traffic,
        RepositoryPromoter(repo),
        traffic.joined,
        settings,
        report_dir=tmp_path / "reports",
        clock=clock,
        sleep=clock.sleep,
        now=lambda: T0 + timedelta(seconds=clock.t),
    )


def test_good_canary_is_promoted(repo, tmp_path):
    traffic = SimulatedTraffic(repo, {1: "good", 2: "good"})
    report = controller(repo, traffic, tmp_path).run(2)
    assert report.outcome == "promoted"
    assert repo.labels() == {"stable": 2}
    assert [w for _, w in traffic.history] == [10, 50, 100, 0]
    assert traffic.history[-1] == (None, 0)
    analyses = [e for e in report.timeline if e.action == "analysis"]
    assert [e.verdict for e in analyses][-1] == "pass" and {e.weight for e in analyses} == {10, 50}
    saved = json.loads(report.path.read_text())
    assert saved["outcome"] == "promoted" and saved["stable_before"] == 1
    assert [e["action"] for e in saved["timeline"]][-1] == "promote"


def test_bad_canary_is_rolled_back_at_the_first_analysis(repo, tmp_path):
    traffic = SimulatedTraffic(repo, {1: "good", 2: "inverted"})
    report = controller(repo, traffic, tmp_path).run(2)
    assert report.outcome == "rolled_back"
    assert repo.labels() == {"stable": 1}
    assert traffic.history == [(2, 10), (None, 0)]
    last = report.timeline[-1]
    assert last.action == "rollback" and last.weight == 0
    assert any(r.startswith("logloss") for r in last.reasons)
    assert json.loads(report.path.read_text())["outcome"] == "rolled_back"


def test_no_clicks_waits_then_follows_on_inconclusive(repo, tmp_path):
    """Without traffic the analysis stays inconclusive; after the max wait the policy decides."""
    traffic = SimulatedTraffic(repo, {1: "good", 2: "good"}, requests_per_s=0)
    report = controller(repo, traffic, tmp_path).run(2)
    assert report.outcome == "rolled_back" and repo.labels() == {"stable": 1}
    analyses = [e for e in report.timeline if e.action == "analysis"]
    # Re-analysed every 30 s for up to 600 s: 21 inconclusive analyses, then the roll back.
    assert len(analyses) == 21 and all(e.verdict == "inconclusive" for e in analyses)
    assert report.timeline[-2].action == "inconclusive_rollback"

    promote = SETTINGS.model_copy(update={"on_inconclusive": "promote"})
    report = controller(
        repo, SimulatedTraffic(repo, {1: "good", 2: "good"}, requests_per_s=0), tmp_path, promote
    ).run(2)
    assert report.outcome == "promoted" and repo.labels() == {"stable": 2}


def test_pause_until_clicks_ends_early(repo, tmp_path):
    traffic = SimulatedTraffic(repo, {1: "good", 2: "good"}, requests_per_s=50)
    report = controller(repo, traffic, tmp_path).run(2)
    done = [e for e in report.timeline if e.action == "pause_done"]
    assert done, "with enough traffic the pause ends on clicks, before its duration"
    first_analysis = next(e for e in report.timeline if e.action == "analysis")
    assert first_analysis.elapsed_s < 300


def test_router_failure_rolls_back_and_reraises(repo, tmp_path):
    traffic = SimulatedTraffic(repo, {1: "good", 2: "good"})
    traffic.fail_at_weights = {50}
    ctl = controller(repo, traffic, tmp_path)
    with pytest.raises(ConnectionError):
        ctl.run(2)
    assert repo.labels() == {"stable": 1}
    assert traffic.history[-1] == (None, 0)
    reports = list((tmp_path / "reports").glob("canary-v2-*.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["outcome"] == "rolled_back"


def test_unknown_or_stable_version_is_refused(repo, tmp_path):
    traffic = SimulatedTraffic(repo, {1: "good"})
    with pytest.raises(RolloutError, match="not in the repository"):
        controller(repo, traffic, tmp_path).run(7)
    with pytest.raises(RolloutError, match="already the stable"):
        controller(repo, traffic, tmp_path).run(1)
    assert traffic.history == [] and repo.labels() == {"stable": 1}


def test_unreachable_router_during_rollback_still_leaves_a_report(repo, tmp_path):
    traffic = SimulatedTraffic(repo, {1: "good", 2: "good"})
    traffic.fail_at_weights = {50, 0}
    with pytest.raises(ConnectionError):
        controller(repo, traffic, tmp_path).run(2)
    assert repo.labels() == {"stable": 1}  # the canary label is removed even so
    (path,) = (tmp_path / "reports").glob("canary-v2-*.json")
    actions = [e["action"] for e in json.loads(path.read_text())["timeline"]]
    assert actions[-1] == "rollback_failed"
