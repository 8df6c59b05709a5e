"""A small threaded HTTP/1.1 JSON server: the model server's REST API.

Why the standard library: one thread per keep-alive connection calls straight into TensorFlow (which
releases the GIL), where uvicorn + starlette must hop to a thread pool for every blocking model call.
Measured (``serving/http stack ...`` rows of ``benchmarks/bench_serving.py``, same JSON work, 6 runs on
the shared 2-core machine): at one client the threaded server had the lower p50 in every run (0.4-0.9x
uvicorn's); at 8 clients it won 4 of 6 runs (p50 0.6-0.9x), lost 2 (2-4x) — noisy, no clear loser.
It also adds no dependency. Responses go out in one write with Nagle disabled, so a keep-alive client
never waits on delayed ACKs. (The ranking gateway, which users reach, runs on uvicorn: ``asgi.py``.)

One request-reading routine bounds what a client can hold (:class:`Limits`): every socket read of a
request goes through :class:`_DeadlineReader`, so the request line, headers and body together must
arrive within ``request_timeout_s`` (408 after; an idle keep-alive connection is closed after
``idle_timeout_s``); headers are capped at ``max_header_bytes`` (431); ``Content-Length`` must be one
plain decimal number (non-digit, negative, duplicated, or beside ``Transfer-Encoding``: 400), and a body
over ``max_request_bytes`` is never read into memory (413); at most ``max_connections`` connections
(one thread each) are served, the next gets 503 and is closed.

Graceful shutdown: stop accepting, answer 503 to new requests on open connections, wait for the
requests in flight to finish, then close.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

# (method, path, body) -> (status, body bytes, content type)
App = Callable[[str, str, bytes], tuple[int, bytes, str]]
JSON = "application/json"
_DIGITS = re.compile(r"[0-9]{1,18}")
REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Limits:
    """Per-listener bounds on what one client can hold or send (both HTTP servers use them)."""

    max_request_bytes: int = 4 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_connections: int = 256
    request_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    write_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, serving: Any) -> Limits:
        """The limits of ``serving.*`` settings (``freshrec.config.ServingSettings``)."""
        return cls(
            max_request_bytes=serving.max_request_bytes,
            max_header_bytes=serving.max_header_bytes,
            max_connections=serving.max_connections,
            request_timeout_s=serving.request_timeout_s,
            idle_timeout_s=serving.idle_timeout_s,
        )


def error_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 response with a JSON error body that closes the connection."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def internal_error(exc: BaseException, where: str) -> str:
    """Log an unexpected error under an id; returns the words a client gets instead of its text."""
    error_id = uuid.uuid4().hex[:12]
    log.error("error %s in %s: %s: %s", error_id, where, type(exc).__name__, exc, exc_info=exc)
    return f"internal error (error id {error_id}; the server log has the details)"


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


class _RequestTimeout(Exception):
    """The request was not received within ``request_timeout_s``."""


class _DeadlineReader(io.RawIOBase):
    """The socket as a raw stream whose every read is bounded by the current request's deadline.

    Between requests a read waits at most ``idle_timeout_s`` (then the connection closes quietly); the
    first bytes of a request start its deadline, and each later read waits only for what is left of it,
    so a client trickling one byte at a time cannot stretch a request past ``request_timeout_s``.
    """

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        super().__init__()
        self.sock = sock
        self.limits = limits
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def start_request(self) -> None:
        self.deadline = None

    def end_request(self) -> None:
        self.deadline = None

    def readinto(self, buffer: Any) -> int:
        if self.deadline is None:
            self.sock.settimeout(self.limits.idle_timeout_s)
        else:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise _RequestTimeout
            self.sock.settimeout(left)
        try:
            n = self.sock.recv_into(buffer)
        except TimeoutError:
            if self.deadline is None:
                raise  # idle: http.server closes the connection
            raise _RequestTimeout from None
        if n and self.deadline is None:
            self.deadline = time.monotonic() + self.limits.request_timeout_s
        return n


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: JsonHTTPServer

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection, self.server.limits)
        self.rfile = io.BufferedReader(self._reader, 64 * 1024)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def handle_one_request(self) -> None:
        self._reader.start_request()
        try:
            super().handle_one_request()
        except _RequestTimeout:
            self.close_connection = True
            self._send(
                *error_body(
                    408,
                    f"the request was not received within request_timeout_s="
                    f"{self.server.limits.request_timeout_s:g}",
                )
            )
        finally:
            self._reader.end_request()

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
            body = self._read_body()
            if body is None:
                return  # refused: the answer is sent, the connection closes
            try:
                status, payload, ctype = srv.app(method, self.path, body)
            except Exception as exc:  # a bug must answer 500, not drop the connection, nor echo internals
                status, payload, ctype = error_body(500, internal_error(exc, f"{method} {self.path[:200]}"))
            self._send(status, payload, ctype)

    def _refuse(self, status: int, message: str) -> None:
        self.close_connection = True
        self._send(*error_body(status, message))

    def _read_body(self) -> bytes | None:
        """The request body under the rules of the module docstring, or None once refused."""
        limits = self.server.limits
        head = len(self.requestline) + sum(len(k) + len(v) + 4 for k, v in self.headers.items())
        if head > limits.max_header_bytes:
            self._refuse(431, f"request headers exceed max_header_bytes={limits.max_header_bytes}")
            return None
        lengths = self.headers.get_all("Content-Length") or []
        encoding = self.headers.get("Transfer-Encoding")
        if len(lengths) > 1:
            self._refuse(400, "bad Content-Length: the header is given more than once")
            return None
        if encoding is not None:
            if lengths:
                self._refuse(400, "Content-Length and Transfer-Encoding together are not allowed")
            else:
                self._refuse(411, "chunked request bodies are not supported; send Content-Length")
            return None
        if not lengths:
            return b""
        text = lengths[0].strip()
        if not _DIGITS.fullmatch(text):
            self._refuse(400, f"bad Content-Length: {text[:40]!r} is not a non-negative decimal number")
            return None
        n = int(text)
        if n > limits.max_request_bytes:
            self._reject_large(n)
            return None
        body = self.rfile.read(n)
        if len(body) < n:
            self.close_connection = True  # the client closed mid-body: nothing to answer
            return None
        return body

    def _reject_large(self, n: int) -> None:
        limits = self.server.limits
        # A body up to twice the limit is read and dropped (in chunks, under the deadline) so the client
        # sees the 413 on a connection it may keep; beyond that nothing more is read and it closes.
        if n <= 2 * limits.max_request_bytes:
            left = n
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
            if left:
                self.close_connection = True
        else:
            self.close_connection = True
        self._send(
            *error_body(
                413, f"request body of {n} bytes exceeds max_request_bytes={limits.max_request_bytes}"
            )
        )

    def _send(self, status: int, payload: bytes, ctype: str) -> None:
        self.connection.settimeout(self.server.limits.write_timeout_s)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")  # headers and body in one write
        self._headers_buffer.append(payload)
        self.flush_headers()


class JsonHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with an app callable, :class:`Limits` and in-flight tracking."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.max_request_bytes = limits.max_request_bytes
        self.stopping = False
        self._inflight = 0
        self._connections = 0
        self._cond = threading.Condition()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._cond:
            full = self._connections >= self.limits.max_connections
            if not full:
                self._connections += 1
        if full:  # answered from the accepting thread, without a thread of its own
            try:
                request.settimeout(1.0)
                request.sendall(
                    error_response(
                        503, f"too many connections (max_connections={self.limits.max_connections})"
                    )
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._closed_connection()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed_connection()

    def _closed_connection(self) -> None:
        with self._cond:
            self._connections -= 1

    @property
    def connections(self) -> int:
        return self._connections

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
    """Runs a :class:`JsonHTTPServer` in a thread; ``port`` is the bound port (0 picks a free one).

    ``limits`` default to :class:`Limits` with ``max_request_bytes``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        app: App,
        max_request_bytes: int,
        name: str = "http",
        limits: Limits | None = None,
    ) -> None:
        if limits is None:
            limits = Limits(max_request_bytes=max_request_bytes)
        self.httpd = JsonHTTPServer((host, port), app, limits)
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
