"""Alert delivery against real HTTP(S) receivers on loopback that fail the first N deliveries.

Receivers that get a secret (a token, a routing key, a secret URL) listen with TLS, on a certificate signed
by a throwaway CA made here, because delivery refuses to send a secret over plain http.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from freshrec.config import AlertReceiver, AlertSettings
from freshrec.monitoring.alerts import AlertManager
from freshrec.monitoring.catalogue import Signal
from freshrec.monitoring.drift import DriftResult, QualityFailure
from freshrec.monitoring.monitor import signals_from_drift

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[Path, Path]:
    """(cert+key PEM for 127.0.0.1, the CA file that verifies it), made with ``cryptography``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "freshrec-test-receiver")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    out = tmp_path_factory.mktemp("tls")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (out / "server.pem").write_bytes(cert_pem + key_pem)
    (out / "ca.pem").write_bytes(cert_pem)
    return out / "server.pem", out / "ca.pem"


class Receiver:
    """A loopback HTTP(S) server that answers ``fail_status`` to the first ``fail_first`` requests.

    ``headers`` are added to every failing answer (``Retry-After``, ``Location``); ``tls`` is the
    certificate+key file to serve https with.
    """

    def __init__(
        self,
        fail_first: int = 0,
        fail_status: int = 503,
        ok_status: int = 200,
        headers: dict[str, str] | None = None,
        tls: Path | None = None,
    ) -> None:
        self.requests: list[dict] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "json": json.loads(body or b"null")}
                )
                status = fail_status if len(outer.requests) <= outer.fail_first else ok_status
                self.send_response(status)
                if status == fail_status:
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                self.end_headers()
                self.wfile.write(b'{"status":"ok"}' if status < 300 else b"upstream down")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _settings(*receivers: AlertReceiver, **kw) -> AlertSettings:
    values = {"timeout_s": 2.0, "max_retries": 3, "backoff_s": 0.01, "min_interval_s": 0.0, "console": False}
    values.update(kw)
    return AlertSettings(receivers=list(receivers), **values)


def _signals(broken: bool) -> list[Signal]:
    """What the monitor reports for a window: a page when ``user_age`` went null, a notice either way."""
    failures = (
        [
            QualityFailure(
                check="missing_share",
                column="user_age",
                value=0.9,
                limit=0.05,
                message="user_age: 90.0% missing",
            )
        ]
        if broken
        else []
    )
    result = DriftResult(
        verdict="quality_failure" if broken else "ok",
        reason="test",
        created_at=datetime.now(UTC),
        n_reference=1000,
        n_current=1000,
        quality_failures=failures,
    )
    return signals_from_drift(result)


def test_retry_until_delivered_then_dedupe_then_resolve(tmp_path):
    with Receiver(fail_first=2) as hook:
        sleeps: list[float] = []
        manager = AlertManager(
            _settings(AlertReceiver(kind="webhook", url=hook.url + "/hook")), tmp_path, sleep=sleeps.append
        )
        (first,) = manager.sync("ctr", _signals(True))
        assert first.ok and first.attempts == 3 and first.status_code == 200
        assert sleeps == [0.01, 0.02]  # exponential backoff
        sent = hook.requests[-1]["json"]
        assert sent["status"] == "firing" and sent["severity"] == "critical"
        assert sent["key"] == "ctr/FreshrecFeatureMissing" and sent["cause"] == "user_age"
        assert "user_age" in sent["summary"]
        assert sent["links"]["runbook"].endswith("docs/runbooks/FreshrecFeatureMissing.md")

        # Same failure at the next check: nothing new is sent (one open alert per model + alert).
        assert manager.sync("ctr", _signals(True)) == []
        assert len(hook.requests) == 3
        # A fresh manager over the same state dir (the next CronJob run) also dedupes.
        again = AlertManager(_settings(AlertReceiver(kind="webhook", url=hook.url + "/hook")), tmp_path)
        assert again.sync("ctr", _signals(True)) == []
        assert set(again.open_alerts()) == {"ctr/FreshrecFeatureMissing"}

        (resolved,) = again.sync("ctr", _signals(False))
        assert resolved.ok and resolved.action == "resolve"
        assert hook.requests[-1]["json"]["status"] == "resolved"
        assert again.open_alerts() == {}


