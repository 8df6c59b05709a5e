"""Warmup records and batching through the real export, the real server and TF Serving's protos.

Real: a freshrec model exported by ``export_model`` (Keras → SavedModel), the warmup file read back with
TensorFlow's TFRecord reader into ``tensorflow_serving.apis.prediction_log_pb2.PredictionLog`` — the
format and file the TF Serving binary replays — the local server started from ``tensorflow_model_server``
flags (in-process and as ``freshrec serve`` in a subprocess), predictions over gRPC with the official
client protos. Not here: the TF Serving binary itself (none runs on this machine).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from freshrec.config import ModelSettings, load_settings
from freshrec.model.builder import build_model
from freshrec.model.export import export_model, predict_saved_model
from freshrec.model.repository import ModelRepository
from freshrec.model.spec import FeatureSpec, frame_to_inputs
from freshrec.model.warmup import predict_logs, read_warmup_requests, warmup_path, write_warmup_requests
from tests.conftest import free_port
from tests.unit.model_frames import DESCRIPTION, tiny_frame

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A repository holding version 1 of a tiny real model, exported with warmup rows."""
    root = tmp_path_factory.mktemp("tfs")
    spec = FeatureSpec.for_description(DESCRIPTION, id_hash_buckets=64, frame=tiny_frame(200, seed=2))
    model = build_model(
        spec, ModelSettings(embedding_dim=4, id_hash_buckets=64, deep_units=[8], cross_layers=1)
    )
    sample = tiny_frame(40, seed=3)
    export = export_model(model, root / "export", spec, warmup=sample)
    repo = ModelRepository(root / "models", "ctr")
    version = repo.publish(export, {"test": True})
    return {"root": root, "repo": repo, "version": version, "spec": spec, "sample": sample}


def config_file(path: Path, base: Path, version: int | None = None) -> Path:
    policy = f"model_version_policy {{ specific {{ versions: {version} }} }}" if version else ""
    path.write_text(
        f'model_config_list {{ config {{ name: "ctr" base_path: "{base}" model_platform: "tensorflow" {policy} }} }}'
    )
    return path


def test_export_writes_prediction_logs_of_real_rows(exported):
    path = warmup_path(exported["repo"].path(exported["version"]))
    assert path == exported["repo"].path(exported["version"]) / "assets.extra" / "tf_serving_warmup_requests"
    logs = read_warmup_requests(path.parent.parent)
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log"] * 3
    spec, sample = exported["spec"], exported["sample"]
    want = frame_to_inputs(sample, spec)
    import tensorflow as tf

    sizes = []
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "ctr" and request.model_spec.signature_name == "serving_default"
        assert set(request.inputs) == set(spec.input_names)  # only what the signature takes
        first = tf.make_ndarray(request.inputs["user_gender"])
        sizes.append(len(first))
        rows = np.arange(len(first)) % len(sample)
        np.testing.assert_array_equal(first.astype(str), want["user_gender"][rows].astype(str))
    assert sizes == [1, 10, 100]


def test_server_replays_warmup_before_available_and_a_bad_record_fails_the_load(exported, tmp_path, caplog):
    from freshrec.serving.server import ModelServer
    from freshrec.serving.tfs_flags import parse_tfs_flags

    settings = load_settings(workdir=tmp_path / "work")
    repo = ModelRepository(tmp_path / "models", "ctr")
    good = repo.publish(exported["repo"].path(exported["version"]), {"copy": 1})
    conf = config_file(tmp_path / "models.config", repo.root)
    flags = parse_tfs_flags(
        [f"--model_config_file={conf}", "--port=0", "--rest_api_port=0", "--file_system_poll_wait_seconds=0"]
    )
    flags.port, flags.rest_api_port = free_port(), free_port()
    with caplog.at_level(logging.INFO, logger="freshrec.serving.loader"):
        server = ModelServer.from_tfs_flags(settings, flags).start()
    try:
        view = server.manager.view("ctr")
        assert sorted(view.servables) == [good] and view.servables[good].warmup_records == 3
        assert "warmed up ctr version" in caplog.text
        r = requests.get(f"http://127.0.0.1:{flags.rest_api_port}/v1/models/ctr", timeout=10)
        assert r.json()["model_version_status"][0]["state"] == "AVAILABLE"
        # TF Serving without --monitoring_config_file exports no metrics.
        r = requests.get(f"http://127.0.0.1:{flags.rest_api_port}/monitoring/prometheus/metrics", timeout=10)
        assert r.status_code == 400
    finally:
        server.stop()

    # A record asking for an input the signature lacks: the binary fails the load; so must we.
    bad_version = repo.publish(exported["repo"].path(exported["version"]), {"copy": 2})
    logs = predict_logs({"no_such_input": np.zeros(2, np.float32)}, "ctr")
    write_warmup_requests(repo.path(bad_version), logs)
    base = repo.path(bad_version).parent
    conf = config_file(tmp_path / "models2.config", base, version=bad_version)
    flags = parse_tfs_flags([f"--model_config_file={conf}", "--port=0", "--rest_api_port=0"])
    flags.port, flags.rest_api_port = free_port(), free_port()
    server = ModelServer.from_tfs_flags(settings, flags).start()
    try:
        view = server.manager.view("ctr")
        assert view.servables == {}  # `specific` is honoured exactly: version 1 is not loaded instead
        assert "warmup record 0" in view.failed[bad_version]
        assert "input names do not match" in view.failed[bad_version]
        r = requests.get(f"http://127.0.0.1:{flags.rest_api_port}/v1/models/ctr", timeout=10)
        assert r.json()["model_version_status"][0]["state"] == "END"
    finally:
        server.stop()
    # With --enable_model_warmup=false the same version loads (cold), as the binary would.
    flags = parse_tfs_flags(
        [f"--model_config_file={conf}", "--enable_model_warmup=false", "--rest_api_port=0"]
    )
    flags.port, flags.rest_api_port = free_port(), free_port()
    server = ModelServer.from_tfs_flags(settings, flags).start()
    try:
        assert server.manager.view("ctr").servables[bad_version].warmup_records == 0
    finally:
        server.stop()


