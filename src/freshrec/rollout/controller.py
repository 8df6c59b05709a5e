"""Local canary controller: walks a :class:`~freshrec.rollout.plan.CanaryPlan` on the gateway's weights.

The controller has three collaborators, each a small protocol so that local mode and tests plug in real
parts:

- :class:`TrafficRouter` — sets the canary version/weight and reports per-arm request stats
  (:class:`HttpTrafficRouter` talks to the gateway's admin API);
- :class:`Promoter` — moves the ``canary``/``stable`` labels in the model repository
  (:class:`RepositoryPromoter`);
- a predictions source — returns the predictions joined with clicks since the rollout began
  (:class:`PredictionLogSource` reads the gateway's prediction log and the event log).

Every decision is appended to a timeline that is saved as JSON for the run report. A failure anywhere
rolls the canary back (weight 0, canary label removed) before the error propagates, so the stable model
keeps serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import pandas as pd

from freshrec.config import RolloutSettings
from freshrec.io import atomic_write_json
from freshrec.rollout.analysis import AnalysisResult, ArmStats, analyze
from freshrec.rollout.plan import AnalysisStep, CanaryPlan, PauseStep, SetWeightStep

log = logging.getLogger(__name__)


class TrafficRouter(Protocol):
    """Splits traffic between the stable model and a canary version."""

    def set_canary(self, version: int | None, weight: int) -> None: ...

    def stats(self) -> dict[str, ArmStats]: ...


class Promoter(Protocol):
    """Moves the model repository's labels."""

    def stable_version(self) -> int | None: ...

    def start(self, version: int) -> None: ...

    def promote(self, version: int) -> None: ...

    def rollback(self, version: int) -> None: ...


PredictionsSource = Callable[[], pd.DataFrame]


class RolloutError(RuntimeError):
    """The canary could not be started (bad version, gateway unreachable ...)."""


