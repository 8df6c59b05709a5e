"""The local model server against TF Serving's API: real REST (plain HTTP) and gRPC (official stubs).

Cases follow TF Serving's api_rest.md and its http_rest_api_handler tests: row and columnar predict,
/versions/N and /labels/L, status and metadata JSON, the {"error": ...} shape and status codes.
One server (two models, three versions) is shared by the module; ports are picked by the OS (port 0).
"""

from __future__ import annotations

import base64

import grpc
import numpy as np
import pytest
import requests

from freshrec.config import load_settings
from freshrec.model.repository import ModelRepository
from freshrec.serving.demo import publish_demo_version

pytestmark = [pytest.mark.integration]

INSTANCE = {"user_id": "u1", "item_id": "i7", "user_age": 31, "item_ctr_total": 0.25}
INSTANCE2 = {"user_id": "u2", "item_id": "i8", "user_age": 45, "item_ctr_total": 0.75}
MAX_BATCH = 50
MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from freshrec.serving.server import ModelServer

    settings = load_settings(
        workdir=tmp_path_factory.mktemp("serving"),
        serving={"max_batch_size": MAX_BATCH, "max_request_bytes": MAX_BYTES, "poll_interval_s": 0.5},
    )
    md = settings.models_dir
    assert publish_demo_version(md, "ctr", bias=0.0) == 1
    assert publish_demo_version(md, "ctr", bias=2.0) == 2
    ctr = ModelRepository(md, "ctr")
    ctr.set_label("stable", 1)
    ctr.set_label("canary", 2)
    multi = ModelRepository(md, "multi")
    assert publish_demo_version(md, "multi", with_logit=True) == 1
    multi.set_label("stable", 1)
    srv = ModelServer(settings, rest_port=0, grpc_port=0).start()
    yield srv
    srv.stop()


