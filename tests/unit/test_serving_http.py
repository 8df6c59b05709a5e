"""The threaded JSON HTTP layer: graceful shutdown, request size bound, error handling."""

from __future__ import annotations

import threading
import time

import requests

from freshrec.serving.httpbase import HttpService, json_body


def test_graceful_stop_finishes_in_flight_requests_then_refuses():
    entered = threading.Event()

    def app(method: str, path: str, body: bytes):
        if path == "/slow":
            entered.set()
            time.sleep(0.6)
        return json_body(200, {"path": path, "n": len(body)})

    svc = HttpService("127.0.0.1", 0, app, max_request_bytes=1024)
    svc.start()
    url = f"http://127.0.0.1:{svc.port}"
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", requests.get(url + "/slow", timeout=10)))
    t.start()
    assert entered.wait(5)
    start = time.monotonic()
    svc.stop(grace_s=5)
    assert time.monotonic() - start >= 0.3  # stop waited for the slow request
    t.join(5)
    assert result["r"].status_code == 200 and result["r"].json()["path"] == "/slow"
    try:
        requests.get(url + "/x", timeout=2)
        raise AssertionError("the server still answers after stop")
    except requests.ConnectionError:
        pass


def test_size_bound_and_app_errors():
    def app(method: str, path: str, body: bytes):
        if path == "/boom":
            raise RuntimeError("bug")
        return json_body(200, {"n": len(body)})

    svc = HttpService("127.0.0.1", 0, app, max_request_bytes=1000)
    svc.start()
    try:
        url = f"http://127.0.0.1:{svc.port}"
        session = requests.Session()
        assert session.post(url + "/x", data=b"a" * 1000, timeout=5).json() == {"n": 1000}
        r = session.post(url + "/x", data=b"a" * 5000, timeout=5)
        assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]
        assert session.post(url + "/x", data=b"ok", timeout=5).json() == {
            "n": 2
        }  # same connection still fine
        r = session.get(url + "/boom", timeout=5)
        # a bug answers 500 with an error id to find it in the log, never the exception's own text
        assert r.status_code == 500 and "error id" in r.json()["error"]
        assert "RuntimeError" not in r.text and "bug" not in r.text
    finally:
        svc.stop()