def test_failed_delivery_is_reported_not_raised_and_retried_next_check(tmp_path, caplog):
    with Receiver(fail_first=100) as hook:
        manager = AlertManager(
            _settings(AlertReceiver(kind="webhook", url=hook.url), max_retries=2),
            tmp_path,
            sleep=lambda s: None,
        )
        with caplog.at_level(logging.ERROR, logger="freshrec.monitoring.alerts"):
            (failed,) = manager.fire("ctr", "drift", "drift found")
        assert not failed.ok and failed.attempts == 3 and failed.status_code == 503
        assert "upstream down" in failed.error
        assert "failed after 3 attempts" in caplog.text
        hook.fail_first = 0
        (retried,) = manager.fire("ctr", "drift", "drift found")
        assert retried.ok  # the receiver that missed it gets it at the next check
        assert manager.fire("ctr", "drift", "drift found") == []


def test_client_errors_are_not_retried(tmp_path):
    with Receiver(fail_first=100, fail_status=400) as hook:
        manager = AlertManager(
            _settings(AlertReceiver(kind="webhook", url=hook.url)), tmp_path, sleep=lambda s: None
        )
        (d,) = manager.fire("ctr", "drift", "x")
        assert not d.ok and d.attempts == 1 and d.status_code == 400


def test_unreachable_receiver_times_out_within_bound(tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port that accepts connections but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        manager = AlertManager(
            _settings(AlertReceiver(kind="webhook", url=url), timeout_s=0.3, max_retries=1),
            tmp_path,
            sleep=lambda s: None,
        )
        t0 = time.monotonic()
        (d,) = manager.fire("ctr", "drift", "x")
        assert not d.ok and d.attempts == 2 and "Timeout" in d.error
        assert time.monotonic() - t0 < 3.0


def test_rate_limit_per_receiver(tmp_path):
    with Receiver() as hook:
        manager = AlertManager(
            _settings(AlertReceiver(kind="webhook", url=hook.url), max_per_hour=2), tmp_path
        )
        results = [manager.fire(f"m{i}", "drift", "x")[0] for i in range(4)]
        assert [r.ok for r in results] == [True, True, False, False]
        assert [r.skipped for r in results[2:]] == ["rate limited", "rate limited"]
        assert len(hook.requests) == 2


def test_min_interval_stops_flapping(tmp_path):
    with Receiver() as hook:
        now = [1000.0]
        manager = AlertManager(
            _settings(AlertReceiver(kind="webhook", url=hook.url), min_interval_s=60.0),
            tmp_path,
            clock=lambda: now[0],
        )
        assert manager.fire("ctr", "drift", "x")[0].ok
        now[0] += 10
        assert manager.resolve("ctr", "drift")[0].ok  # resolves always go out
        now[0] += 10
        assert manager.fire("ctr", "drift", "x")[0].skipped == "min interval"
        now[0] += 60
        assert manager.fire("ctr", "drift", "x")[0].ok
        assert [r["json"]["status"] for r in hook.requests] == ["firing", "resolved", "firing"]


def test_formats_of_slack_and_pagerduty(tmp_path, monkeypatch, tls):
    cert, ca = tls
    with Receiver(tls=cert) as slack, Receiver(tls=cert) as pd:
        monkeypatch.setenv("FRESHREC_TEST_SLACK_URL", slack.url + "/services/T000/B000/SECRETPATH")
        key_file = tmp_path / "pd-routing-key"
        key_file.write_text("R0UT1NGKEY\n")
        settings = _settings(
            AlertReceiver(kind="slack", secret_env="FRESHREC_TEST_SLACK_URL", ca_file=ca),
            AlertReceiver(
                kind="pagerduty",
                url=pd.url + "/v2/enqueue",
                secret_file=key_file,
                ca_file=ca,
                min_severity="critical",
            ),
        )
        manager = AlertManager(settings, tmp_path / "state")
        deliveries = manager.sync("ctr", _signals(True))
        assert all(d.ok for d in deliveries) and len(deliveries) == 2

        (msg,) = slack.requests
        assert msg["path"] == "/services/T000/B000/SECRETPATH"
        assert "[PAGE] FreshrecFeatureMissing" in msg["json"]["text"]
        assert msg["json"]["blocks"][0]["type"] == "section"
        assert (
            "docs/runbooks/FreshrecFeatureMissing.md|runbook>"
            in msg["json"]["blocks"][1]["elements"][0]["text"]
        )

        (event,) = pd.requests
        assert event["json"]["routing_key"] == "R0UT1NGKEY"
        assert event["json"]["event_action"] == "trigger"
        assert event["json"]["dedup_key"] == "freshrec/ctr/FreshrecFeatureMissing"
        assert event["json"]["payload"]["severity"] == "critical"
        assert event["json"]["payload"]["class"] == "FreshrecFeatureMissing"
        assert event["json"]["links"][0]["text"] == "runbook"

        # Still broken: nobody is told twice. Cleared: both resolve, PagerDuty by dedup key.
        assert manager.sync("ctr", _signals(True)) == []
        resolved = manager.sync("ctr", _signals(False))
        assert sorted(d.kind for d in resolved if d.ok) == ["pagerduty", "slack"]
        assert pd.requests[-1]["json"]["event_action"] == "resolve"
        assert pd.requests[-1]["json"]["dedup_key"] == "freshrec/ctr/FreshrecFeatureMissing"
        assert "RESOLVED" in slack.requests[-1]["json"]["text"]


def test_routing_by_severity_and_inhibition(tmp_path):
    with Receiver() as tickets, Receiver() as pager:
        settings = _settings(
            AlertReceiver(kind="webhook", name="tickets", url=tickets.url),  # warning and up (the default)
            AlertReceiver(kind="webhook", name="pager", url=pager.url, min_severity="critical"),
        )
        manager = AlertManager(settings, tmp_path)
        notice = Signal.of("FreshrecDataDrift", "drift; retraining", "user_age")
        ticket = Signal.of("FreshrecNotEnoughData", "12 rows", "rows")
        stale = Signal.of("FreshrecStreamFeaturesStale", "stream job 3 days behind", "stream_features")
        skew = Signal.of("FreshrecFeatureSkew", "served != offline", "user_events_7d")
        manager.sync("ctr", [notice, ticket, stale, skew])
        assert [r["json"]["alert"] for r in pager.requests] == ["FreshrecStreamFeaturesStale"]
        assert sorted(r["json"]["alert"] for r in tickets.requests) == [
            "FreshrecNotEnoughData",
            "FreshrecStreamFeaturesStale",
        ]  # the notice goes nowhere but the console; the skew is inhibited by the stale stream job
        assert set(manager.open_alerts()) == {
            f"ctr/{n}"
            for n in (
                "FreshrecDataDrift",
                "FreshrecNotEnoughData",
                "FreshrecStreamFeaturesStale",
                "FreshrecFeatureSkew",
            )
        }
        manager.sync("ctr", [])
        assert manager.open_alerts() == {}
        assert [r["json"]["status"] for r in pager.requests] == ["firing", "resolved"]


def test_alertmanager_receivers_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="PrometheusRules"):
        AlertReceiver(kind="alertmanager", url="https://am.example")