class HttpTrafficRouter:
    """The gateway's admin API (its own listener): ``PUT /v1/admin/canary`` and ``GET /v1/admin/stats``.

    ``token``: the admin bearer token (``ServingSettings.admin_token()``), sent when given.
    """

    def __init__(self, base_url: str, timeout_s: float = 5.0, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def set_canary(self, version: int | None, weight: int) -> None:
        import requests

        url = f"{self.base_url}/v1/admin/canary"
        resp = requests.put(
            url,
            json={"version": version, "weight": int(weight)},
            headers=self.headers,
            timeout=self.timeout_s,
        )
        if resp.status_code >= 400:
            raise RolloutError(f"PUT {url} version={version} weight={weight}: {resp.status_code} {resp.text}")

    def stats(self) -> dict[str, ArmStats]:
        import requests

        url = f"{self.base_url}/v1/admin/stats"
        resp = requests.get(url, headers=self.headers, timeout=self.timeout_s)
        if resp.status_code >= 400:
            raise RolloutError(f"GET {url}: {resp.status_code} {resp.text}")
        return parse_arm_stats(resp.json())


def parse_arm_stats(body: dict[str, Any]) -> dict[str, ArmStats]:
    """Per-arm stats from ``{"stable": {...}, "canary": {...}}`` or the same under ``"arms"``."""
    arms = body.get("arms", body)
    return {
        arm: ArmStats.from_dict(arms[arm]) for arm in ("stable", "canary") if isinstance(arms.get(arm), dict)
    }


class RepositoryPromoter:
    """Labels in the model repository (``freshrec.model.repository.ModelRepository``).

    With ``model_server_url`` (the TF-Serving REST endpoint), :meth:`start` also waits until the server
    reports the canary version AVAILABLE, so no traffic is routed to a version still loading.
    """

    def __init__(
        self,
        repository: Any,
        model_server_url: str | None = None,
        ready_timeout_s: float = 120.0,
        poll_s: float = 0.2,
    ) -> None:
        self.repository = repository
        self.model_server_url = model_server_url.rstrip("/") if model_server_url else None
        self.ready_timeout_s = ready_timeout_s
        self.poll_s = poll_s

    def stable_version(self) -> int | None:
        return self.repository.stable()

    def start(self, version: int) -> None:
        if version not in self.repository.versions():
            raise RolloutError(
                f"model version {version} is not in the repository {self.repository.versions()}"
            )
        self.repository.set_label("canary", version)
        if self.model_server_url:
            try:
                self.wait_available(version)
            except RolloutError:
                self.repository.remove_label("canary")
                raise

    def wait_available(self, version: int) -> None:
        """Poll TF Serving's model status until ``version`` is AVAILABLE (real time, not the plan's clock)."""
        import requests

        url = f"{self.model_server_url}/v1/models/{self.repository.name}/versions/{int(version)}"
        deadline = time.monotonic() + self.ready_timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                resp = requests.get(url, timeout=5)
                states = [s.get("state") for s in resp.json().get("model_version_status", [])]
                if resp.status_code == 200 and "AVAILABLE" in states:
                    return
                last = f"{resp.status_code} {states or resp.text[:200]}"
            except (requests.RequestException, ValueError) as exc:
                last = repr(exc)
            time.sleep(self.poll_s)
        raise RolloutError(
            f"model server did not make v{version} available in {self.ready_timeout_s:g} s: {last}"
        )

    def promote(self, version: int) -> None:
        self.repository.set_label("stable", version)
        self.repository.remove_label("canary")

    def rollback(self, version: int) -> None:
        self.repository.remove_label("canary")


class PredictionLogSource:
    """Predictions logged since ``since`` joined with clicks from the event log."""

    def __init__(
        self, predictions_dir: Path, eventlog_dir: Path, window_s: float, since: datetime | None = None
    ):
        self.predictions_dir = Path(predictions_dir)
        self.eventlog_dir = Path(eventlog_dir)
        self.window_s = window_s
        self.since = since

    def __call__(self) -> pd.DataFrame:
        return load_joined(self.predictions_dir, self.eventlog_dir, self.window_s, self.since)


def read_events(path: Path, start: datetime | None = None) -> pd.DataFrame:
    """Events from an event-log folder (``freshrec.data.eventlog.EventLog``) or one Parquet file."""
    path = Path(path)
    if path.is_file():
        events = pd.read_parquet(path)
        if start is not None:
            events = events[pd.to_datetime(events["event_timestamp"], utc=True) >= pd.Timestamp(start)]
        return events
    if not path.is_dir():
        raise FileNotFoundError(f"events not found: {path} (an event-log folder or a Parquet file)")
    from freshrec.data.eventlog import EventLog

    return EventLog(path).read(start=start, columns=["user_id", "item_id", "event_timestamp", "label"])


def load_joined(
    predictions: Path, events: Path, window_s: float, since: datetime | None = None
) -> pd.DataFrame:
    """Predictions served since ``since`` joined with the clicks in the event log (``predlog.join_clicks``)."""
    from freshrec.serving.predlog import join_clicks, read_predictions

    predictions = Path(predictions)
    if predictions.is_file():
        preds = pd.read_parquet(predictions)
        if since is not None:
            preds = preds[pd.to_datetime(preds["served_at"], utc=True) >= pd.Timestamp(since)]
    else:
        preds = read_predictions(predictions, start=since)
    if preds.empty:
        return preds.assign(label=pd.Series(dtype="Int8"))
    first = pd.to_datetime(preds["served_at"], utc=True).min()
    return join_clicks(preds, read_events(events, start=first), window_s)


@dataclass
class TimelineEntry:
    """One thing the controller did or concluded."""

    at: str
    elapsed_s: float
    step: int | None
    action: str
    weight: int
    verdict: str | None = None
    reasons: list[str] = field(default_factory=list)
    analysis: dict[str, Any] | None = None


@dataclass
class RolloutReport:
    version: int
    stable_before: int | None
    outcome: Literal["promoted", "rolled_back"]
    timeline: list[TimelineEntry]
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "stable_before": self.stable_before,
            "outcome": self.outcome,
            "timeline": [asdict(e) for e in self.timeline],
        }


class CanaryStopped(RuntimeError):
    """Raised by an injected ``sleep`` or traffic source to stop a canary on purpose (e.g. a replay that has
    no traffic left): the canary is rolled back like on an error, logged as a warning without a traceback."""


