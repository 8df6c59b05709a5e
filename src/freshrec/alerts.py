"""On-call alerts: Alertmanager, Slack, PagerDuty and generic webhooks, deduplicated and rate limited.

One open alert per (model, reason) is kept in ``<state_dir>/alerts/open.json`` together with the
receivers that already got it; a later check re-sends only to receivers that missed it (a failed
delivery is retried at the next check) and resolves it when the condition clears. Alertmanager is the
exception by design: it expects firing alerts to be re-posted while they last (it deduplicates by labels
itself and resolves alerts that stop arriving), so open alerts are refreshed there on every sync.

Secrets (webhook URLs, routing keys, tokens) are read at send time from the environment variable or the
mounted Kubernetes secret file a receiver names; they never appear in logs, errors or return values.
A failed delivery is logged and returned as a :class:`Delivery`; nothing here raises out of a check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from freshrec.config import AlertReceiver, AlertSettings
from freshrec.statefile import locked_state

if TYPE_CHECKING:
    from freshrec.drift import DriftResult

log = logging.getLogger(__name__)

Severity = Literal["critical", "warning", "info"]
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


class Alert(BaseModel):
    """One alert, in the receiver-neutral form every payload is built from."""

    model: str
    reason: str
    severity: Severity = "warning"
    summary: str
    description: str = ""
    details: dict[str, Any] = Field(default_factory=dict)
    status: Literal["firing", "resolved"] = "firing"
    starts_at: datetime
    ends_at: datetime | None = None

    @property
    def key(self) -> str:
        return f"{self.model}/{self.reason}"


class Delivery(BaseModel):
    """What happened to one alert at one receiver."""

    receiver: str
    kind: str
    key: str
    action: Literal["fire", "resolve", "refresh", "test"]
    ok: bool
    attempts: int = 0
    status_code: int | None = None
    error: str | None = None  # redacted
    skipped: str | None = None  # "rate limited", "min interval", ...


class SecretError(RuntimeError):
    """A receiver's secret is missing (the message names where it was looked for, never the value)."""


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
        """POST with retries and exponential backoff; never raises, never shows the secret."""

        name = _name(receiver)
        delivery = Delivery(receiver=name, kind=receiver.kind, key=alert.key, action=action, ok=False)  # type: ignore[arg-type]
        secrets: list[str] = []
        try:
            secret = self._secret(receiver)
            if secret:
                secrets.append(secret)
            url, headers, body = build_request(receiver, alert, secret, self.settings.generator_url)
            if receiver.kind in ("slack", "webhook") and not receiver.url:
                secrets += _url_parts(url)  # the URL is the secret; errors quote its path separately
        except (SecretError, ValueError) as exc:
            delivery.error = _redact(str(exc), secrets)
            log.error("alert %s to %s not sent: %s", alert.key, name, delivery.error)
            return delivery
        with _redacting_logs(secrets):
            return self._post_with_retries(url, headers, body, delivery, secrets, alert, action)

    def _post_with_retries(
        self,
        url: str,
        headers: dict[str, str],
        body: Any,
        delivery: Delivery,
        secrets: list[str],
        alert: Alert,
        action: str,
    ) -> Delivery:
        import requests

        name = delivery.receiver
        attempts = 1 + max(self.settings.max_retries, 0)
        for attempt in range(1, attempts + 1):
            delivery.attempts = attempt
            retry_after: float | None = None
            try:
                resp = requests.post(url, json=body, headers=headers, timeout=self.settings.timeout_s)
                delivery.status_code = resp.status_code
                if 200 <= resp.status_code < 300:
                    delivery.ok, delivery.error = True, None
                    log.info("alert %s %s delivered to %s (attempt %d)", alert.key, action, name, attempt)
                    return delivery
                delivery.error = _redact(f"HTTP {resp.status_code}: {resp.text[:200]}", secrets)
                if resp.status_code not in _RETRYABLE:
                    break
                retry_after = _retry_after(resp.headers.get("Retry-After"))
            except requests.RequestException as exc:
                delivery.status_code = None
                # The exception text can contain the URL (the secret for Slack): redact it.
                delivery.error = _redact(f"{type(exc).__name__}: {exc}", secrets)
            except Exception as exc:  # a bad payload must not crash the drift check that sends it
                delivery.error = _redact(f"{type(exc).__name__}: {exc}", secrets)
                break
            if attempt < attempts:
                delay = min(self.settings.backoff_s * 2 ** (attempt - 1), self.settings.max_backoff_s)
                if retry_after is not None:
                    delay = min(max(delay, retry_after), self.settings.max_backoff_s)
                log.warning(
                    "alert %s to %s failed (attempt %d/%d: %s); retrying in %.2f s",
                    alert.key, name, attempt, attempts, delivery.error, delay,
                )  # fmt: skip
                self._sleep(delay)
        log.error(
            "alert %s %s to %s failed after %d attempts: %s",
            alert.key,
            action,
            name,
            delivery.attempts,
            delivery.error,
        )
        return delivery

    def _secret(self, receiver: AlertReceiver) -> str | None:
        env = os.environ if self._env is None else self._env
        if receiver.secret_env:
            value = env.get(receiver.secret_env)
            if value:
                return value.strip()
            if receiver.secret_file is None:
                raise SecretError(f"environment variable {receiver.secret_env} is not set")
        if receiver.secret_file is not None:
            try:
                return Path(receiver.secret_file).read_text().strip()
            except OSError as exc:
                raise SecretError(f"secret file {receiver.secret_file} unreadable: {exc.strerror}") from None
        return None

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


