"""Retraining trigger policy: cooldown, in-flight dedupe, no storm, every decision logged with its reason."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from freshrec.config import TriggerSettings
from freshrec.monitoring.drift import DriftResult, QualityFailure
from freshrec.triggers import Decision, ThreadLauncher, TriggerPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _drift(verdict: str = "drift", quality: bool = False) -> DriftResult:
    failures = (
        [
            QualityFailure(
                check="missing_share",
                column="user_age",
                value=0.3,
                limit=0.05,
                message="user_age: 30% missing",
            )
        ]
        if quality
        else []
    )
    return DriftResult(
        verdict=verdict,
        reason="3/4 features drifted" if verdict == "drift" else "ok",
        created_at=datetime.now(UTC),
        n_reference=1000,
        n_current=1000,
        dataset_drift=verdict == "drift",
        quality_failures=failures,
    )


def _blocking_launcher() -> tuple[ThreadLauncher, threading.Event, list[str]]:
    release = threading.Event()
    reasons: list[str] = []

    def run(reason: str) -> str:
        reasons.append(reason)
        release.wait(10)
        return "done"

    return ThreadLauncher(run), release, reasons


def test_drift_launches_then_in_flight_run_blocks_a_second(tmp_path):
    clock = Clock()
    policy = TriggerPolicy(TriggerSettings(cooldown_s=0), tmp_path, clock=clock)
    launcher, release, reasons = _blocking_launcher()
    first = policy.evaluate(launcher, drift=_drift())
    assert first.action == "launch" and first.run_id and first.signals[0].kind == "drift"
    # Many checks while the run is in flight: none launches (no storm).
    for _ in range(5):
        clock.now += 600
        d = policy.evaluate(launcher, drift=_drift())
        assert d.action == "skip" and f"run {first.run_id} in flight" in d.reason
    release.set()
    launcher.wait(first.run_id, 5)
    clock.now += 600
    second = policy.evaluate(launcher, drift=_drift())
    assert second.action == "launch" and second.run_id != first.run_id
    assert len(reasons) == 2 and "drift: 3/4 features drifted" in reasons[0]


def test_cooldown_after_a_launch(tmp_path):
    clock = Clock()
    policy = TriggerPolicy(TriggerSettings(cooldown_s=3600), tmp_path, clock=clock)
    launcher = ThreadLauncher(lambda reason: None)
    first = policy.evaluate(launcher, drift=_drift())
    launcher.wait(first.run_id, 5)
    clock.now += 1800
    skipped = policy.evaluate(launcher, drift=_drift())
    assert skipped.action == "skip" and skipped.reason.startswith("cooldown: 1800 s left")
    clock.now += 1801
    assert policy.evaluate(launcher, drift=_drift()).action == "launch"


def test_no_signal_and_disabled_signals_do_not_launch(tmp_path):
    launcher = ThreadLauncher(lambda reason: None)
    policy = TriggerPolicy(TriggerSettings(on_drift=False, on_quality_failure=True), tmp_path)
    assert policy.evaluate(launcher, drift=_drift("ok")).reason == "no signal"
    assert policy.evaluate(launcher, drift=_drift("drift")).action == "skip"  # drift trigger disabled
    d = policy.evaluate(launcher, drift=_drift("quality_failure", quality=True))
    assert d.action == "launch" and d.signals[0].kind == "quality_failure"
    assert "missing_share:user_age" in d.reason


def test_online_quality_drop_and_schedule(tmp_path):
    clock = Clock()
    settings = TriggerSettings(cooldown_s=0, online_logloss_increase=0.05, schedule_s=86_400)
    policy = TriggerPolicy(settings, tmp_path, clock=clock)
    launcher = ThreadLauncher(lambda reason: None)
    first = policy.evaluate(launcher, online_logloss_increase=0.01)  # below the limit; but first schedule
    assert first.action == "launch" and [s.kind for s in first.signals] == ["schedule"]
    launcher.wait(first.run_id, 5)
    clock.now += 3600
    assert policy.evaluate(launcher, online_logloss_increase=0.01).reason == "no signal"
    drop = policy.evaluate(launcher, online_logloss_increase=0.08)
    assert drop.action == "launch" and drop.signals[0].kind == "online_quality_drop"
    launcher.wait(drop.run_id, 5)
    clock.now += 86_400
    assert policy.evaluate(launcher).signals[0].kind == "schedule"


def test_every_decision_is_logged_with_its_reason(tmp_path):
    clock = Clock()
    policy = TriggerPolicy(TriggerSettings(cooldown_s=100), tmp_path, clock=clock)
    launcher = ThreadLauncher(lambda reason: None)
    policy.evaluate(launcher)
    run = policy.evaluate(launcher, drift=_drift())
    launcher.wait(run.run_id, 5)
    policy.evaluate(launcher, drift=_drift())
    lines = (tmp_path / "triggers" / "decisions.jsonl").read_text().splitlines()
    logged = [Decision.model_validate_json(line) for line in lines]
    assert [(d.action, d.reason.split(":")[0]) for d in logged] == [
        ("skip", "no signal"),
        ("launch", "drift"),
        ("skip", "cooldown"),
    ]
    assert logged[1].run_id == run.run_id
    # A new policy object over the same state dir (the next process) keeps the cooldown.
    again = TriggerPolicy(TriggerSettings(cooldown_s=100), tmp_path, clock=clock)
    assert again.evaluate(launcher, drift=_drift()).reason.startswith("cooldown")
    assert len(again.last_decisions()) == 4


class BrokenLauncher:
    def __init__(self) -> None:
        self.launched = 0

    def launch(self, reason: str) -> str:
        self.launched += 1
        if self.launched == 1:
            raise ConnectionError("KFP API unreachable")
        return "run-2"

    def is_running(self, run_id: str) -> bool:
        raise ConnectionError("KFP API unreachable")


def test_launch_errors_are_logged_and_unknown_run_state_blocks(tmp_path):
    policy = TriggerPolicy(TriggerSettings(cooldown_s=0), tmp_path)
    launcher = BrokenLauncher()
    failed = policy.evaluate(launcher, drift=_drift())
    assert failed.action == "error" and "KFP API unreachable" in failed.reason
    assert policy.evaluate(launcher, drift=_drift()).run_id == "run-2"
    # The API cannot say whether run-2 still runs: no second run is risked.
    blocked = policy.evaluate(launcher, drift=_drift())
    assert blocked.action == "skip" and "cannot tell whether run run-2" in blocked.reason
    assert launcher.launched == 2


def test_concurrent_checks_launch_only_once(tmp_path):
    policy = TriggerPolicy(TriggerSettings(cooldown_s=0), tmp_path)
    launcher, release, reasons = _blocking_launcher()
    decisions: list[Decision] = []
    threads = [
        threading.Thread(target=lambda: decisions.append(policy.evaluate(launcher, drift=_drift())))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    release.set()
    assert sorted(d.action for d in decisions) == ["launch"] + ["skip"] * 7
    assert len(reasons) == 1


def test_drift_on_broken_data_does_not_retrain_by_default(tmp_path):
    """Retraining on inputs that fail their quality checks would learn the breakage: the monitor pages."""
    launcher = ThreadLauncher(lambda reason: None)
    policy = TriggerPolicy(TriggerSettings(), tmp_path)
    broken = _drift("drift", quality=True)  # drifted because a feature went null
    d = policy.evaluate(launcher, drift=broken)
    assert d.action == "skip" and d.reason == "no signal"
    assert policy.evaluate(launcher, drift=_drift("drift")).action == "launch"