def test_batched_grpc_predictions_equal_unbatched_ones(exported, tmp_path):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from freshrec.serving.server import ModelServer
    from freshrec.serving.tfs_flags import parse_tfs_flags

    settings = load_settings(workdir=tmp_path / "work")
    base = exported["repo"].path(exported["version"]).parent
    conf = config_file(tmp_path / "models.config", base)
    batching = tmp_path / "batching.config"
    batching.write_text(
        "max_batch_size { value: 128 } batch_timeout_micros { value: 30000 } "
        "num_batch_threads { value: 1 } allowed_batch_sizes: 16 allowed_batch_sizes: 128"
    )
    flags = parse_tfs_flags(
        [f"--model_config_file={conf}", "--enable_batching", f"--batching_parameters_file={batching}"]
    )
    flags.port = free_port()
    sample, spec = exported["sample"], exported["spec"]
    inputs = frame_to_inputs(sample, spec)
    want = np.ravel(predict_saved_model(exported["repo"].path(exported["version"]), sample))
    server = ModelServer.from_tfs_flags(settings, flags).start()
    try:
        assert server._http is None  # --rest_api_port defaults to 0: no REST API
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{flags.port}")
        )
        before = sum(q["batches"] for q in server.scheduler.stats().values())
        got: dict[int, np.ndarray] = {}

        def call(i: int) -> None:
            rows = slice(4 * i, 4 * i + 4)
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "ctr"
            for name, values in inputs.items():
                req.inputs[name].CopyFrom(tf.make_tensor_proto(values[rows]))
            got[i] = np.ravel(tf.make_ndarray(stub.Predict(req, timeout=30).outputs["probability"]))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        np.testing.assert_allclose(np.concatenate([got[i] for i in range(10)]), want, rtol=1e-5, atol=1e-6)
        stats = next(iter(server.scheduler.stats().values()))
        assert stats["batches"] - before < 10 and stats["padded_rows"] > 0  # merged, padded to 16/128
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "ctr"
        for name, values in inputs.items():
            req.inputs[name].CopyFrom(tf.make_tensor_proto(np.resize(values, 129)))
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(req, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "larger than maximum input batch size 128" in err.value.details()
    finally:
        server.stop()


def test_freshrec_serve_runs_the_rollout_args(exported, tmp_path):
    """``freshrec serve`` as a process with the flags the Rollout's tfserving container passes."""
    base = exported["repo"].path(exported["version"]).parent
    conf = config_file(tmp_path / "models.config", base)
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 128 } batch_timeout_micros { value: 1000 }")
    grpc_port, rest_port = free_port(), free_port()
    exe = Path(sys.executable).with_name("freshrec")
    args = [
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_config_file={conf}",
        "--model_config_file_poll_wait_seconds=0",
        f"--monitoring_config_file={monitoring}",
        "--allow_version_labels_for_unavailable_models=true",
        "--enable_model_warmup=true",
        "--enable_batching=true",
        f"--batching_parameters_file={batching}",
    ]
    bad = subprocess.run(
        [str(exe), "serve", *args, "--enable_batchin"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 1 and "unknown argument: --enable_batchin" in bad.stderr
    proc = subprocess.Popen(
        [str(exe), "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{rest_port}/v1/models/ctr", timeout=2)
                if r.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "freshrec serve did not come up"
            time.sleep(0.5)
        assert r.json()["model_version_status"][0]["state"] == "AVAILABLE"
        metrics = requests.get(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=5).text
        assert ":tensorflow:serving:request_count" in metrics
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    assert "batching on" in out and "warmed up ctr version" in out, out
