"""The model server while the repository changes under load: hot swap, corrupt versions, label moves.

Client threads call REST and gRPC predict for the whole test; every answer must be a 200/OK.
"""

from __future__ import annotations

import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import requests

from freshrec.config import load_settings
from freshrec.model.repository import ModelRepository
from freshrec.serving.demo import publish_demo_version

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INSTANCE = {"user_id": "u1", "item_id": "i7", "user_age": 31, "item_ctr_total": 0.25}


def wait_until(check, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


class Load:
    """Client threads (REST + gRPC) counting failures until stopped."""

    def __init__(self, server, threads: int = 2) -> None:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        self.server = server
        self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "ctr"
        for key, value in INSTANCE.items():
            dtype = {str: tf.string, int: tf.int64, float: tf.float32}[type(value)]
            req.inputs[key].CopyFrom(tf.make_tensor_proto([value], dtype=dtype))
        self.grpc_request = req
        self.channel = grpc.insecure_channel(server.grpc_target)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.threads = [threading.Thread(target=self._rest) for _ in range(threads - 1)]
        self.threads.append(threading.Thread(target=self._grpc))

    def _count(self, ok: bool, what: str) -> None:
        with self.lock:
            if ok:
                self.ok += 1
            else:
                self.failures.append(what)

    def _rest(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            try:
                r = session.post(
                    self.server.rest_url + "/v1/models/ctr:predict",
                    json={"instances": [INSTANCE]},
                    timeout=10,
                )
                self._count(r.status_code == 200, f"REST {r.status_code} {r.text[:200]}")
            except requests.RequestException as exc:
                self._count(False, f"REST {exc}")
            time.sleep(0.002)  # leave CPU to the loader on a small machine

    def _grpc(self) -> None:
        while not self.stop.is_set():
            try:
                self.stub.Predict(self.grpc_request, timeout=10)
                self._count(True, "")
            except grpc.RpcError as exc:
                self._count(False, f"gRPC {exc.code()} {exc.details()}")
            time.sleep(0.002)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=20)
        self.channel.close()


def rest_prediction(server, path: str = "/v1/models/ctr:predict") -> float:
    r = requests.post(server.rest_url + path, json={"instances": [INSTANCE]}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0][0]


def status(server) -> dict[str, tuple[str, str]]:
    body = requests.get(server.rest_url + "/v1/models/ctr", timeout=10).json()
    return {s["version"]: (s["state"], s["status"]["error_message"]) for s in body["model_version_status"]}


def test_hot_swap_corrupt_version_and_label_moves_under_load(tmp_path):
    import tensorflow  # noqa: F401 - imported before the clock starts, for the timing print below

    from freshrec.serving.server import ModelServer

    t0 = time.monotonic()
    settings = load_settings(workdir=tmp_path / "work", serving={"poll_interval_s": 0.1})
    md = settings.models_dir
    repo = ModelRepository(md, "ctr")
    assert publish_demo_version(md, bias=0.0) == 1
    repo.set_label("stable", 1)
    server = ModelServer(settings, rest_port=0, grpc_port=0).start()
    try:
        p1 = rest_prediction(server)
        with Load(server) as load:
            time.sleep(0.3)
            # a new version is loaded, warmed up and swapped in; latest requests move to it
            assert publish_demo_version(md, bias=2.0) == 2
            wait_until(lambda: rest_prediction(server) != p1)
            p2 = rest_prediction(server)
            assert rest_prediction(server, "/v1/models/ctr/versions/2:predict") == p2
            assert rest_prediction(server, "/v1/models/ctr/labels/stable:predict") == p1  # the label holds

            # a corrupt version (complete by the repository's rules, unloadable) is never served
            bad = tmp_path / "bad"
            shutil.copytree(repo.path(2), bad)
            (bad / "saved_model.pb").write_bytes(b"not a saved model")
            assert repo.publish(bad, {"corrupt": True}) == 3
            wait_until(lambda: "3" in status(server))
            state, message = status(server)["3"]
            assert state == "END" and message
            assert rest_prediction(server) == p2  # the previous version keeps serving
            r = requests.post(
                server.rest_url + "/v1/models/ctr/versions/3:predict",
                json={"instances": [INSTANCE]},
                timeout=10,
            )
            assert r.status_code == 404

            # label changes in models.config are picked up; a label to the corrupt version is refused
            repo.set_label("canary", 2)
            wait_until(
                lambda: (
                    requests.post(
                        server.rest_url + "/v1/models/ctr/labels/canary:predict",
                        json={"instances": [INSTANCE]},
                        timeout=10,
                    ).status_code
                    == 200
                )
            )
            assert rest_prediction(server, "/v1/models/ctr/labels/canary:predict") == p2
            repo.set_label("stable", 2)
            wait_until(lambda: rest_prediction(server, "/v1/models/ctr/labels/stable:predict") == p2)
            repo.set_label("canary", 3)
            time.sleep(0.5)
            assert rest_prediction(server, "/v1/models/ctr/labels/canary:predict") == p2

            # version 1 is no longer latest nor labelled: unloaded
            wait_until(lambda: "1" not in status(server))
            time.sleep(0.3)
        print(f"{load.ok} requests, {len(load.failures)} failures in {time.monotonic() - t0:.1f} s")
        assert load.failures == [], load.failures[:5]
        assert load.ok > 20
    finally:
        server.stop()
    # stopped: nothing listens any more
    with pytest.raises(requests.ConnectionError):
        requests.get(server.rest_url + "/v1/models/ctr", timeout=2)


def test_server_starts_empty_and_picks_up_first_version(tmp_path):
    from freshrec.serving.server import ModelServer

    settings = load_settings(workdir=tmp_path / "work", serving={"poll_interval_s": 0.1})
    with ModelServer(settings, rest_port=0, grpc_port=0) as server:
        r = requests.get(server.rest_url + "/v1/models/ctr", timeout=5)
        assert r.status_code == 404 and "error" in r.json()
        publish_demo_version(settings.models_dir, bias=1.0)
        wait_until(lambda: requests.get(server.rest_url + "/v1/models/ctr", timeout=5).status_code == 200)
        assert np.isfinite(rest_prediction(server))
