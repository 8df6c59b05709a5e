"""On-call alerts: one open alert per (model, reason), deduplicated, rate limited, resolved when it clears.

One open alert per (model, reason) is kept in ``<state_dir>/alerts/open.json`` together with the
receivers that already got it; a later check re-sends only to receivers that missed it (a failed
delivery is retried at the next check) and resolves it when the condition clears. Alertmanager is the
exception by design: it expects firing alerts to be re-posted while they last (it deduplicates by labels
itself and resolves alerts that stop arriving), so open alerts are refreshed there on every sync.
What each receiver is sent, and how, is :mod:`freshrec.monitoring.alerts.receivers`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from freshrec.config import AlertReceiver, AlertSettings
from freshrec.monitoring.alerts.receivers import Alert, Delivery, Severity, _name, deliver
from freshrec.statefile import locked_state

if TYPE_CHECKING:
    from freshrec.monitoring.drift import DriftResult

log = logging.getLogger(__name__)


class _OpenAlert(BaseModel):
    alert: Alert
    delivered: list[str] = Field(default_factory=list)
    last_notified: float = 0.0


class _State(BaseModel):
    open: dict[str, _OpenAlert] = Field(default_factory=dict)
    sent: dict[str, list[float]] = Field(default_factory=dict)  # receiver -> firing notification times
    last_action: dict[str, float] = Field(default_factory=dict)  # key -> last notification time


class AlertManager:
    """Fires and resolves alerts at the configured receivers (plus a console line, always).

    Args:
        alert_settings: receivers, retry, timeout and rate limits.
        state_dir: where open alerts and rate-limit counters persist between checks.
        env: where ``secret_env`` names are looked up (default ``os.environ``).
        sleep, clock: injectable for tests that check backoff without waiting.
    """

    def __init__(
        self,
        alert_settings: AlertSettings,
        state_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = alert_settings
        self.dir = Path(state_dir) / "alerts"
        self._env = env
        self._sleep = sleep
        self._clock = clock

    # -- public -------------------------------------------------------------------------------------

    def fire(
        self,
        model: str,
        reason: str,
        summary: str,
        *,
        severity: Severity = "warning",
        description: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> list[Delivery]:
        """Open an alert for (model, reason); a no-op for receivers that already have it."""
        with self._locked_state() as state:
            return self._fire(state, model, reason, summary, severity, description, dict(details or {}))

    def resolve(self, model: str, reason: str, summary: str | None = None) -> list[Delivery]:
        """Resolve the open alert for (model, reason) at the receivers that got it."""
        with self._locked_state() as state:
            return self._resolve(state, f"{model}/{reason}", summary)

    def open_alerts(self) -> dict[str, Alert]:
        with self._locked_state() as state:
            return {k: v.alert for k, v in state.open.items() if v.alert.status == "firing"}

    def sync_from_drift(self, result: DriftResult, model: str) -> list[Delivery]:
        """Fire what the drift result shows, resolve what it no longer shows, for ``model``."""
        wanted = alerts_from_drift(result)
        deliveries: list[Delivery] = []
        with self._locked_state() as state:
            for reason, (severity, summary, details) in wanted.items():
                deliveries += self._fire(state, model, reason, summary, severity, "", details)
            for key in [k for k, v in state.open.items() if v.alert.model == model]:
                if state.open[key].alert.reason not in wanted:
                    deliveries += self._resolve(
                        state, key, f"{model}: {state.open[key].alert.reason} cleared"
                    )
        return deliveries

    def test(self, receivers: list[str] | None = None) -> list[Delivery]:
        """Send a test alert to the named receivers (all when ``None``); no dedup state is touched."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        alert = Alert(
            model="freshrec",
            reason="test",
            severity="info",
            summary="freshrec test alert: delivery check, no action needed",
            starts_at=now,
            ends_at=now + timedelta(minutes=5),
        )
        chosen = self._receivers()
        if receivers:
            unknown = set(receivers) - {_name(r) for r in chosen}
            if unknown:
                raise ValueError(
                    f"unknown receivers {sorted(unknown)}; configured: {[_name(r) for r in chosen]}"
                )
            chosen = [r for r in chosen if _name(r) in receivers]
        self._console(alert, "test")
        return [self._deliver(r, alert, "test") for r in chosen]

    # -- dedup, rate limit ------------------------------------------------------------------------------

    def _fire(
        self,
        state: _State,
        model: str,
        reason: str,
        summary: str,
        severity: Severity,
        description: str,
        details: dict[str, Any],
    ) -> list[Delivery]:
        now = self._clock()
        key = f"{model}/{reason}"
        entry = state.open.get(key)
        if entry is None:
            last = state.last_action.get(key)
            if last is not None and now - last < self.settings.min_interval_s:
                log.info(
                    "alert %s not sent: within %.0f s of the last notification",
                    key,
                    self.settings.min_interval_s,
                )
                return [
                    Delivery(
                        receiver=_name(r),
                        kind=r.kind,
                        key=key,
                        action="fire",
                        ok=False,
                        skipped="min interval",
                    )
                    for r in self._receivers()
                ]
            alert = Alert(
                model=model,
                reason=reason,
                severity=severity,
                summary=summary,
                description=description,
                details=details,
                starts_at=datetime.fromtimestamp(now, UTC),
            )
            entry = _OpenAlert(alert=alert)
            state.open[key] = entry
            self._console(alert, "fire")
        else:
            entry.alert.summary, entry.alert.details, entry.alert.severity = summary, details, severity
            # A resolve that some receivers never got leaves them firing: back to firing, nothing to resend.
            entry.alert.status = "firing"
        deliveries = []
        for receiver in self._receivers():
            name = _name(receiver)
            action: Literal["fire", "refresh"] = "fire"
            if name in entry.delivered:
                if receiver.kind != "alertmanager":
                    continue  # already told; one open alert per (model, reason)
                action = "refresh"
            elif not self._rate_ok(state, name, now):
                log.warning(
                    "alert %s not sent to %s: rate limit of %d/h reached",
                    key,
                    name,
                    self.settings.max_per_hour,
                )
                deliveries.append(
                    Delivery(
                        receiver=name,
                        kind=receiver.kind,
                        key=key,
                        action="fire",
                        ok=False,
                        skipped="rate limited",
                    )
                )
                continue
            alert = entry.alert.model_copy()
            if receiver.kind == "alertmanager":
                alert.ends_at = datetime.fromtimestamp(now + self.settings.alertmanager_ttl_s, UTC)
            delivery = self._deliver(receiver, alert, action)
            deliveries.append(delivery)
            if delivery.ok and action == "fire":
                entry.delivered.append(name)
                state.sent.setdefault(name, []).append(now)
                entry.last_notified = now
                state.last_action[key] = now
        return deliveries

    def _resolve(self, state: _State, key: str, summary: str | None) -> list[Delivery]:
        entry = state.open.get(key)
        if entry is None:
            return []
        now = self._clock()
        alert = entry.alert.model_copy()
        alert.status = "resolved"
        alert.ends_at = datetime.fromtimestamp(now, UTC)
        if summary:
            alert.summary = summary
        self._console(alert, "resolve")
        deliveries = []
        still_open = []
        for receiver in self._receivers():
            if _name(receiver) not in entry.delivered:
                continue
            delivery = self._deliver(receiver, alert, "resolve")
            deliveries.append(delivery)
            if not delivery.ok:
                still_open.append(_name(receiver))
        if still_open:
            entry.delivered = still_open  # retried at the next sync
            entry.alert.status = "resolved"
        else:
            del state.open[key]
        state.last_action[key] = now
        return deliveries

    def _rate_ok(self, state: _State, receiver: str, now: float) -> bool:
        recent = [t for t in state.sent.get(receiver, []) if now - t < 3600.0]
        state.sent[receiver] = recent
        return len(recent) < self.settings.max_per_hour

    def _receivers(self) -> list[AlertReceiver]:
        return list(self.settings.receivers)

    # -- delivery -------------------------------------------------------------------------------------

    def _deliver(self, receiver: AlertReceiver, alert: Alert, action: str) -> Delivery:
        return deliver(receiver, alert, action, self.settings, env=self._env, sleep=self._sleep)

    # -- state --------------------------------------------------------------------------------------

    def _locked_state(self) -> contextlib.AbstractContextManager[_State]:
        """Load, yield and save the state under an exclusive file lock (several checks may run at once)."""
        return locked_state(self.dir, _State)

    def _console(self, alert: Alert, action: str) -> None:
        if not self.settings.console:
            return
        from rich.console import Console

        style = {"fire": "bold red", "resolve": "bold green", "test": "bold cyan"}.get(action, "yellow")
        label = {"fire": "FIRING", "resolve": "RESOLVED", "test": "TEST"}.get(action, action.upper())
        Console(stderr=True, highlight=False).print(
            f"[{style}]{label}[/] [bold]{alert.key}[/] ({alert.severity}) {alert.summary}", markup=True
        )