class LocalCanaryController:
    """Runs a canary plan against a traffic router, analysing joined predictions between steps."""

    def __init__(
        self,
        plan: CanaryPlan,
        router: TrafficRouter,
        promoter: Promoter,
        predictions: PredictionsSource,
        settings: RolloutSettings,
        *,
        report_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        progress: Callable[[TimelineEntry], None] | None = None,
    ) -> None:
        self.plan = plan
        self.router = router
        self.promoter = promoter
        self.predictions = predictions
        self.settings = settings
        self.report_dir = report_dir
        self.clock = clock
        self.sleep = sleep
        self.now = now
        self.progress = progress

    def run(self, version: int) -> RolloutReport:
        """Roll ``version`` out by the plan; promote at the end or roll back on a failed analysis."""
        self._t0 = self.clock()
        self._timeline: list[TimelineEntry] = []
        self._weight = 0
        stable = self.promoter.stable_version()
        if stable == version:
            raise RolloutError(f"version {version} is already the stable version")
        self.promoter.start(version)
        self._stats0 = self._stats_or_empty()
        self._record(None, "start", reasons=[f"canary v{version} against stable v{stable}"])
        try:
            outcome = self._walk(version)
        except BaseException as exc:
            # Ctrl-C included: a half-done canary must not keep taking traffic.
            if isinstance(exc, CanaryStopped):
                log.warning("canary of v%s stopped (%s); rolling back", version, exc)
            else:
                log.exception("canary of v%s failed; rolling back", version)
            try:
                self._rollback(version, None, [f"error: {exc!r}"])
            except Exception as rollback_exc:
                log.exception("rollback of v%s failed too", version)
                self._record(None, "rollback_failed", verdict="fail", reasons=[repr(rollback_exc)])
            self._save(version, stable, "rolled_back")
            raise
        return self._save(version, stable, outcome)

    def _walk(self, version: int) -> Literal["promoted", "rolled_back"]:
        for i, step in enumerate(self.plan.steps):
            if isinstance(step, SetWeightStep):
                self.router.set_canary(version, step.set_weight)
                self._weight = step.set_weight
                self._record(i, "set_weight")
            elif isinstance(step, PauseStep):
                self._pause(i, step)
            elif isinstance(step, AnalysisStep):
                verdict, reasons = self._analyse(i, step)
                if verdict == "fail" or (
                    verdict == "inconclusive" and self.settings.on_inconclusive == "rollback"
                ):
                    self._rollback(version, i, reasons)
                    return "rolled_back"
        self.promoter.promote(version)
        self.router.set_canary(None, 0)
        self._weight = 0
        self._record(None, "promote", reasons=[f"v{version} is now stable"])
        return "promoted"

    def _pause(self, i: int, step: PauseStep) -> None:
        spec = step.pause
        start = self.clock()
        self._record(
            i,
            "pause",
            reasons=[
                f"up to {spec.duration_s:g} s"
                + (f" or {spec.until_clicks} canary clicks" if spec.until_clicks else "")
            ],
        )
        interval = self.settings.analysis_interval_s
        while True:
            left = spec.duration_s - (self.clock() - start)
            if left <= 0:
                return
            if spec.until_clicks:
                clicks = self._canary_clicks()
                if clicks >= spec.until_clicks:
                    self._record(i, "pause_done", reasons=[f"{clicks} canary clicks"])
                    return
                self.sleep(min(interval, left))
            else:
                self.sleep(left)

    def _canary_clicks(self) -> int:
        joined = self.predictions()
        if joined.empty or "arm" not in joined.columns:
            return 0
        return int(joined.loc[joined["arm"] == "canary", "label"].sum())

    def _analyse(self, i: int, step: AnalysisStep) -> tuple[str, list[str]]:
        start = self.clock()
        while True:
            result: AnalysisResult = analyze(
                self.predictions(), self._stats(), self.settings, step.analysis.checks
            )
            self._record(
                i, "analysis", verdict=result.verdict, reasons=result.reasons, analysis=result.to_dict()
            )
            if result.verdict != "inconclusive":
                return result.verdict, result.reasons
            waited = self.clock() - start
            if waited >= self.settings.max_inconclusive_wait_s:
                reasons = [f"still inconclusive after {waited:.0f} s", *result.reasons]
                self._record(
                    i,
                    f"inconclusive_{self.settings.on_inconclusive}",
                    verdict="inconclusive",
                    reasons=reasons,
                )
                return "inconclusive", reasons
            self.sleep(min(self.settings.analysis_interval_s, self.settings.max_inconclusive_wait_s - waited))

    def _stats(self) -> dict[str, ArmStats] | None:
        """Request counters since the rollout began (the router's counters minus those at the start)."""
        try:
            now = self.router.stats()
        except Exception as exc:  # stats are one input among several; analysis skips missing ones
            log.warning("traffic stats unavailable: %s", exc)
            return None
        out = {}
        for arm, st in now.items():
            base = self._stats0.get(arm, ArmStats())
            if st.requests < base.requests:  # counters were reset meanwhile: they start from 0
                base = ArmStats()
            out[arm] = replace(st, requests=st.requests - base.requests, errors=st.errors - base.errors)
        return out

    def _stats_or_empty(self) -> dict[str, ArmStats]:
        try:
            return self.router.stats()
        except Exception:
            return {}

    def _rollback(self, version: int, step: int | None, reasons: list[str]) -> None:
        # Traffic first, then the label: no request may reach a version that is being unloaded.
        try:
            self.router.set_canary(None, 0)
        finally:
            self.promoter.rollback(version)
        self._weight = 0
        self._record(step, "rollback", verdict="fail", reasons=reasons)

    def _record(self, step: int | None, action: str, **kw: Any) -> None:
        entry = TimelineEntry(
            at=self.now().isoformat(),
            elapsed_s=round(self.clock() - self._t0, 3),
            step=step,
            action=action,
            weight=self._weight,
            **kw,
        )
        self._timeline.append(entry)
        log.info(
            "canary step %s %s weight=%s %s %s",
            step,
            action,
            self._weight,
            kw.get("verdict") or "",
            "; ".join(kw.get("reasons") or []),
        )
        if self.progress:
            self.progress(entry)

    def _save(
        self, version: int, stable: int | None, outcome: Literal["promoted", "rolled_back"]
    ) -> RolloutReport:
        report = RolloutReport(version, stable, outcome, self._timeline)
        if self.report_dir is not None:
            stamp = self.now().strftime("%Y%m%dT%H%M%S")
            report.path = atomic_write_json(
                Path(self.report_dir) / f"canary-v{version}-{stamp}.json", report.to_dict()
            )
        return report


