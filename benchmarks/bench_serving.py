"""Serving benchmarks: the local model server (REST, gRPC) against the SavedModel called in-process,
a hot swap under load, and the ranking gateway (1 user x 100 items, real Feast online store).

The model server and the gateway run as separate processes (``freshrec serve``,
``freshrec serving gateway``), as in production; clients run here, on loopback, with a bounded number
of requests. The model is the demo CTR SavedModel (``freshrec.serving.demo``: two hashed ids + two
numeric features), a batch is one ranking request of 100 rows. The in-process call — the signature's
concrete function on prebuilt tensors, same thread count — is the limit the servers are measured against.

Run: ``nice -n 10 .venv/bin/python -m benchmarks.bench_serving [--quick]``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.results import Row

BATCH = 100
CONCURRENCY = (1, 8, 32)
MODEL = "demo ctr"


# The same JSON work (parse 100 instances, answer 100 predictions) behind two HTTP stacks, to choose one.
_ECHO_SERVER = """
import json, sys, threading

def work(body):
    req = json.loads(body)
    return json.dumps({"predictions": [[0.5]] * len(req["instances"])}).encode()

kind, port = sys.argv[1], int(sys.argv[2])
if kind == "stdlib":
    from freshrec.serving.httpbase import HttpService

    def app(method, path, body):
        return (200, b"{}", "application/json") if method == "GET" else (200, work(body), "application/json")

    HttpService("127.0.0.1", port, app, 1 << 22).start()
    threading.Event().wait()
else:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response
    from starlette.routing import Route

    async def predict(request):  # the model call blocks, so it runs in the thread pool as it would for real
        return Response(await run_in_threadpool(work, await request.body()), media_type="application/json")

    async def ready(request):
        return Response(b"{}", media_type="application/json")

    app = Starlette(routes=[Route("/v1/models/ctr:predict", predict, methods=["POST"]), Route("/ready", ready)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def _http_stack_rows(total: int) -> list[Row]:
    """Threaded http.server (what the model server uses) against uvicorn + starlette, same work."""
    cols = _rows(BATCH)
    body = json.dumps({"instances": [{k: cols[k][i] for k in cols} for i in range(BATCH)]}).encode()
    results: dict[tuple[str, int], tuple[np.ndarray, float]] = {}
    for kind in ("stdlib", "uvicorn"):
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-c", _ECHO_SERVER, kind, str(port)], stdout=subprocess.DEVNULL
        )
        try:
            _wait_http(port, "/ready", timeout_s=60, proc=proc)
            for c in (1, 8):
                call = _Rest(port, "/v1/models/ctr:predict", body)
                _load(call, c, 40)
                lat, wall, _ = _load(call, c, total)
                results[(kind, c)] = (lat, wall)
        finally:
            _stop(proc)
    rows = []
    for c in (1, 8):
        (lat, wall), (ulat, uwall) = results[("stdlib", c)], results[("uvicorn", c)]
        cond = f"JSON parse of {BATCH} instances + small answer, no model, c={c}; baseline = uvicorn 0.54 + starlette 1.10"
        rows += [
            Row(
                f"serving/http stack stdlib p50 (c={c})",
                _ms(np.percentile(lat, 50)),
                _ms(np.percentile(ulat, 50)),
                conditions=cond,
                unit="ms",
            ),
            Row(
                f"serving/http stack stdlib throughput (c={c})",
                len(lat) / wall,
                len(ulat) / uwall,
                conditions=cond,
                unit="req/s",
            ),
        ]
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(n: int) -> dict[str, list]:
    rng = np.random.default_rng(0)
    return {
        "user_id": ["user-1"] * n,
        "item_id": [f"item-{i}" for i in range(n)],
        "user_age": [31] * n,
        "item_ctr_total": rng.random(n).round(4).tolist(),
    }


def _load(call: Callable[[], object], concurrency: int, total: int) -> tuple[np.ndarray, float, int]:
    """Run ``total`` calls over ``concurrency`` threads; (latencies s, wall s, failures)."""
    per = max(1, total // concurrency)
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    failures = [0] * concurrency

    def worker(k: int) -> None:
        for _ in range(per):
            t0 = time.perf_counter()
            try:
                call()
            except Exception:
                failures[k] += 1
            lat[k].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return np.concatenate([np.array(x) for x in lat]), wall, sum(failures)


class _Rest:
    """A keep-alive HTTP client per thread (http.client: the least client overhead)."""

    def __init__(self, port: int, path: str, body: bytes) -> None:
        self.port, self.path, self.body = port, path, body
        self.local = threading.local()

    def __call__(self) -> bytes:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", self.path, self.body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status} {data[:200]!r}")
        return data


def _wait_http(port: int, path: str, timeout_s: float = 240.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"nothing answered 200 on :{port}{path} in {timeout_s} s")


def _spawn(args: list[str], workdir: Path, env_extra: dict[str, str]) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env_extra)
    exe = Path(sys.executable).with_name("freshrec")
    return subprocess.Popen(
        [str(exe), "--workdir", str(workdir), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ms(x: float) -> float:
    return float(x) * 1000


def run(quick: bool, gateway_only: bool = False) -> list[Row]:
    """Every serving row (``gateway_only``: the gateway's rows only, which skips the model-server runs)."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from freshrec.config import load_settings
    from freshrec.model.repository import ModelRepository
    from freshrec.serving.demo import publish_demo_version

    total = 200 if quick else 800
    rows: list[Row] = [] if gateway_only else _http_stack_rows(total)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    settings = load_settings(workdir=tmp / "work", serving={"poll_interval_s": 0.2})
    md = settings.models_dir
    publish_demo_version(md, bias=0.0)
    repo = ModelRepository(md, "ctr")
    repo.set_label("stable", 1)
    rest_port, grpc_port = _free_port(), _free_port()
    server = _spawn(
        ["serve", "--rest-port", str(rest_port), "--grpc-port", str(grpc_port)],
        settings.workdir,
        {"FRESHREC_SERVING__POLL_INTERVAL_S": "0.2"},
    )
    try:
        # the limit: the same signature in this process, on prebuilt tensors
        cols = _rows(BATCH)
        fn = tf.saved_model.load(str(repo.path(1))).signatures["serving_default"]
        tensors = {
            "user_id": tf.constant(cols["user_id"]),
            "item_id": tf.constant(cols["item_id"]),
            "user_age": tf.constant(cols["user_age"], tf.int64),
            "item_ctr_total": tf.constant(cols["item_ctr_total"], tf.float32),
        }
        fn(**tensors)
        _wait_http(rest_port, "/v1/models/ctr", proc=server)

        body = json.dumps({"instances": [{k: cols[k][i] for k in cols} for i in range(BATCH)]}).encode()
        rest = _Rest(rest_port, "/v1/models/ctr:predict", body)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "ctr"
        for key, t in tensors.items():
            req.inputs[key].CopyFrom(tf.make_tensor_proto(t.numpy()))

        def grpc_call() -> object:
            return stub.Predict(req, timeout=30)

        for call in (rest, grpc_call):  # warm connections
            for _ in range(20):
                call()
        if gateway_only:
            rows += _gateway_rows(settings, md, rest_port, grpc_port, stub, quick)
            channel.close()
            return rows

        steady: dict[tuple[str, int], np.ndarray] = {}
        for c in CONCURRENCY:
            base_lat, base_wall, _ = _load(lambda: fn(**tensors), c, total)
            for api, call in (("rest", rest), ("grpc", grpc_call)):
                lat, wall, failed = _load(call, c, total)
                steady[(api, c)] = lat
                cond = f"{MODEL}, batch {BATCH}, c={c}, {len(lat)} requests, loopback; baseline = in-process call"
                rows += [
                    Row(
                        f"serving/{api} predict p50 (c={c})",
                        _ms(np.percentile(lat, 50)),
                        _ms(np.percentile(base_lat, 50)),
                        conditions=cond,
                        unit="ms",
                    ),
                    Row(
                        f"serving/{api} predict p99 (c={c})",
                        _ms(np.percentile(lat, 99)),
                        _ms(np.percentile(base_lat, 99)),
                        conditions=cond,
                        unit="ms",
                    ),
                    Row(
                        f"serving/{api} predict throughput (c={c})",
                        len(lat) / wall,
                        len(base_lat) / base_wall,
                        conditions=cond + f", {failed} failed",
                        unit="req/s",
                    ),
                ]

        # hot swap under load: REST and gRPC clients at c=8 while version 2 is published and swapped in
        swap_lat: list[float] = []
        failures = [0]
        stop = threading.Event()
        served_v2 = threading.Event()

        def hammer(call: Callable[[], object]) -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    out = call()
                    if hasattr(out, "model_spec") and out.model_spec.version.value == 2:
                        served_v2.set()
                except Exception:
                    failures[0] += 1
                swap_lat.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=hammer, args=(rest if k % 2 else grpc_call,)) for k in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        swap_start = time.perf_counter()
        publish_demo_version(md, bias=1.0)
        served_v2.wait(timeout=120)
        swap_s = time.perf_counter() - swap_start
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        ref = np.concatenate([steady[("rest", 8)], steady[("grpc", 8)]])
        cond = f"{MODEL}, batch {BATCH}, 4 REST + 4 gRPC clients, {len(swap_lat)} requests; v2 served {swap_s:.1f} s after publish; baseline = steady c=8 p99"
        rows += [
            Row(
                "serving/hot swap p99 under load (c=8)",
                _ms(np.percentile(swap_lat, 99)),
                _ms(np.percentile(ref, 99)),
                conditions=cond,
                unit="ms",
            ),
            Row("serving/hot swap failed requests", failures[0], conditions=cond + "; must be 0"),
        ]

        # gateway: 1 user x 100 items through the real Feast online store (SQLite) and gRPC to the server
        rows += _gateway_rows(settings, md, rest_port, grpc_port, stub, quick)
        channel.close()
    finally:
        _stop(server)
    return rows


# The gateway before its move to starlette/uvicorn (main at the start of that work): the baseline of the
# c=8 rows, run from `git archive` of this commit with the same virtual environment.
BASELINE_GATEWAY_REF = "4cb30c9"


def _baseline_gateway_src() -> Path | None:
    """``src/`` of :data:`BASELINE_GATEWAY_REF` in a temp folder, or None outside a git checkout."""
    repo = Path(__file__).resolve().parents[1]
    out = Path(tempfile.mkdtemp(prefix="bench-gateway-baseline-"))
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", BASELINE_GATEWAY_REF, "src"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        print(f"no baseline gateway: git archive {BASELINE_GATEWAY_REF} failed: {archive.stderr[:200]!r}")
        return None
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out / "src"


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def _gateway_rows(settings, md: Path, rest_port: int, grpc_port: int, stub, quick: bool) -> list[Row]:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from freshrec.data.prepare import prepare_dataset
    from freshrec.data.synthetic import generate
    from freshrec.features import store
    from freshrec.serving.demo import publish_demo_version

    ds = generate(seed=11, n_users=200, n_items=300, n_events=5000, days=30.0)
    prepare_dataset(ds, settings)
    store.apply(settings)
    store.materialize(settings)
    online = store.OnlineFeatures(settings)
    # a model on the online store's columns (ids + user and item activity), published as the next version
    inputs = {
        "user_id": "string",
        "item_id": "string",
        "user_events_total": "float32",
        "item_ctr_total": "float32",
    }
    version = publish_demo_version(md, bias=0.5, inputs=inputs)
    _wait_http(rest_port, f"/v1/models/ctr/versions/{version}")
    user = str(ds.events["user_id"].iloc[-1])
    items = [str(i) for i in ds.events["item_id"].drop_duplicates().iloc[:100]]
    n1 = 150 if quick else 500  # c=1 requests per round
    n8 = 400 if quick else 1600  # c=8 requests per round
    rounds = 2

    lookup_lat = [0.0] * n1
    for i in range(n1):
        t0 = time.perf_counter()
        frame = online.lookup(user, items, as_of=datetime.now(UTC))  # as the gateway asks
        lookup_lat[i] = time.perf_counter() - t0
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "ctr"
    req.model_spec.version.value = version
    for key in inputs:
        req.inputs[key].CopyFrom(tf.make_tensor_proto(frame[key].to_numpy()))

    # both gateways run side by side and are measured in alternating rounds, so both see the same load
    old_src = _baseline_gateway_src()
    target = f"127.0.0.1:{grpc_port}"
    port, admin_port = _free_port(), _free_port()
    procs = {
        "new": _spawn(
            [
                "serving",
                "gateway",
                "--port",
                str(port),
                "--admin-port",
                str(admin_port),
                "--model-server",
                target,
            ],
            settings.workdir,
            {},
        )
    }
    ports = {"new": (port, admin_port)}
    if old_src is not None:
        old_port = _free_port()
        procs["old"] = _spawn(
            ["serving", "gateway", "--port", str(old_port), "--model-server", target],
            settings.workdir,
            {"PYTHONPATH": str(old_src)},
        )
        ports["old"] = (old_port, old_port)  # the old gateway served its admin API on the ranking port
    body = json.dumps({"user_id": user, "item_ids": items}).encode()
    lat1: dict[str, list[np.ndarray]] = {k: [] for k in procs}
    lat8: dict[str, list[np.ndarray]] = {k: [] for k in procs}
    wall8: dict[str, float] = dict.fromkeys(procs, 0.0)
    cpu: dict[str, float] = dict.fromkeys(procs, 0.0)
    failed: dict[str, int] = dict.fromkeys(procs, 0)
    load_before = _loadavg()
    predict_lat: list[np.ndarray] = []
    try:
        for kind, proc in procs.items():
            rank_port, adm = ports[kind]
            _wait_http(rank_port, "/healthz", proc=proc)
            admin = http.client.HTTPConnection("127.0.0.1", adm, timeout=30)
            admin.request("PUT", "/v1/admin/canary", json.dumps({"version": version, "weight": 100}))
            assert admin.getresponse().status == 200
        for _ in range(rounds):
            predict_lat.append(_load(lambda: stub.Predict(req, timeout=30), 1, n1)[0])
            for kind, proc in procs.items():
                rank = _Rest(ports[kind][0], "/v1/rank", body)
                _load(rank, 8, 80)  # warm: connections, the signature cache, the first model calls
                cpu_before = _cpu_seconds(proc.pid)
                lat, _, bad = _load(rank, 1, n1)
                cpu[kind] += _cpu_seconds(proc.pid) - cpu_before
                lat1[kind].append(lat)
                lat, wall, bad8 = _load(_Rest(ports[kind][0], "/v1/rank", body), 8, n8)
                lat8[kind].append(lat)
                wall8[kind] += wall
                failed[kind] += bad + bad8
    finally:
        for proc in procs.values():
            _stop(proc)
    load = f"load avg {load_before} → {_loadavg()} on {os.cpu_count()} cores"
    one = {k: np.concatenate(v) for k, v in lat1.items()}
    eight = {k: np.concatenate(v) for k, v in lat8.items()}
    predict = np.concatenate(predict_lat)
    cond = (
        f"1 user x {len(items)} items, {rounds * n1} requests: Feast online lookup (SQLite) + gRPC Predict ({MODEL} "
        f"on ids + activity features) + sort + prediction log; gateway and model server in separate processes; {load}"
    )
    old_note = (
        f"baseline = the threaded http.server gateway of {BASELINE_GATEWAY_REF}, same run, alternating rounds"
    )
    rows = [
        Row(
            "serving/gateway rank p50 (1x100)",
            _ms(np.percentile(one["new"], 50)),
            _ms(np.percentile(predict, 50)),
            conditions=cond + "; c=1; baseline = gRPC Predict alone",
            unit="ms",
        ),
        Row(
            "serving/gateway rank p99 (1x100)",
            _ms(np.percentile(one["new"], 99)),
            25.0,
            conditions=cond + f"; c=1; baseline = the 25 ms target; {failed['new']} failed",
            unit="ms",
        ),
        Row(
            "serving/gateway CPU per rank (1x100)",
            _ms(cpu["new"] / (rounds * n1)),
            _ms(cpu["old"] / (rounds * n1)) if "old" in cpu else None,
            conditions=cond + "; c=1; the gateway process's user + system CPU time over the requests / "
            "requests; " + (old_note if "old" in cpu else "no baseline (not a git checkout)"),
            unit="ms",
        ),
        Row(
            "serving/feast online lookup p50 (1x100)",
            _ms(np.percentile(lookup_lat, 50)),
            _ms(np.percentile(one["new"], 50)),
            conditions="OnlineFeatures.lookup in-process, SQLite, as_of now; baseline = gateway p50",
            unit="ms",
        ),
        Row(
            "serving/feast online lookup p99 (1x100)",
            _ms(np.percentile(lookup_lat, 99)),
            _ms(np.percentile(one["new"], 99)),
            conditions="OnlineFeatures.lookup in-process, SQLite, as_of now; baseline = gateway p99",
            unit="ms",
        ),
    ]
    if "old" in procs:
        cond8 = cond.replace(f"{rounds * n1} requests", f"{rounds * n8} requests, 8 keep-alive clients")
        rows += [
            Row(
                "serving/gateway rank p99 (1x100, c=8)",
                _ms(np.percentile(eight["new"], 99)),
                _ms(np.percentile(eight["old"], 99)),
                conditions=cond8 + f"; {old_note}; {failed['new']} / {failed['old']} failed",
                unit="ms",
            ),
            Row(
                "serving/gateway rank throughput (1x100, c=8)",
                len(eight["new"]) / wall8["new"],
                len(eight["old"]) / wall8["old"],
                conditions=cond8 + f"; {old_note}; starlette 1.10 on uvicorn 0.54 (httptools, uvloop)",
                unit="req/s",
            ),
            Row(
                "serving/gateway rank p50 (1x100, c=1, old stack)",
                _ms(np.percentile(one["old"], 50)),
                _ms(np.percentile(one["new"], 50)),
                conditions=cond
                + f"; c=1; the {BASELINE_GATEWAY_REF} gateway; baseline = the new gateway p50",
                unit="ms",
            ),
        ]
    return rows


def _main() -> None:
    """``python -m benchmarks.bench_serving [--quick] [--no-write] [--only gateway]``."""
    import argparse

    from benchmarks.results import print_rows, write_rows

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave results.md alone")
    parser.add_argument("--only", choices=["all", "gateway"], default="all", help="gateway: its rows only")
    args = parser.parse_args()
    rows = run(args.quick, gateway_only=args.only == "gateway")
    print_rows(rows)
    if not args.no_write:
        write_rows(rows)


if __name__ == "__main__":
    _main()