def expected(server, name: str, version: int, rows: list[dict]) -> dict[str, np.ndarray]:
    """The limit: the same SavedModel called in-process with the same inputs."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(ModelRepository(server.manager.models_dir, name).path(version))).signatures[
        "serving_default"
    ]
    out = fn(
        user_id=tf.constant([r["user_id"] for r in rows]),
        item_id=tf.constant([r["item_id"] for r in rows]),
        user_age=tf.constant([r["user_age"] for r in rows], tf.int64),
        item_ctr_total=tf.constant([r["item_ctr_total"] for r in rows], tf.float32),
    )
    return {k: v.numpy() for k, v in out.items()}


def post(server, path: str, body) -> requests.Response:
    return requests.post(server.rest_url + path, json=body, timeout=10)


# --------------------------------------------------------------------------- REST predict
def test_rest_row_format_matches_in_process_model(server):
    r = post(server, "/v1/models/ctr:predict", {"instances": [INSTANCE, INSTANCE2]})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert list(body) == ["predictions"]
    want = expected(server, "ctr", 2, [INSTANCE, INSTANCE2])["probability"]  # latest = 2
    assert np.array(body["predictions"]).shape == (2, 1)
    np.testing.assert_allclose(body["predictions"], want, rtol=1e-6)


def test_rest_columnar_format_gives_outputs(server):
    cols = {k: [INSTANCE[k], INSTANCE2[k]] for k in INSTANCE}
    r = post(
        server, "/v1/models/ctr/versions/1:predict", {"signature_name": "serving_default", "inputs": cols}
    )
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["outputs"]
    np.testing.assert_allclose(
        body["outputs"], expected(server, "ctr", 1, [INSTANCE, INSTANCE2])["probability"], rtol=1e-6
    )


def test_rest_versions_and_labels_select_the_model(server):
    v1 = post(server, "/v1/models/ctr/versions/1:predict", {"instances": [INSTANCE]}).json()["predictions"]
    v2 = post(server, "/v1/models/ctr/versions/2:predict", {"instances": [INSTANCE]}).json()["predictions"]
    assert v1 != v2
    assert (
        post(server, "/v1/models/ctr/labels/stable:predict", {"instances": [INSTANCE]}).json()["predictions"]
        == v1
    )
    assert (
        post(server, "/v1/models/ctr/labels/canary:predict", {"instances": [INSTANCE]}).json()["predictions"]
        == v2
    )


def test_rest_multiple_outputs_are_objects_in_rows_and_named_in_columns(server):
    rows = post(server, "/v1/models/multi:predict", {"instances": [INSTANCE, INSTANCE2]}).json()[
        "predictions"
    ]
    assert [set(p) for p in rows] == [{"probability", "logit"}] * 2
    want = expected(server, "multi", 1, [INSTANCE, INSTANCE2])
    np.testing.assert_allclose([p["logit"] for p in rows], want["logit"], rtol=1e-5)
    cols = {k: [INSTANCE[k], INSTANCE2[k]] for k in INSTANCE}
    outputs = post(server, "/v1/models/multi:predict", {"inputs": cols}).json()["outputs"]
    assert set(outputs) == {"probability", "logit"}
    np.testing.assert_allclose(outputs["probability"], want["probability"], rtol=1e-6)


def test_rest_b64_string_values(server):
    inst = dict(INSTANCE, user_id={"b64": base64.b64encode(b"u1").decode()})
    got = post(server, "/v1/models/ctr:predict", {"instances": [inst]}).json()["predictions"]
    assert got == post(server, "/v1/models/ctr:predict", {"instances": [INSTANCE]}).json()["predictions"]


# --------------------------------------------------------------------------- REST status / metadata
def test_rest_model_status(server):
    r = requests.get(server.rest_url + "/v1/models/ctr", timeout=10)
    assert r.status_code == 200
    ok = {"error_code": "OK", "error_message": ""}
    assert r.json() == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": ok},
            {"version": "1", "state": "AVAILABLE", "status": ok},
        ]
    }
    one = {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]}
    assert requests.get(server.rest_url + "/v1/models/ctr/versions/1", timeout=10).json() == one
    assert requests.get(server.rest_url + "/v1/models/ctr/labels/stable", timeout=10).json() == one


def test_rest_metadata_shows_signature_def_as_tf_serving(server):
    r = requests.get(server.rest_url + "/v1/models/ctr/labels/stable/metadata", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["model_spec"] == {"name": "ctr", "signature_name": "", "version": "1"}
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["user_id"]["dtype"] == "DT_STRING"
    assert sig["inputs"]["user_age"]["dtype"] == "DT_INT64"
    assert sig["inputs"]["item_ctr_total"]["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}],
        "unknown_rank": False,
    }
    assert sig["outputs"]["probability"]["dtype"] == "DT_FLOAT"
    latest = requests.get(server.rest_url + "/v1/models/ctr/metadata", timeout=10).json()
    assert latest["model_spec"]["version"] == "2"


# --------------------------------------------------------------------------- REST errors
@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/models/foo:predict", {"instances": [1]}, 404, "Servable not found"),
        ("/v1/models/ctr/versions/99:predict", {"instances": [INSTANCE]}, 404, "Servable not found"),
        (
            "/v1/models/ctr/labels/nope:predict",
            {"instances": [INSTANCE]},
            400,
            "Unrecognized servable version label",
        ),
        ("/v1/models/ctr:predict", "", 400, "JSON Parse error"),
        (
            "/v1/models/ctr:predict",
            {"instances": [dict(INSTANCE, user_age="x")]},
            400,
            "not of expected type",
        ),
        ("/v1/models/ctr:predict", {"instances": [{"user_id": "u"}]}, 400, "missing named inputs"),
        (
            "/v1/models/ctr:predict",
            {"instances": [INSTANCE], "inputs": {}},
            400,
            "only one of 'inputs' or 'instances'",
        ),
        (
            "/v1/models/ctr:predict",
            {"signature_name": 100, "instances": [INSTANCE]},
            400,
            "'signature_name' key must be a string",
        ),
        (
            "/v1/models/ctr:predict",
            {"signature_name": "nope", "instances": [INSTANCE]},
            400,
            "not found in signature def",
        ),
        ("/v1/models/ctr:predict", {"foo": 1}, 400, "Missing 'inputs' or 'instances' key"),
        ("/v1/models/ctr:predict", {"instances": [INSTANCE] * (MAX_BATCH + 1)}, 400, "max_batch_size"),
        ("/v1/models/ctr/version/1:predict", {"instances": [INSTANCE]}, 400, "Malformed request"),
    ],
)
def test_rest_errors_have_tf_serving_shape_and_code(server, path, body, status, message):
    if body == "":
        r = requests.post(server.rest_url + path, data=b"", timeout=10)
    else:
        r = post(server, path, body)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"]
    assert message in r.json()["error"]


def test_rest_status_errors(server):
    assert requests.get(server.rest_url + "/v1/models/foo", timeout=10).status_code == 404
    assert requests.get(server.rest_url + "/v1/models/ctr/versions/7", timeout=10).status_code == 404
    r = requests.get(server.rest_url + "/v1/models/ctr/labels/nope", timeout=10)
    assert r.status_code == 400 and "Unrecognized servable version label" in r.json()["error"]
    assert requests.get(server.rest_url + "/v1/models/ctr:predict", timeout=10).status_code == 400


def test_rest_request_too_large_is_413(server):
    big = {"instances": [dict(INSTANCE, user_id="u" * (MAX_BYTES + 10))]}
    r = post(server, "/v1/models/ctr:predict", big)
    assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]
    assert (
        post(server, "/v1/models/ctr:predict", {"instances": [INSTANCE]}).status_code == 200
    )  # still serving


def test_prometheus_metrics(server):
    from prometheus_client.parser import text_string_to_metric_families

    post(server, "/v1/models/ctr/versions/1:predict", {"instances": [INSTANCE]})
    r = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=10)
    assert r.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    counts = families[":tensorflow:serving:request_count"].samples
    ok_v1 = [
        s
        for s in counts
        if s.labels["model_name"] == "ctr"
        and s.labels["version"] == "1"
        and s.labels["API"] == "predict"
        and s.labels["status"] == "OK"
    ]
    assert ok_v1 and ok_v1[0].value >= 1
    assert any(s.labels["status"] == "NOT_FOUND" for s in counts)
    lat = [s for s in families[":tensorflow:serving:request_latency"].samples if s.name.endswith("_count")]
    assert sum(s.value for s in lat) >= 1
    loaded = {
        (s.labels["model_name"], s.labels["version"])
        for s in families[":tensorflow:serving:loaded_versions"].samples
    }
    assert loaded == {("ctr", "1"), ("ctr", "2"), ("multi", "1")}


# --------------------------------------------------------------------------- gRPC
@pytest.fixture(scope="module")
def stubs(server):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(server.grpc_target)
    yield (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )
    channel.close()


def predict_request(
    rows: list[dict], name: str = "ctr", version: int | None = None, label: str | None = None
):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    dtypes = {"user_id": tf.string, "item_id": tf.string, "user_age": tf.int64, "item_ctr_total": tf.float32}
    for key, dtype in dtypes.items():
        req.inputs[key].CopyFrom(tf.make_tensor_proto([r[key] for r in rows], dtype=dtype))
    return req


def test_grpc_predict_by_label_version_and_latest(server, stubs):
    import tensorflow as tf

    predict, _ = stubs
    rows = [INSTANCE, INSTANCE2]
    for kwargs, version in (({"label": "stable"}, 1), ({"version": 2}, 2), ({}, 2), ({"label": "canary"}, 2)):
        resp = predict.Predict(predict_request(rows, **kwargs), timeout=10)
        assert resp.model_spec.name == "ctr" and resp.model_spec.version.value == version
        assert resp.model_spec.signature_name == "serving_default"
        got = tf.make_ndarray(resp.outputs["probability"])
        np.testing.assert_allclose(got, expected(server, "ctr", version, rows)["probability"], rtol=1e-6)


def test_grpc_output_filter(stubs):
    predict, _ = stubs
    req = predict_request([INSTANCE], name="multi")
    req.output_filter.append("logit")
    assert list(predict.Predict(req, timeout=10).outputs) == ["logit"]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"name": "foo"}, grpc.StatusCode.NOT_FOUND),
        ({"version": 99}, grpc.StatusCode.NOT_FOUND),
        ({"label": "nope"}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_grpc_errors(stubs, kwargs, code):
    predict, _ = stubs
    with pytest.raises(grpc.RpcError) as err:
        predict.Predict(predict_request([INSTANCE], **kwargs), timeout=10)
    assert err.value.code() == code


def test_grpc_bad_inputs_and_bounds(stubs):
    import tensorflow as tf

    predict, _ = stubs
    req = predict_request([INSTANCE])
    del req.inputs["user_age"]
    with pytest.raises(grpc.RpcError) as err:
        predict.Predict(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_age" in err.value.details()
    req = predict_request([INSTANCE] * (MAX_BATCH + 1))
    with pytest.raises(grpc.RpcError) as err:
        predict.Predict(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_batch_size" in err.value.details()
    req = predict_request([INSTANCE])
    req.inputs["user_id"].CopyFrom(tf.make_tensor_proto(["u" * (MAX_BYTES + 10)]))
    with pytest.raises(grpc.RpcError) as err:
        predict.Predict(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grpc_metadata_and_status(stubs):
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

    predict, models = stubs
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "ctr"
    req.model_spec.version_label = "stable"
    req.metadata_field.append("signature_def")
    resp = predict.GetModelMetadata(req, timeout=10)
    assert resp.model_spec.version.value == 1
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sig_map)
    assert set(sig_map.signature_def["serving_default"].inputs) == set(INSTANCE)

    sreq = get_model_status_pb2.GetModelStatusRequest()
    sreq.model_spec.name = "ctr"
    status = models.GetModelStatus(sreq, timeout=10)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
    ]
    sreq.model_spec.name = "foo"
    with pytest.raises(grpc.RpcError) as err:
        models.GetModelStatus(sreq, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