def build_request(
    receiver: AlertReceiver, alert: Alert, secret: str | None, generator_url: str
) -> tuple[str, dict[str, str], Any]:
    """(url, headers, JSON body) for one receiver kind, in that service's own format."""
    headers = {"Content-Type": "application/json"}
    starts = _iso(alert.starts_at)
    if receiver.kind == "alertmanager":
        if not receiver.url:
            raise ValueError("alertmanager receiver needs url (the Alertmanager base URL)")
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        item: dict[str, Any] = {
            "labels": {
                "alertname": "FreshrecDrift" if alert.reason != "test" else "FreshrecTest",
                "model": alert.model,
                "reason": alert.reason,
                "severity": alert.severity,
                "service": "freshrec",
            },
            "annotations": {
                "summary": alert.summary,
                "description": alert.description or json.dumps(alert.details, default=str)[:2000],
            },
            "startsAt": starts,
            "generatorURL": generator_url,
        }
        if alert.ends_at is not None:
            item["endsAt"] = _iso(alert.ends_at)
        return receiver.url.rstrip("/") + "/api/v2/alerts", headers, [item]
    if receiver.kind == "slack":
        url = receiver.url or secret
        if not url:
            raise ValueError("slack receiver needs the incoming-webhook URL (secret_env/secret_file)")
        icon = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}[alert.status]
        text = f"{icon} [{alert.status.upper()}] {alert.key} ({alert.severity}): {alert.summary}"
        blocks = [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"since {starts} · <{generator_url}|freshrec drift>"}
                ],
            },
        ]
        return url, headers, {"text": text, "blocks": blocks}
    if receiver.kind == "pagerduty":
        if not secret:
            raise ValueError("pagerduty receiver needs a routing key (secret_env/secret_file)")
        body: dict[str, Any] = {
            "routing_key": secret,
            "event_action": "resolve" if alert.status == "resolved" else "trigger",
            "dedup_key": f"freshrec/{alert.key}",
        }
        if alert.status == "firing":
            body["payload"] = {
                "summary": alert.summary[:1024],
                "severity": alert.severity if alert.severity != "info" else "info",
                "source": f"freshrec/{alert.model}",
                "component": "drift",
                "class": alert.reason,
                "timestamp": starts,
                "custom_details": alert.details,
            }
            body["links"] = [{"href": generator_url, "text": "freshrec drift"}]
        return receiver.url or PAGERDUTY_URL, headers, body
    if receiver.kind == "webhook":
        url = receiver.url or secret
        if not url:
            raise ValueError("webhook receiver needs url or a secret holding it")
        if receiver.url and secret:
            headers["Authorization"] = f"Bearer {secret}"
        return (
            url,
            headers,
            {
                "status": alert.status,
                "key": alert.key,
                "model": alert.model,
                "reason": alert.reason,
                "severity": alert.severity,
                "summary": alert.summary,
                "details": alert.details,
                "startsAt": starts,
                "endsAt": _iso(alert.ends_at) if alert.ends_at else None,
                "generatorURL": generator_url,
            },
        )
    raise ValueError(f"unknown receiver kind {receiver.kind!r}")


def _name(receiver: AlertReceiver) -> str:
    return receiver.name or receiver.kind


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _url_parts(url: str) -> list[str]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    out = [url]
    if len(parts.path) > 1:
        out.append(parts.path)
    if parts.query:
        out.append(parts.query)
    return out


class _RedactFilter(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _redact(record.getMessage(), self.secrets)
        record.args = None
        return True


@contextlib.contextmanager
def _redacting_logs(secrets: list[str]) -> Iterator[None]:
    """urllib3 logs request paths at DEBUG; a Slack webhook's path is its secret."""
    if not secrets:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("urllib3.connectionpool", "urllib3.util.retry", "requests")]
    filt = _RedactFilter(secrets)
    for lg in loggers:
        lg.addFilter(filt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(filt)


def _redact(text: str, secrets: list[str]) -> str:
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
