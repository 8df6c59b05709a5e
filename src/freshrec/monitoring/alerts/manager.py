"""On-call alerts: one open alert per (model, alert), deduplicated, rate limited, resolved when it clears.

The monitor hands :meth:`AlertManager.sync` the signals that hold now (see
:mod:`freshrec.monitoring.catalogue`); the manager opens an alert for each new one, resolves the open ones
that no longer hold (a resolve message goes to every receiver that got the alert), and keeps the open
alerts in ``<state_dir>/alerts/open.json`` with the receivers that already have them: a later check re-sends
only to receivers that missed one (a failed delivery is retried at the next check).

Routing follows the catalogue's severities: every alert gets a console line; a receiver gets the alerts at
or above its ``min_severity`` (by default pages and tickets, not notices); a signal that another active
signal inhibits (:data:`~freshrec.monitoring.catalogue.INHIBITIONS`, the same rules as the Alertmanager
config of the cluster) is kept open but not sent. What each receiver is sent, and how, is
:mod:`freshrec.monitoring.alerts.receivers`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from freshrec.config import AlertReceiver, AlertSettings
from freshrec.monitoring.alerts.receivers import Alert, Delivery, _name, deliver
from freshrec.monitoring.catalogue import ALERTS, SEVERITIES, Severity, Signal, inhibited
from freshrec.statefile import locked_state

log = logging.getLogger(__name__)


class _OpenAlert(BaseModel):
    alert: Alert
    delivered: list[str] = Field(default_factory=list)
    last_notified: float = 0.0
    inhibited_by: str | None = None


class _State(BaseModel):
    open: dict[str, _OpenAlert] = Field(default_factory=dict)
    sent: dict[str, list[float]] = Field(default_factory=dict)  # receiver -> firing notification times
    last_action: dict[str, float] = Field(default_factory=dict)  # key -> last notification time


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)  # type: ignore[arg-type]


class AlertManager:
    """Fires and resolves alerts at the configured receivers (plus a console line, always).

    Args:
        alert_settings: receivers, retry, timeout, rate limits, runbook base URL.
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
        name: str,
        summary: str,
        *,
        severity: Severity | None = None,
        cause: str = "",
        description: str = "",
        details: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        links: Mapping[str, str] | None = None,
    ) -> list[Delivery]:
        """Open an alert for (model, name); a no-op for receivers that already have it.

        ``severity`` defaults to the catalogue's for a known ``name`` (else ``warning``).
        """
        if severity is None:
            severity = ALERTS[name].severity if name in ALERTS else "warning"
        alert = self._alert(model, name, summary, severity, cause, description, details, labels, links)
        with self._locked_state() as state:
            return self._fire(state, alert, None)

    def resolve(self, model: str, name: str, summary: str | None = None) -> list[Delivery]:
        """Resolve the open alert for (model, name) at the receivers that got it."""
        with self._locked_state() as state:
            return self._resolve(state, f"{model}/{name}", summary)

    def open_alerts(self) -> dict[str, Alert]:
        """The firing alerts, by key ``model/name``."""
        with self._locked_state() as state:
            return {k: v.alert for k, v in state.open.items() if v.alert.status == "firing"}

    def sync(
        self,
        model: str,
        signals: Sequence[Signal],
        *,
        managed: set[str] | None = None,
        links: Mapping[str, str] | None = None,
    ) -> list[Delivery]:
        """Fire what ``signals`` show, resolve the open alerts of ``model`` they no longer show.

        Args:
            managed: the alert names this caller owns (default: the monitor's alerts in the catalogue);
                open alerts outside it (another producer's) are left alone.
            links: links added to every alert (the window's report).
        """
        managed = (
            managed if managed is not None else {a.name for a in ALERTS.values() if a.source == "monitor"}
        )
        quiet = inhibited(list(signals))
        deliveries: list[Delivery] = []
        with self._locked_state() as state:
            for s in signals:
                alert = self._alert(
                    model, s.name, s.summary, s.severity, s.cause, "", s.evidence, s.labels, links
                )
                deliveries += self._fire(state, alert, quiet.get(s.name))
            wanted = {s.name for s in signals}
            for key in [k for k, v in state.open.items() if v.alert.model == model]:
                name = state.open[key].alert.name
                if name in managed and name not in wanted:
                    deliveries += self._resolve(state, key, f"{model}: {name} cleared")
        return deliveries

    def test(self, receivers: list[str] | None = None) -> list[Delivery]:
        """Send a test alert to the named receivers (all when ``None``); no dedup state is touched."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        alert = Alert(
            model="freshrec",
            name="FreshrecTest",
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

    # -- dedup, rate limit, routing ---------------------------------------------------------------------

    def _alert(
        self,
        model: str,
        name: str,
        summary: str,
        severity: Severity,
        cause: str,
        description: str,
        details: Mapping[str, Any] | None,
        labels: Mapping[str, str] | None,
        links: Mapping[str, str] | None,
    ) -> Alert:
        all_links = dict(links or {})
        if name in ALERTS:
            all_links.setdefault("runbook", ALERTS[name].runbook_url(self.settings.runbook_base_url))
        return Alert(
            model=model,
            name=name,
            severity=severity,
            summary=summary,
            cause=cause,
            description=description,
            details=dict(details or {}),
            labels=dict(labels or {}),
            links=all_links,
            starts_at=datetime.fromtimestamp(self._clock(), UTC),
        )

    def _fire(self, state: _State, alert: Alert, inhibited_by: str | None) -> list[Delivery]:
        now = self._clock()
        key = alert.key
        entry = state.open.get(key)
        receivers = [r for r in self._receivers() if _rank(alert.severity) <= _rank(r.min_severity)]
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
                    for r in receivers
                ]
            entry = _OpenAlert(alert=alert)
            state.open[key] = entry
            self._console(alert, "fire", inhibited_by)
        else:
            starts = entry.alert.starts_at
            entry.alert = alert.model_copy(update={"starts_at": starts})
            # A resolve that some receivers never got leaves them firing: back to firing, nothing to resend.
        entry.inhibited_by = inhibited_by
        if inhibited_by is not None:
            return []  # open (and resolved later), but the inhibiting alert is the one people get
        deliveries = []
        for receiver in receivers:
            name = _name(receiver)
            if name in entry.delivered:
                continue  # already told; one open alert per (model, name)
            if not self._rate_ok(state, name, now):
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
            delivery = self._deliver(receiver, entry.alert, "fire")
            deliveries.append(delivery)
            if delivery.ok:
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
        if entry.alert.status == "firing":
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

    def _deliver(
        self, receiver: AlertReceiver, alert: Alert, action: Literal["fire", "resolve", "test"]
    ) -> Delivery:
        return deliver(receiver, alert, action, self.settings, env=self._env, sleep=self._sleep)

    # -- state --------------------------------------------------------------------------------------

    def _locked_state(self) -> contextlib.AbstractContextManager[_State]:
        """Load, yield and save the state under an exclusive file lock (several checks may run at once)."""
        return locked_state(self.dir, _State)

    def _console(self, alert: Alert, action: str, inhibited_by: str | None = None) -> None:
        if not self.settings.console:
            return
        from rich.console import Console
        from rich.markup import escape

        if action == "fire":
            style, label = {
                "critical": ("bold red", "PAGE"),
                "warning": ("bold yellow", "TICKET"),
                "info": ("cyan", "NOTICE"),
            }[alert.severity]
        else:
            style, label = {"resolve": ("bold green", "RESOLVED"), "test": ("bold cyan", "TEST")}[action]
        quiet = f" [dim](inhibited by {inhibited_by})[/]" if inhibited_by else ""
        Console(stderr=True, highlight=False).print(
            f"[{style}]{label}[/] [bold]{escape(alert.key)}[/] {escape(alert.summary)}{quiet}", markup=True
        )
