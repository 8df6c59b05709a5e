"""The service mesh's data plane for Gateway API routes attached to a Service (GAMMA), in a rehearsal.

A ``GRPCRoute`` or ``HTTPRoute`` whose ``parentRefs`` name a Service (``group: ""``, ``kind: Service``)
tells the mesh to split the traffic *sent to that Service* between the route's ``backendRefs`` by weight,
per request — what Argo Rollouts' Gateway API plugin adjusts during a canary. In the rehearsal this
process (``python -m freshrec.cluster.rehearsal_mesh CONFIG.json``, started inside the cluster network
namespace) listens on such a Service's ClusterIP and ports: gRPC calls (any method, unary, bytes passed
through) and HTTP/1.1 requests are sent to an endpoint of a backend chosen by weight, one choice per call.
The rehearsal rewrites the routes file (backends, weights, ready endpoints) as they change; each call is
logged as a JSON line (listener, backend Service, endpoint, method, status) for the report.
"""

from __future__ import annotations

import http.client
import json
import random
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class Routes:
    """The routes file, re-read when it changes: ``{"ip:port": [{"service", "weight", "endpoints"}]}``."""

    def __init__(self, path: Path, log_path: Path) -> None:
        self.path = path
        self.log_path = log_path
        self._mtime = 0.0
        self._routes: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def pick(self, listener: str) -> tuple[str, str] | None:
        """(backend Service, endpoint) for one request to ``listener``, by weight; None when none is ready."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            mtime = 0.0
        with self._lock:
            if mtime != self._mtime:
                self._routes = json.loads(self.path.read_text()) if mtime else {}
                self._mtime = mtime
            backends = [b for b in self._routes.get(listener, []) if b["weight"] > 0 and b["endpoints"]]
        if not backends:
            return None
        chosen = random.choices(backends, weights=[b["weight"] for b in backends])[0]
        return chosen["service"], random.choice(chosen["endpoints"])

    def record(self, **fields: Any) -> None:
        with self._lock, self.log_path.open("a") as f:
            f.write(json.dumps({"at": time.time(), **fields}) + "\n")


def serve_grpc(listener: str, routes: Routes) -> Any:
    import grpc

    channels: dict[str, Any] = {}
    lock = threading.Lock()

    def channel(endpoint: str) -> Any:
        with lock:
            if endpoint not in channels:
                channels[endpoint] = grpc.insecure_channel(
                    endpoint, options=[("grpc.max_receive_message_length", 64 << 20)]
                )
            return channels[endpoint]

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            method = details.method

            def unary(request: bytes, context: Any) -> bytes:
                choice = routes.pick(listener)
                if choice is None:
                    routes.record(listener=listener, method=method, backend=None, status="UNAVAILABLE")
                    context.abort(grpc.StatusCode.UNAVAILABLE, f"no ready backend behind {listener}")
                service, endpoint = choice
                call = channel(endpoint).unary_unary(
                    method, request_serializer=None, response_deserializer=None
                )
                metadata = [(k, v) for k, v in context.invocation_metadata() if not k.startswith(":")]
                try:
                    out = call(request, timeout=context.time_remaining(), metadata=metadata)
                except grpc.RpcError as exc:
                    routes.record(
                        listener=listener,
                        method=method,
                        backend=service,
                        endpoint=endpoint,
                        status=exc.code().name,
                    )
                    context.abort(exc.code(), exc.details() or "")
                routes.record(
                    listener=listener, method=method, backend=service, endpoint=endpoint, status="OK"
                )
                return out

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=None, response_serializer=None
            )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[Handler()])
    server.add_insecure_port(listener)
    server.start()
    return server


def serve_http(listener: str, routes: Routes) -> Any:
    host, port = listener.rsplit(":", 1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            choice = routes.pick(listener)
            if choice is None:
                routes.record(listener=listener, method=self.path, backend=None, status=503)
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            service, endpoint = choice
            h, p = endpoint.rsplit(":", 1)
            conn = http.client.HTTPConnection(h, int(p), timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            routes.record(
                listener=listener,
                method=f"{self.command} {self.path}",
                backend=service,
                endpoint=endpoint,
                status=resp.status,
            )
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _forward

    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[1]).read_text())
    routes = Routes(Path(config["routes_file"]), Path(config["log_file"]))
    servers = []
    for listener in config["listeners"]:
        address = f"{listener['ip']}:{listener['port']}"
        servers.append((serve_grpc if listener["protocol"] == "grpc" else serve_http)(address, routes))
    Path(config["ready_file"]).write_text("ready\n")
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
