"""ASGI apps on uvicorn, run in a background thread, with the limits a public listener needs.

uvicorn (httptools parser) already refuses malformed requests with 400, among them every bad
``Content-Length`` (non-digit, negative, duplicate, overflowing, or beside ``Transfer-Encoding``).
What it lacks, and :class:`_LimitedHttp` adds on its request-reading path:

- a **total deadline** to read one request, headers and body (``request_timeout_s``): uvicorn only
  times out idle keep-alive connections, so a client sending one header line every 20 s would hold its
  connection forever. The deadline starts with the request's first byte (with the connection for the
  first request) and ends when the body is complete; past it the client gets 408 and the connection closes;
- a **cap on header bytes** (``max_header_bytes``, 431) — httptools has none;
- a **cap on the body** (``max_request_bytes``, 413) checked on the declared length before any body
  byte is read, and while a chunked body streams in, so nothing past the limit is ever buffered;
- a **cap on connections** (``max_connections``): a connection beyond it gets 503 and is closed at once,
  so a flood of idle sockets cannot pile up (uvicorn's ``limit_concurrency`` answers only after a full
  request arrives).

Error bodies are JSON ``{"error": ...}`` like the apps' own. Several listeners (the gateway's ranking
and admin ports) share one event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from freshrec.serving.httpbase import Limits, error_response

log = logging.getLogger(__name__)


class _Reject(Exception):
    """Raised from a parser callback: answer ``status`` with ``message`` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _LimitedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request deadline and size/connection caps (see the module doc)."""

    limits: Limits = Limits()  # set per listener by a subclass (see :func:`_protocol_for`)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._body_bytes = 0
        self._rejected = False

    # --- connection ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._reject(503, f"too many connections (max_connections={self.limits.max_connections})")
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.request_timeout_s, self._on_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        self._reject(
            408, f"the request was not received within request_timeout_s={self.limits.request_timeout_s:g}"
        )

    def _reject(self, status: int, message: str) -> None:
        if self._rejected or self.transport.is_closing():
            return
        self._rejected = True
        log.info("refused a request from %s: %d %s", self.client, status, message)
        if self.cycle is not None and not self.cycle.response_complete:
            # the app may be waiting for the rest of the body: it sees a disconnect and answers nothing
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.write(error_response(status, message))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:  # uvicorn's answer to a parser error, as JSON
        self._reject(400, msg)

    # --- reading ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        self._arm()  # the first byte of a request starts its deadline (no-op while one runs)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, cause.message)
            else:
                raise
        except httptools.HttpParserError as exc:
            self._reject(400, f"Invalid HTTP request received: {exc}")
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_header(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Reject(431, f"request headers exceed max_header_bytes={self.limits.max_header_bytes}")

    def on_headers_complete(self) -> None:
        length = next((int(v) for n, v in self.headers if n == b"content-length"), None)
        # (the parser has checked it is one plain non-negative number)
        if length is not None and length > self.limits.max_request_bytes:
            raise _Reject(
                413,
                f"request body of {length} bytes exceeds max_request_bytes={self.limits.max_request_bytes}",
            )
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.limits.max_request_bytes:
            raise _Reject(413, f"request body exceeds max_request_bytes={self.limits.max_request_bytes}")
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()  # the whole request is in: its time now belongs to the app
        super().on_message_complete()


def _protocol_for(limits: Limits) -> type[_LimitedHttp]:
    return type("LimitedHttp", (_LimitedHttp,), {"limits": limits})


@dataclass
class Listener:
    """One ASGI app on one address (port 0: a free port, known after :meth:`AsgiService.start`)."""

    name: str
    app: Any
    host: str
    port: int
    limits: Limits

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class AsgiService:
    """Serves one or more :class:`Listener` with uvicorn in a background thread (one event loop)."""

    def __init__(self, listeners: list[Listener], name: str = "asgi") -> None:
        self.listeners = listeners
        self.name = name
        self._servers: list[Any] = []
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, timeout_s: float = 30.0) -> AsgiService:
        """Bind every listener, start serving; returns when all accept connections.

        Raises:
            OSError: a port cannot be bound (nothing is left listening).
        """
        import uvicorn

        sockets = []
        try:
            for listener in self.listeners:
                sock = socket.socket(socket.AF_INET6 if ":" in listener.host else socket.AF_INET)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((listener.host, listener.port))
                listener.port = sock.getsockname()[1]
                sockets.append(sock)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        self._servers = [
            uvicorn.Server(
                uvicorn.Config(
                    listener.app,
                    http=_protocol_for(listener.limits),
                    lifespan="off",
                    log_config=None,
                    access_log=False,
                    server_header=False,
                    date_header=False,
                    timeout_keep_alive=int(max(1, listener.limits.idle_timeout_s)),
                    backlog=1024,
                )
            )
            for listener in self.listeners
        ]
        self._thread = threading.Thread(target=self._run, args=(sockets,), name=self.name, daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s) or self._error is not None:
            self.stop(0)
            raise OSError(f"{self.name}: the server did not start: {self._error!r}")
        return self

    def _run(self, sockets: list[socket.socket]) -> None:
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is in the lock; plain asyncio works too
            loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            tasks = [
                asyncio.ensure_future(server.serve(sockets=[sock]))
                for server, sock in zip(self._servers, sockets, strict=True)
            ]
            while not all(s.started for s in self._servers):
                if any(t.done() for t in tasks):
                    break
                await asyncio.sleep(0.01)
            self._started.set()
            await asyncio.gather(*tasks)

        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            self._error = exc
            log.exception("%s: the server loop failed", self.name)
        finally:
            self._started.set()
            loop.close()

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace_s``), close every listener."""
        for server in self._servers:
            server.config.timeout_graceful_shutdown = max(grace_s, 0.1)
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=grace_s + 10)
            if self._thread.is_alive():
                for server in self._servers:
                    server.force_exit = True
                self._thread.join(timeout=5)
            self._thread = None
