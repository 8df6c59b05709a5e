"""Retraining triggers: drift, data quality, online quality drop or a schedule start a pipeline run.

Kubeflow Pipelines has recurring runs but no trigger on a condition; :class:`TriggerPolicy` is that
trigger. It is deliberately conservative: never a second run while one is in flight (a marker with the
run id in ``<state_dir>/triggers/state.json``, checked against the launcher), a cooldown after every
launch, and an exclusive file lock around each decision so that two checks that run at once cannot both
launch. Every decision, launches and skips alike, is appended with its reason to
``<state_dir>/triggers/decisions.jsonl``.

A launcher is any object with ``launch(reason) -> run_id`` and ``is_running(run_id) -> bool``:
:class:`ThreadLauncher` (a callable such as the local pipeline runner, in a background thread) and
:class:`KfpLauncher` (a run through the KFP API) are provided.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from freshrec.config import TriggerSettings
from freshrec.statefile import locked_state

if TYPE_CHECKING:
    from freshrec.monitoring.drift import DriftResult

log = logging.getLogger(__name__)

SignalKind = Literal["drift", "quality_failure", "online_quality_drop", "schedule", "manual"]


@runtime_checkable
class Launcher(Protocol):
    def launch(self, reason: str) -> str: ...

    def is_running(self, run_id: str) -> bool: ...


class Signal(BaseModel):
    kind: SignalKind
    detail: str


class Decision(BaseModel):
    """One evaluation of the policy, as logged."""

    at: datetime
    action: Literal["launch", "skip", "error"]
    reason: str
    signals: list[Signal] = Field(default_factory=list)
    run_id: str | None = None


class _InFlight(BaseModel):
    run_id: str
    started_at: float
    reason: str


class _State(BaseModel):
    last_launch_at: float | None = None
    last_run_id: str | None = None
    in_flight: _InFlight | None = None


class TriggerPolicy:
    """Decides whether to start a retraining run now, and starts it through a launcher.

    Args:
        trigger_settings: which signals count, the cooldown, the online logloss limit, the schedule.
        state_dir: where the in-flight marker, last launch time and decisions log live.
        clock: injectable time source (seconds since the epoch).
    """

    def __init__(
        self, trigger_settings: TriggerSettings, state_dir: Path, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = trigger_settings
        self.dir = Path(state_dir) / "triggers"
        self._clock = clock

    @property
    def decisions_path(self) -> Path:
        return self.dir / "decisions.jsonl"

    def signals(
        self,
        drift: DriftResult | None = None,
        online_logloss_increase: float | None = None,
        manual: str | None = None,
        last_launch_at: float | None = None,
    ) -> list[Signal]:
        """The signals present now, filtered by the settings."""
        out: list[Signal] = []
        if drift is not None:
            # Drift with broken data is not a reason to retrain: the model would learn the breakage (the
            # monitor pages for the data instead).
            drifted = drift.verdict == "drift" or drift.dataset_drift
            if self.settings.on_drift and drifted and not drift.quality_failures:
                out.append(Signal(kind="drift", detail=drift.reason))
            if self.settings.on_quality_failure and drift.quality_failures:
                checks = sorted({f"{f.check}:{f.column}" for f in drift.quality_failures})
                out.append(Signal(kind="quality_failure", detail=", ".join(checks[:10])))
        if (
            online_logloss_increase is not None
            and online_logloss_increase >= self.settings.online_logloss_increase
        ):
            out.append(
                Signal(
                    kind="online_quality_drop",
                    detail=f"online logloss +{online_logloss_increase:.4f} "
                    f"(limit {self.settings.online_logloss_increase:.4f})",
                )
            )
        if self.settings.schedule_s is not None:
            since = None if last_launch_at is None else self._clock() - last_launch_at
            if since is None or since >= self.settings.schedule_s:
                detail = "first scheduled run" if since is None else f"{since:.0f} s since the last run"
                out.append(
                    Signal(kind="schedule", detail=f"{detail} (every {self.settings.schedule_s:.0f} s)")
                )
        if manual:
            out.append(Signal(kind="manual", detail=manual))
        return out

    def evaluate(
        self,
        launcher: Launcher,
        *,
        drift: DriftResult | None = None,
        online_logloss_increase: float | None = None,
        manual: str | None = None,
    ) -> Decision:
        """Look at the signals, the in-flight run and the cooldown; launch at most one run; log why."""
        with self._locked_state() as state:
            now = self._clock()
            signals = self.signals(drift, online_logloss_increase, manual, state.last_launch_at)
            decision = self._decide(launcher, state, signals, now)
            self._log(decision)
        return decision

    def last_decisions(self, n: int = 20) -> list[Decision]:
        if not self.decisions_path.exists():
            return []
        lines = self.decisions_path.read_text().splitlines()[-n:]
        return [Decision.model_validate_json(line) for line in lines if line.strip()]

    # -- internals ------------------------------------------------------------------------------------

    def _decide(self, launcher: Launcher, state: _State, signals: list[Signal], now: float) -> Decision:
        at = datetime.fromtimestamp(now, UTC)
        if not signals:
            return Decision(at=at, action="skip", reason="no signal")
        summary = "; ".join(f"{s.kind}: {s.detail}" for s in signals)
        if state.in_flight is not None:
            run = state.in_flight
            try:
                running = bool(launcher.is_running(run.run_id))
            except Exception as exc:  # an unknown state counts as running: never risk two runs
                return Decision(
                    at=at,
                    action="skip",
                    reason=f"cannot tell whether run {run.run_id} still runs ({type(exc).__name__}: {exc}); "
                    f"not launching for {summary}",
                    signals=signals,
                    run_id=run.run_id,
                )
            if running:
                return Decision(
                    at=at,
                    action="skip",
                    reason=f"run {run.run_id} in flight since {datetime.fromtimestamp(run.started_at, UTC):%H:%M:%S}"
                    f" (started for {run.reason}); not launching for {summary}",
                    signals=signals,
                    run_id=run.run_id,
                )
            log.info("run %s finished; clearing the in-flight marker", run.run_id)
            state.in_flight = None
        manual = any(s.kind == "manual" for s in signals)
        if state.last_launch_at is not None and not manual:
            left = self.settings.cooldown_s - (now - state.last_launch_at)
            if left > 0:
                return Decision(
                    at=at,
                    action="skip",
                    reason=f"cooldown: {left:.0f} s left after run {state.last_run_id}; not launching for {summary}",
                    signals=signals,
                )
        try:
            run_id = str(launcher.launch(summary))
        except Exception as exc:
            return Decision(
                at=at,
                action="error",
                reason=f"launch failed ({type(exc).__name__}: {exc}) for {summary}",
                signals=signals,
            )
        state.in_flight = _InFlight(run_id=run_id, started_at=now, reason=summary)
        state.last_launch_at, state.last_run_id = now, run_id
        return Decision(at=at, action="launch", reason=summary, signals=signals, run_id=run_id)

    def _log(self, decision: Decision) -> None:
        level = logging.WARNING if decision.action == "error" else logging.INFO
        log.log(level, "trigger decision: %s — %s", decision.action, decision.reason)
        with open(self.decisions_path, "a") as fh:
            fh.write(decision.model_dump_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _locked_state(self) -> contextlib.AbstractContextManager[_State]:
        """Load, yield and save the state under an exclusive file lock (several checks may run at once)."""
        return locked_state(self.dir, _State)


class ThreadLauncher:
    """Runs ``fn(reason)`` in a background thread; the run id is a fresh uuid.

    For the local loop: ``ThreadLauncher(lambda reason: run_local(settings))``. Runs do not survive the
    process; an id from an earlier process reports not running.
    """

    def __init__(self, fn: Callable[[str], Any]) -> None:
        self._fn = fn
        self._threads: dict[str, threading.Thread] = {}
        self.results: dict[str, Any] = {}
        self.errors: dict[str, BaseException] = {}

    def launch(self, reason: str) -> str:
        run_id = f"local-{uuid.uuid4().hex[:12]}"

        def target() -> None:
            try:
                self.results[run_id] = self._fn(reason)
            except BaseException as exc:  # recorded for the caller; the thread must not die silently
                log.exception("run %s failed", run_id)
                self.errors[run_id] = exc

        thread = threading.Thread(target=target, name=f"freshrec-run-{run_id}", daemon=True)
        self._threads[run_id] = thread
        thread.start()
        return run_id

    def is_running(self, run_id: str) -> bool:
        thread = self._threads.get(run_id)
        return thread is not None and thread.is_alive()

    def wait(self, run_id: str, timeout: float | None = None) -> None:
        thread = self._threads.get(run_id)
        if thread is not None:
            thread.join(timeout)


def local_pipeline_launcher(
    settings: Any, pipeline: str = "continuous_training", **params: Any
) -> ThreadLauncher:
    """A launcher for ``freshrec.pipelines.local.run_local`` (the local mode's pipeline runner)."""

    def run(reason: str) -> Any:
        from freshrec.pipelines.local import run_local

        log.info("local pipeline %s started: %s", pipeline, reason)
        return run_local(settings, pipeline=pipeline, **params)

    return ThreadLauncher(run)


class KfpLauncher:
    """Starts a compiled pipeline through the KFP API (cluster mode) and asks the API for its state."""

    _DONE: frozenset[str] = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED", "ERROR"})

    def __init__(
        self,
        client: Any,
        pipeline_package_path: Path | str,
        *,
        experiment: str = "freshrec",
        params: Mapping[str, Any] | None = None,
        run_name_prefix: str = "freshrec-retrain",
        namespace: str | None = None,
        service_account: str | None = None,
    ) -> None:
        self.namespace = namespace
        self.service_account = service_account
        self.client = client
        self.package = str(pipeline_package_path)
        self.experiment = experiment
        self.params = dict(params or {})
        self.prefix = run_name_prefix

    @classmethod
    def from_settings(
        cls, pipeline_settings: Any, pipeline_package_path: Path | str, **kw: Any
    ) -> KfpLauncher:
        """A launcher for ``pipeline.host``; in a pod, authenticated with its service-account token.

        KFP's multi-user API authenticates in-cluster callers by a projected service-account token with the
        ``pipelines.kubeflow.org`` audience (the drift CronJob mounts one; ``KF_PIPELINES_SA_TOKEN_PATH``
        names it). Runs go to ``pipeline.namespace`` as ``pipeline.service_account``, like ``submit``.
        """
        import kfp

        if not pipeline_settings.host:
            raise ValueError("pipeline.host is not set: no KFP API to submit to")
        client = kfp.Client(
            host=pipeline_settings.host,
            namespace=pipeline_settings.namespace,
            credentials=in_cluster_kfp_credentials(),
        )
        kw.setdefault("namespace", pipeline_settings.namespace)
        kw.setdefault("service_account", pipeline_settings.service_account)
        return cls(client, pipeline_package_path, experiment=pipeline_settings.experiment, **kw)

    def launch(self, reason: str) -> str:
        name = f"{self.prefix}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
        run = self.client.create_run_from_pipeline_package(
            self.package,
            arguments=self.params,
            run_name=name,
            experiment_name=self.experiment,
            namespace=self.namespace,
            service_account=self.service_account,
        )
        log.info("KFP run %s (%s) started: %s", run.run_id, name, reason)
        return str(run.run_id)

    def is_running(self, run_id: str) -> bool:
        run = self.client.get_run(run_id)
        state = str(getattr(run, "state", "") or "").upper()
        return state not in self._DONE


def in_cluster_kfp_credentials() -> Any:
    """KFP credentials from the pod's projected service-account token, or None outside a pod.

    The path is ``$KF_PIPELINES_SA_TOKEN_PATH`` or KFP's default (``/var/run/secrets/kubeflow/pipelines/token``);
    kubelet refreshes the file, and ``kfp`` re-reads it for every request.
    """
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    path = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV) or KF_PIPELINES_SA_TOKEN_PATH
    return ServiceAccountTokenVolumeCredentials(path) if Path(path).is_file() else None
