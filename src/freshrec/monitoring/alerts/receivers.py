"""Receivers: what Alertmanager, Slack, PagerDuty and a generic webhook are sent, and how.

Secrets (webhook URLs, routing keys, tokens) are read at send time from the environment variable or the
mounted Kubernetes secret file a receiver names; they never appear in logs, errors or return values.
A failed delivery is logged and returned as a :class:`Delivery`; nothing here raises out of a check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from freshrec.config import AlertReceiver, AlertSettings
from freshrec.monitoring.catalogue import Severity

log = logging.getLogger(__name__)

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


class Alert(BaseModel):
    """One alert, in the receiver-neutral form every payload is built from.

    ``name`` is the catalogue's alert name (``FreshrecFeatureMissing``...: the Prometheus ``alertname`` of
    the same alert in a cluster); ``links`` are the runbook and the report (file URIs locally).
    """

    model: str
    name: str
    severity: Severity = "warning"
    summary: str
    cause: str = ""
    description: str = ""
    details: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    links: dict[str, str] = Field(default_factory=dict)  # text -> href
    status: Literal["firing", "resolved"] = "firing"
    starts_at: datetime
    ends_at: datetime | None = None

    @property
    def key(self) -> str:
        return f"{self.model}/{self.name}"


class Delivery(BaseModel):
    """What happened to one alert at one receiver."""

    receiver: str
    kind: str
    key: str
    action: Literal["fire", "resolve", "test"]
    ok: bool
    attempts: int = 0
    status_code: int | None = None
    error: str | None = None  # redacted
    skipped: str | None = None  # "rate limited", "min interval", ...


class SecretError(RuntimeError):
    """A receiver's secret is missing (the message names where it was looked for, never the value)."""


def deliver(
    receiver: AlertReceiver,
    alert: Alert,
    action: str,
    settings: AlertSettings,
    *,
    env: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """POST ``alert`` to ``receiver`` with retries and exponential backoff; never raises, never shows the secret."""
    name = _name(receiver)
    delivery = Delivery(receiver=name, kind=receiver.kind, key=alert.key, action=action, ok=False)  # type: ignore[arg-type]
    secrets: list[str] = []
    try:
        secret = read_secret(receiver, env)
        if secret:
            secrets.append(secret)
        url, headers, body = build_request(receiver, alert, secret)
        if receiver.kind in ("slack", "webhook") and not receiver.url:
            secrets += _url_parts(url)  # the URL is the secret; errors quote its path separately
        if secret:
            _require_https(url, receiver)
    except (SecretError, ValueError) as exc:
        delivery.error = _redact(str(exc), secrets)
        log.error("alert %s to %s not sent: %s", alert.key, name, delivery.error)
        return delivery
    with _redacting_logs(secrets):
        return _post_with_retries(
            url, headers, body, delivery, secrets, alert, action, settings, sleep, receiver.ca_file
        )


def _require_https(url: str, receiver: AlertReceiver) -> None:
    """Anything that carries a token, routing key or secret URL goes over TLS, or not at all."""
    from urllib.parse import urlsplit

    if urlsplit(url).scheme.lower() != "https":
        raise ValueError(
            f"refusing to send the {receiver.kind} receiver's secret over plain {urlsplit(url).scheme or 'text'}: "
            "use an https:// URL (set ca_file for a private CA)"
        )


def _post_with_retries(
    url: str,
    headers: dict[str, str],
    body: Any,
    delivery: Delivery,
    secrets: list[str],
    alert: Alert,
    action: str,
    settings: AlertSettings,
    sleep: Callable[[float], None],
    ca_file: Path | None = None,
) -> Delivery:
    import requests

    name = delivery.receiver
    attempts = 1 + max(settings.max_retries, 0)
    for attempt in range(1, attempts + 1):
        delivery.attempts = attempt
        retry_after: float | None = None
        try:
            # No redirects: a 30x could send the bearer token or the routing key to another host, or
            # downgrade to http; a receiver is configured with its final URL.
            resp = requests.post(
                url,
                json=body,
                headers=headers,
                timeout=settings.timeout_s,
                allow_redirects=False,
                verify=str(ca_file) if ca_file else True,
            )
            delivery.status_code = resp.status_code
            if 200 <= resp.status_code < 300:
                delivery.ok, delivery.error = True, None
                log.info("alert %s %s delivered to %s (attempt %d)", alert.key, action, name, attempt)
                return delivery
            if 300 <= resp.status_code < 400:
                delivery.error = (
                    f"HTTP {resp.status_code}: redirect not followed (alerts go only to the configured URL; "
                    "configure the receiver with its final URL)"
                )
                break
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
            delay = min(settings.backoff_s * 2 ** (attempt - 1), settings.max_backoff_s)
            if retry_after is not None:
                delay = min(max(delay, retry_after), settings.max_backoff_s)
            log.warning(
                "alert %s to %s failed (attempt %d/%d: %s); retrying in %.2f s",
                alert.key, name, attempt, attempts, delivery.error, delay,
            )  # fmt: skip
            sleep(delay)
    log.error(
        "alert %s %s to %s failed after %d attempts: %s",
        alert.key,
        action,
        name,
        delivery.attempts,
        delivery.error,
    )
    return delivery


def read_secret(receiver: AlertReceiver, env: Mapping[str, str] | None = None) -> str | None:
    """The receiver's secret from its environment variable or mounted secret file (``None``: it has none)."""
    env = os.environ if env is None else env
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


_LABEL = {"critical": "PAGE", "warning": "TICKET", "info": "NOTICE"}


def build_request(
    receiver: AlertReceiver, alert: Alert, secret: str | None
) -> tuple[str, dict[str, str], Any]:
    """(url, headers, JSON body) for one receiver kind, in that service's own format."""
    headers = {"Content-Type": "application/json"}
    starts = _iso(alert.starts_at)
    if receiver.kind == "slack":
        url = receiver.url or secret
        if not url:
            raise ValueError("slack receiver needs the incoming-webhook URL (secret_env/secret_file)")
        icon = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}[alert.status]
        head = "RESOLVED" if alert.status == "resolved" else _LABEL[alert.severity]
        text = f"{icon} [{head}] {alert.name} ({alert.model}): {alert.summary}"
        links = " · ".join(f"<{href}|{label}>" for label, href in alert.links.items())
        blocks = [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"since {starts}" + (f" · {links}" if links else "")}]},
        ]  # fmt: skip
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
                "severity": alert.severity,
                "source": f"freshrec/{alert.model}",
                "component": alert.cause or "freshrec",
                "class": alert.name,
                "timestamp": starts,
                "custom_details": alert.details,
            }
            body["links"] = [{"href": href, "text": label} for label, href in alert.links.items()]
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
                "alert": alert.name,
                "severity": alert.severity,
                "summary": alert.summary,
                "cause": alert.cause,
                "labels": alert.labels,
                "details": alert.details,
                "links": alert.links,
                "startsAt": starts,
                "endsAt": _iso(alert.ends_at) if alert.ends_at else None,
            },
        )
    raise ValueError(f"unknown receiver kind {receiver.kind!r}")


def _name(receiver: AlertReceiver) -> str:
    return receiver.name or receiver.kind


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, in either of its forms (seconds or an HTTP date)."""
    if value is None:
        return None
    from urllib3.exceptions import InvalidHeader
    from urllib3.util.retry import Retry

    try:
        return Retry().parse_retry_after(value)  # a date in the past gives 0
    except InvalidHeader:
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