def local_controller(
    settings: Any,
    plan: CanaryPlan | None = None,
    *,
    gateway_url: str | None = None,
    model_server_url: str | None = None,
    since: datetime | None = None,
    **kwargs: Any,
) -> LocalCanaryController:
    """The controller ``freshrec rollout run`` uses, wired from the settings.

    The running gateway's admin API (``gateway_url``, default ``serving.gateway_admin_host:gateway_admin_port``,
    with the admin token of the settings) routes traffic, the model repository's labels are
    moved once the model server (``serving.rest_port``) has loaded the canary, and predictions logged
    from ``since`` (default: now) are joined with the event log's clicks. Extra keyword arguments go to
    :class:`LocalCanaryController` (``clock``, ``sleep``, ``progress`` ...).

    Args:
        settings: the :class:`freshrec.config.Settings`.
        plan: default: ``settings.rollout.plan_file`` or the default plan.
    """
    from freshrec.model.repository import ModelRepository
    from freshrec.rollout.plan import load_plan

    serving, rs = settings.serving, settings.rollout
    kwargs.setdefault("report_dir", settings.reports_dir / "rollout")
    return LocalCanaryController(
        plan or load_plan(rs.plan_file),
        HttpTrafficRouter(
            gateway_url or f"http://{serving.gateway_admin_host}:{serving.gateway_admin_port}",
            token=serving.admin_token(),
        ),
        RepositoryPromoter(
            ModelRepository(settings.models_dir, settings.model.name),
            model_server_url or f"http://{serving.host}:{serving.rest_port}",
        ),
        PredictionLogSource(
            settings.predictions_dir,
            settings.eventlog_dir,
            rs.click_window_s,
            since=since or datetime.now(UTC),
        ),
        rs,
        **kwargs,
    )