def alerts_from_drift(result: DriftResult) -> dict[str, tuple[Severity, str, dict[str, Any]]]:
    """The alerts a drift result calls for: ``{reason: (severity, summary, details)}``."""
    out: dict[str, tuple[Severity, str, dict[str, Any]]] = {}
    base = {
        "verdict": result.verdict,
        "report": str(result.html_path or result.json_path or ""),
        "drift_share": round(result.drift_share, 4),
    }
    if result.dataset_drift or (result.prediction_drift is not None and result.prediction_drift.drifted):
        feats = result.drifted_features
        summary = f"data drift: {len(feats)}/{len(result.features)} features drifted ({', '.join(feats[:8])})"
        if result.prediction_drift is not None and result.prediction_drift.drifted:
            summary += f"; prediction drift ({result.prediction_drift.score:.3g})"
        out["drift"] = ("warning", summary, {**base, "drifted_features": feats})
    if result.target_drift is not None and result.target_drift.drifted:
        t = result.target_drift
        out["target_drift"] = (
            "warning",
            f"target rate changed {t.reference_rate:.3f} -> {t.current_rate:.3f}",
            {**base, "reference_rate": t.reference_rate, "current_rate": t.current_rate},
        )
    if result.quality_failures:
        out["data_quality"] = (
            "critical",
            "data quality: " + "; ".join(f.message for f in result.quality_failures[:5]),
            {**base, "failures": [f.model_dump() for f in result.quality_failures[:20]]},
        )
    if result.verdict == "not_enough_data":
        out["not_enough_data"] = ("warning", result.reason, base)
    return out