def test_secrets_never_reach_logs_or_errors(tmp_path, monkeypatch, caplog, tls):
    cert, ca = tls
    secret_path = "/services/T111/B222/TOPSECRETTOKEN"
    with Receiver(fail_first=100, fail_status=500, tls=cert) as slack:
        monkeypatch.setenv("FRESHREC_TEST_SLACK_URL", slack.url + secret_path)
        monkeypatch.setenv("FRESHREC_TEST_PD_KEY", "PDKEYSECRET")
        settings = _settings(
            AlertReceiver(kind="slack", secret_env="FRESHREC_TEST_SLACK_URL", ca_file=ca),
            AlertReceiver(kind="pagerduty", url=slack.url, secret_env="FRESHREC_TEST_PD_KEY", ca_file=ca),
            AlertReceiver(kind="webhook", name="missing", secret_env="FRESHREC_NOT_SET"),
            max_retries=1,
        )
        manager = AlertManager(settings, tmp_path, sleep=lambda s: None)
        # urllib3's own level too: the CLI quiets it (an earlier CliRunner test in this process may have).
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="urllib3"):
            deliveries = manager.fire("ctr", "drift", "x") + manager.test()
    assert not any(d.ok for d in deliveries)
    text = caplog.text + " ".join(d.model_dump_json() for d in deliveries)
    assert "POST ***" in caplog.text  # urllib3 logged the request line, with the secret path redacted
    for secret in ("TOPSECRETTOKEN", "PDKEYSECRET", secret_path):
        assert secret not in text
    missing = [d for d in deliveries if d.receiver == "missing"]
    assert missing and all("FRESHREC_NOT_SET is not set" in d.error for d in missing)


def test_unreachable_slack_error_is_redacted(tmp_path, monkeypatch, port_factory):
    monkeypatch.setenv(
        "FRESHREC_TEST_SLACK_URL", f"https://127.0.0.1:{port_factory()}/services/T9/B9/SECRETXYZ"
    )
    manager = AlertManager(
        _settings(AlertReceiver(kind="slack", secret_env="FRESHREC_TEST_SLACK_URL"), max_retries=0), tmp_path
    )
    (d,) = manager.fire("ctr", "drift", "x")
    assert not d.ok and "ConnectionError" in d.error
    assert "SECRETXYZ" not in d.error and "/services/T9/B9" not in d.error


