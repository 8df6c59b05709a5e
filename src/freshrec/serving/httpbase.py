"""A small threaded HTTP/1.1 JSON server used by the model server's REST API and the gateway.

Why the standard library: one thread per keep-alive connection calls straight into TensorFlow (which
releases the GIL), where uvicorn + starlette must hop to a thread pool for every blocking model call.
Measured (``serving/http stack ...`` rows of ``benchmarks/bench_serving.py``, same JSON work, 6 runs on
the shared 2-core machine): at one client the threaded server had the lower p50 in every run (0.4-0.9x
uvicorn's); at 8 clients it won 4 of 6 runs (p50 0.6-0.9x), lost 2 (2-4x) — noisy, no clear loser.
It also adds no dependency. Responses go out in one write
with Nagle disabled, so a keep-alive client never waits on delayed ACKs.

Graceful shutdown: stop accepting, answer 503 to new requests on open connections, wait for the
requests in flight to finish, then close.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

# (method, path, body) -> (status, body bytes, content type)
App = Callable[[str, str, bytes], tuple[int, bytes, str]]
JSON = "application/json"
DRAIN_LIMIT = 64 * 1024 * 1024  # beyond this a too-large body is not read, the connection is closed


class BadJson(ValueError):
    """A request body that is not acceptable JSON (the message says why, never echoing the body)."""


def _no_constant(name: str) -> Any:
    raise BadJson(f"{name} is not a number JSON accepts")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BadJson(f"number {text[:30]} is too large for a double")
    return value


def parse_json(body: bytes) -> Any:
    """Parse a request body as strict JSON: no NaN/Infinity, no number beyond a double, bounded nesting.

    Python's parser accepts ``NaN``, ``Infinity`` and ``1e400`` (as inf), and raises RecursionError on
    deep nesting; each of those is a :class:`BadJson` here.

    Raises:
        BadJson: empty, not UTF-8, malformed, non-finite numbers or nesting too deep.
    """
    if not body:
        raise BadJson("The document is empty")
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise BadJson("the document is nested too deeply") from exc
    except BadJson:
        raise
    except UnicodeDecodeError as exc:
        raise BadJson(f"the document is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except ValueError as exc:  # json.JSONDecodeError: message + position, never the body itself
        raise BadJson(str(exc)[:200]) from exc


def json_body(status: int, obj: Any) -> tuple[int, bytes, str]:
    return status, json.dumps(obj).encode(), JSON


def error_body(status: int, message: str) -> tuple[int, bytes, str]:
    return json_body(status, {"error": message})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 60  # idle keep-alive connections give their thread back
    server: JsonHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        srv = self.server
        if srv.stopping:
            self.close_connection = True
            self._send(*error_body(503, "server is shutting down"))
            return
        with srv.in_flight():
            length = self.headers.get("Content-Length")
            body = b""
            if length is None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    self.close_connection = True
                    self._send(
                        *error_body(411, "chunked request bodies are not supported; send Content-Length")
                    )
                    return
            else:
                try:
                    n = int(length)
                except ValueError:
                    self.close_connection = True
                    self._send(*error_body(400, f"bad Content-Length: {length!r}"))
                    return
                if n > srv.max_request_bytes:
                    self._reject_large(n)
                    return
                body = self.rfile.read(n)
            try:
                status, payload, ctype = srv.app(method, self.path, body)
            except Exception as exc:  # a bug must answer 500, not drop the connection
                log.exception("unhandled error on %s %s", method, self.path)
                status, payload, ctype = error_body(500, f"internal error: {type(exc).__name__}: {exc}")
            self._send(status, payload, ctype)

    def _reject_large(self, n: int) -> None:
        # read (and drop) the body so that the client sees the 413 instead of a reset connection
        if n <= DRAIN_LIMIT:
            left = n
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
        else:
            self.close_connection = True
        self._send(
            *error_body(
                413, f"request body of {n} bytes exceeds max_request_bytes={self.server.max_request_bytes}"
            )
        )

    def _send(self, status: int, payload: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")  # headers and body in one write
        self._headers_buffer.append(payload)
        self.flush_headers()


class JsonHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with an app callable, a request size bound and in-flight tracking."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App, max_request_bytes: int) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.stopping = False
        self._inflight = 0
        self._cond = threading.Condition()
        super().__init__(address, _Handler)

    def in_flight(self) -> _InFlight:
        return _InFlight(self)

    def drain(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


class _InFlight:
    def __init__(self, server: JsonHTTPServer) -> None:
        self.server = server

    def __enter__(self) -> None:
        with self.server._cond:
            self.server._inflight += 1

    def __exit__(self, *exc: object) -> None:
        with self.server._cond:
            self.server._inflight -= 1
            self.server._cond.notify_all()


class HttpService:
    """Runs a :class:`JsonHTTPServer` in a thread; ``port`` is the bound port (0 picks a free one)."""

    def __init__(self, host: str, port: int, app: App, max_request_bytes: int, name: str = "http") -> None:
        self.httpd = JsonHTTPServer((host, port), app, max_request_bytes)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, name=name, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace_s``), close the socket."""
        self.httpd.stopping = True
        if self._thread.is_alive():
            self.httpd.shutdown()
        if not self.httpd.drain(grace_s):
            log.warning("stopping with requests still in flight after %.1f s", grace_s)
        self.httpd.server_close()
        self._thread.join(timeout=5)
