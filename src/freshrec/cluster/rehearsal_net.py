"""The rehearsal's cluster network: a network namespace per pod on a bridge, and a proxy per Service.

Layout (iproute2, as root): one "cluster" network namespace holds a bridge (the node's pod network) and
the Service addresses; each pod gets its own namespace with ``eth0`` (a veth pair onto the bridge), a pod
IP and a default route to the bridge. So two pods can both listen on :8501, a pod reaches another only
through its IP or a Service, and nothing in a pod can reach this machine's own ports (other engineers'
servers) or the internet. A Service is a TCP proxy in the cluster namespace on its ClusterIP and each
port, forwarding to ``targetPort`` (a number, or a container port *name* of the selected pod) of the pods
its selector matches **that are ready**; with none, the connection is refused as kube-proxy refuses it.
Services the rehearsal backs with something of this machine (the local Redis and PostgreSQL) forward
there instead. Names resolve through an ``/etc/hosts`` written per pod: ``svc.ns.svc.cluster.local``,
``svc.ns.svc``, ``svc.ns`` for every Service, and the short ``svc`` only for the pod's own namespace (as
the pod's DNS search path would); other names do not resolve.

Every proxied connection is recorded (Service, port, client pod, backend) for the report.

Namespaces are named ``fr<run id>-...`` and removed by :meth:`Network.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import itertools
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
CLUSTER_DOMAIN = "cluster.local"
# (ip, port) backends of one Service port at the moment of a connection; "host" backends live on this machine.
Endpoints = Callable[[], list[tuple[str, int, str]]]  # (address, port, "pod name" | "host:<what>")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def setns(netns_path: str) -> None:
    """Move the calling thread into a network namespace (threads it starts afterwards inherit it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns_path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns_path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _setns_fd(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(host network namespace): {os.strerror(err)}")


@dataclass
class PodNet:
    """A pod's network: its namespace and address."""

    name: str
    netns: str
    ip: str

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"


@dataclass
class Connection:
    service: str
    port: int
    client: str
    backend: str
    at: float
    ok: bool
    detail: str = ""


@dataclass
class _Listener:
    service: str
    port: int
    endpoints: Endpoints
    server: Any = None
    rr: itertools.count = field(default_factory=itertools.count)


class Network:
    """See the module docstring."""

    def __init__(
        self, run_id: str, pod_cidr: str = "10.244.0.0/16", service_cidr: str = "10.96.0.0/16"
    ) -> None:
        self.run_id = run_id
        self.cluster_ns = f"fr{run_id}-c"
        self.pod_net = ipaddress.ip_network(pod_cidr)
        self.service_net = ipaddress.ip_network(service_cidr)
        self.gateway = str(self.pod_net.network_address + 1)
        self._next_pod = 2
        self._next_svc = 10
        self.pods: dict[str, PodNet] = {}
        self.by_ip: dict[str, str] = {}
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._listeners: dict[tuple[str, int], _Listener] = {}
        # "host:<what>" -> coroutine(client_r, client_w, upstream_r, upstream_w) run before piping:
        # how the shared local Redis/PostgreSQL are given to this rehearsal alone (see isolate_*).
        self.preludes: dict[str, Callable[..., Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        # Sockets to this machine's own services must be made in its network namespace: by this pool,
        # whose threads are created now, before anything moves into the cluster namespace.
        # ThreadPoolExecutor starts its workers lazily, from the thread that submits (the event loop's, in the
        # cluster namespace), and a new thread inherits its creator's namespace: each worker first moves back
        # into this machine's namespace (kept open here) — else 127.0.0.1:6379 is the cluster's loopback, and
        # the connection is refused.
        self._host_netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self.host_pool = ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="host-net", initializer=_setns_fd, initargs=(self._host_netns,)
        )
        self.host_pool.submit(lambda: None).result()
        self._created: list[str] = []
        _ip("netns", "add", self.cluster_ns)
        self._created.append(self.cluster_ns)
        ex = ["netns", "exec", self.cluster_ns, "ip"]
        _ip(*ex[3:]) if False else None
        for args in (
            ["link", "set", "lo", "up"],
            ["link", "add", "br0", "type", "bridge"],
            ["addr", "add", f"{self.gateway}/{self.pod_net.prefixlen}", "dev", "br0"],
            ["link", "set", "br0", "up"],
        ):
            _ip("netns", "exec", self.cluster_ns, "ip", *args)
        self._start_loop()

    # --- namespaces --------------------------------------------------------------------------------
    @property
    def cluster_netns_path(self) -> str:
        return f"/run/netns/{self.cluster_ns}"

    def enter_cluster(self) -> None:
        """Move the calling thread into the cluster namespace (to reach Service and pod addresses)."""
        setns(self.cluster_netns_path)

    def add_pod(self, name: str) -> PodNet:
        with self._lock:
            n = self._next_pod
            self._next_pod += 1
        ip = str(self.pod_net.network_address + n)
        netns = f"fr{self.run_id}-p{n}"
        host_if, pod_if = f"v{self.run_id[:6]}{n}", "eth0"
        _ip("netns", "add", netns)
        self._created.append(netns)
        _ip(
            "link",
            "add",
            host_if,
            "netns",
            self.cluster_ns,
            "type",
            "veth",
            "peer",
            "name",
            pod_if,
            "netns",
            netns,
        )
        _ip("netns", "exec", self.cluster_ns, "ip", "link", "set", host_if, "master", "br0", "up")
        for args in (
            ["addr", "add", f"{ip}/{self.pod_net.prefixlen}", "dev", pod_if],
            ["link", "set", pod_if, "up"],
            ["link", "set", "lo", "up"],
            ["route", "add", "default", "via", self.gateway],
        ):
            _ip("netns", "exec", netns, "ip", *args)
        pod = PodNet(name, netns, ip)
        with self._lock:
            self.pods[name] = pod
            self.by_ip[ip] = name
        return pod

    def remove_pod(self, name: str) -> None:
        pod = self.pods.pop(name, None)
        if pod is not None:
            _ip("netns", "del", pod.netns, check=False)
            self.by_ip.pop(pod.ip, None)

    def service_ip(self) -> str:
        with self._lock:
            ip = str(self.service_net.network_address + self._next_svc)
            self._next_svc += 1
        _ip("netns", "exec", self.cluster_ns, "ip", "addr", "add", f"{ip}/32", "dev", "lo")
        return ip

    def reserve_service_ip(self, offset: int) -> str:
        """A fixed Service address (``kubernetes`` is ``.1``)."""
        ip = str(self.service_net.network_address + offset)
        _ip("netns", "exec", self.cluster_ns, "ip", "addr", "add", f"{ip}/32", "dev", "lo")
        return ip

    def in_cluster_thread(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in a fresh thread inside the cluster namespace and return its result."""
        out: Future[Any] = Future()

        def run() -> None:
            try:
                self.enter_cluster()
                out.set_result(fn())
            except BaseException as exc:
                out.set_exception(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return out.result()

    # --- services ----------------------------------------------------------------------------------
    def _start_loop(self) -> None:
        ready = threading.Event()

        def run() -> None:
            self.enter_cluster()
            self._loop = asyncio.new_event_loop()
            ready.set()
            self._loop.run_forever()

        self._loop_thread = threading.Thread(target=run, name="service-proxies", daemon=True)
        self._loop_thread.start()
        ready.wait()

    def expose(self, service: str, ip: str, port: int, endpoints: Endpoints) -> None:
        """Proxy ``ip:port`` (in the cluster namespace) to whatever ``endpoints()`` returns per connection."""
        listener = _Listener(service, port, endpoints)
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self._serve(listener, ip, port), self._loop)
        fut.result(timeout=10)
        self._listeners[(ip, port)] = listener

    async def _serve(self, listener: _Listener, ip: str, port: int) -> None:
        listener.server = await asyncio.start_server(
            lambda r, w: self._proxy(listener, r, w), host=ip, port=port, reuse_address=True
        )

    async def _proxy(
        self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        client = self.by_ip.get(peer[0], peer[0]) if peer else "?"
        backends = listener.endpoints()
        record = Connection(listener.service, listener.port, client, "", time.time(), False)
        if not backends:
            record.detail = "no ready endpoints"
            self.connections.append(record)
            writer.close()
            return
        addr, port, who = backends[next(listener.rr) % len(backends)]
        record.backend = f"{who} {addr}:{port}"
        try:
            if who.startswith("host:"):
                loop = asyncio.get_running_loop()
                sock = await loop.run_in_executor(self.host_pool, _connect, addr, port)
                up_r, up_w = await asyncio.open_connection(sock=sock)
                prelude = self.preludes.get(who)
                if prelude is not None:
                    await prelude(reader, writer, up_r, up_w)
            else:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(addr, port), timeout=5)
        except (TimeoutError, OSError, EOFError) as exc:
            record.detail = f"backend refused: {type(exc).__name__}: {exc}"
            self.connections.append(record)
            writer.close()
            return
        record.ok = True
        self.connections.append(record)
        await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer), return_exceptions=True)

    def connections_to(self, service: str) -> list[Connection]:
        return [c for c in self.connections if c.service == service]

    # --- teardown ----------------------------------------------------------------------------------
    def close(self) -> None:
        if self._loop is not None:
            for listener in self._listeners.values():
                if listener.server is not None:
                    self._loop.call_soon_threadsafe(listener.server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
        for name in reversed(self._created):
            _ip("netns", "del", name, check=False)
        self._created.clear()
        self.host_pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):
            os.close(self._host_netns)


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=5)
    sock.settimeout(None)
    sock.setblocking(False)
    return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(RuntimeError):
            writer.close()


def hosts_file(
    path: Path, pod_name: str, pod_ip: str, namespace: str, services: list[tuple[str, str, list[str]]]
) -> Path:
    """Write a pod's ``/etc/hosts``: ``services`` are (name, namespace, addresses)."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", f"{pod_ip}\t{pod_name}"]
    for name, ns, addresses in services:
        names = [f"{name}.{ns}.svc.{CLUSTER_DOMAIN}", f"{name}.{ns}.svc", f"{name}.{ns}"]
        if ns == namespace:
            names.append(name)
        for addr in addresses:
            lines.append(f"{addr}\t{' '.join(names)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def resolv_conf(path: Path, namespace: str) -> Path:
    """A resolver that answers nothing beyond /etc/hosts, at once (nothing listens on the nameserver)."""
    path.write_text(
        f"nameserver 127.0.0.53\nsearch {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
        "options ndots:5 timeout:1 attempts:1\n"
    )
    return path


def redis_select(db: int) -> Callable[..., Any]:
    """A prelude that puts every proxied Redis connection on logical database ``db``.

    The workloads keep their rendered connection strings; their keys and streams land in a database of
    their own on the shared local Redis (other engineers' tests use database 0), flushed afterwards.
    """

    async def prelude(_cr: Any, _cw: Any, up_r: asyncio.StreamReader, up_w: asyncio.StreamWriter) -> None:
        up_w.write(f"*2\r\n$6\r\nSELECT\r\n${len(str(db))}\r\n{db}\r\n".encode())
        await up_w.drain()
        reply = await up_r.readline()
        if not reply.startswith(b"+OK"):
            raise OSError(f"redis SELECT {db} failed: {reply!r}")

    return prelude


def postgres_database(database: str) -> Callable[..., Any]:
    """A prelude that sends every proxied PostgreSQL session to ``database`` (created per rehearsal).

    It reads the client's first message(s): an ``SSLRequest`` is refused (``N``, as a server without TLS
    does), then the ``StartupMessage``'s ``database`` parameter is replaced before it goes upstream.
    """
    import struct

    async def prelude(
        client: asyncio.StreamReader, client_w: asyncio.StreamWriter, _up_r: Any, up_w: asyncio.StreamWriter
    ) -> None:
        while True:
            length, code = struct.unpack("!II", await client.readexactly(8))
            body = await client.readexactly(length - 8)
            if code in (80877103, 80877104):  # SSLRequest / GSSENCRequest: "no", then the real startup
                client_w.write(b"N")
                await client_w.drain()
                continue
            break
        parts = body.rstrip(b"\0").split(b"\0")
        params = dict(zip(parts[0::2], parts[1::2], strict=False))
        params[b"database"] = database.encode()
        out = b"".join(k + b"\0" + v + b"\0" for k, v in params.items()) + b"\0"
        up_w.write(struct.pack("!II", len(out) + 8, code) + out)
        await up_w.drain()

    return prelude