def test_alerts_test_selects_receivers(tmp_path):
    with Receiver() as a, Receiver() as b:
        settings = _settings(
            AlertReceiver(kind="webhook", name="a", url=a.url),
            AlertReceiver(kind="webhook", name="b", url=b.url),
        )
        manager = AlertManager(settings, tmp_path)
        (d,) = manager.test(["b"])
        assert (
            d.ok and d.receiver == "b" and not a.requests and b.requests[0]["json"]["alert"] == "FreshrecTest"
        )
        with pytest.raises(ValueError, match="unknown receivers"):
            manager.test(["nope"])
        assert manager.open_alerts() == {}


def test_failed_resolve_is_retried_at_the_next_check(tmp_path):
    with Receiver() as hook:
        manager = AlertManager(
            _settings(AlertReceiver(kind="webhook", url=hook.url), max_retries=0),
            tmp_path,
            sleep=lambda s: None,
        )
        assert manager.sync("ctr", _signals(True))[0].ok
        hook.fail_first = 100  # the receiver goes down before the failure clears
        (failed,) = manager.sync("ctr", _signals(False))
        assert failed.action == "resolve" and not failed.ok
        assert manager.open_alerts() == {}  # not firing any more, but the resolve is still owed
        hook.fail_first = 0
        (retried,) = manager.sync("ctr", _signals(False))
        assert retried.action == "resolve" and retried.ok
        assert manager.sync("ctr", _signals(False)) == []
        assert [r["json"]["status"] for r in hook.requests] == ["firing", "resolved", "resolved"]


def test_secrets_are_never_sent_over_plain_http(tmp_path, monkeypatch):
    with Receiver() as plain:
        monkeypatch.setenv("FRESHREC_TEST_TOKEN", "BEARERSECRET")
        monkeypatch.setenv("FRESHREC_TEST_SLACK_URL", plain.url + "/services/T1/B1/SLACKSECRET")
        settings = _settings(
            AlertReceiver(kind="webhook", name="token", url=plain.url, secret_env="FRESHREC_TEST_TOKEN"),
            AlertReceiver(kind="pagerduty", url=plain.url, secret_env="FRESHREC_TEST_TOKEN"),
            AlertReceiver(kind="slack", secret_env="FRESHREC_TEST_SLACK_URL"),
            AlertReceiver(kind="webhook", name="open", url=plain.url),  # no secret: http is allowed
        )
        deliveries = {d.receiver: d for d in AlertManager(settings, tmp_path).fire("ctr", "x", "y")}
    assert deliveries["open"].ok
    for name in ("token", "pagerduty", "slack"):
        assert not deliveries[name].ok and deliveries[name].attempts == 0
        assert "https" in deliveries[name].error
        assert "SLACKSECRET" not in deliveries[name].error and "BEARERSECRET" not in deliveries[name].error
    assert len(plain.requests) == 1 and "Authorization" not in plain.requests[0]["headers"]


def test_redirects_are_not_followed(tmp_path, monkeypatch, tls):
    cert, ca = tls
    elsewhere = Receiver(tls=cert)
    hook = Receiver(fail_first=100, fail_status=307, headers={"Location": elsewhere.url}, tls=cert)
    monkeypatch.setenv("FRESHREC_TEST_TOKEN", "BEARERSECRET")
    receiver = AlertReceiver(kind="webhook", url=hook.url, secret_env="FRESHREC_TEST_TOKEN", ca_file=ca)
    with elsewhere, hook:
        (d,) = AlertManager(_settings(receiver), tmp_path, sleep=lambda s: None).fire("ctr", "x", "y")
    assert not d.ok and d.status_code == 307 and d.attempts == 1 and "redirect" in d.error
    assert len(hook.requests) == 1 and elsewhere.requests == []  # the token never went to the other host


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_honoured_in_both_forms(tmp_path, form):
    # An HTTP date has a resolution of one second: ask for 5 s ahead and accept 3..5.
    value = (
        "4" if form == "seconds" else format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    )
    with Receiver(fail_first=1, fail_status=429, headers={"Retry-After": value}) as hook:
        sleeps: list[float] = []
        settings = _settings(AlertReceiver(kind="webhook", url=hook.url), backoff_s=0.01, max_backoff_s=30.0)
        (d,) = AlertManager(settings, tmp_path, sleep=sleeps.append).fire("ctr", "x", "y")
    assert d.ok and d.attempts == 2
    assert len(sleeps) == 1 and (sleeps[0] == 4.0 if form == "seconds" else 3.0 <= sleeps[0] <= 5.0)
