"""``explain: true`` on ``/v1/rank``: the gateway over real HTTP, the real model server over gRPC."""

from __future__ import annotations

import pytest
import requests

from freshrec.config import load_settings
from freshrec.serving.demo import publish_demo_version
from tests.integration.test_gateway import ITEMS, lookup

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from freshrec.serving.gateway import Gateway
    from freshrec.serving.server import ModelServer

    settings = load_settings(
        workdir=tmp_path_factory.mktemp("gateway-explain"),
        serving={"max_batch_size": 200, "poll_interval_s": 0.2},
    )
    assert publish_demo_version(settings.models_dir, bias=0.0) == 1
    server = ModelServer(settings, rest_port=0, grpc_port=0).start()
    gw = Gateway(settings, lookup=lookup, port=0, model_target=server.grpc_target).start()
    yield gw
    gw.stop()
    server.stop()


def rank(gw, **extra) -> requests.Response:
    body = {"user_id": "alice", "item_ids": ITEMS, **extra}
    return requests.post(gw.url + "/v1/rank", json=body, timeout=10)


def test_explain_is_off_by_default(gateway):
    r = rank(gateway)
    assert r.status_code == 200, r.text
    assert all("explanation" not in item for item in r.json()["items"])
    r = rank(gateway, explain=False)
    assert all("explanation" not in item for item in r.json()["items"])


def test_explain_true_gives_the_top_items_their_top_features(gateway):
    from freshrec.serving.gateway import EXPLAIN_FEATURES, EXPLAIN_ITEMS

    plain = rank(gateway).json()["items"]
    r = rank(gateway, explain=True)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    # Same ranking and scores; only the top EXPLAIN_ITEMS carry an explanation (bounded cost).
    assert [(i["item_id"], i["score"]) for i in items] == [(i["item_id"], i["score"]) for i in plain]
    explained = [i for i in items if "explanation" in i]
    assert explained == items[:EXPLAIN_ITEMS]
    inputs = {"user_id", "item_id", "user_age", "item_ctr_total"}
    for item in explained:
        feats = item["explanation"]
        assert 0 < len(feats) <= EXPLAIN_FEATURES and {f["feature"] for f in feats} <= inputs
        mags = [abs(f["contribution"]) for f in feats]
        assert mags == sorted(mags, reverse=True)
    # Each contribution is the served score minus the model's score with that input missing ("" / 0):
    # checked against the SavedModel itself, outside the gateway.
    import numpy as np
    import tensorflow as tf

    from freshrec.serving.demo import DEMO_INPUTS

    fn = tf.saved_model.load(str(gateway.settings.models_dir / "ctr" / "1")).signatures["serving_default"]
    top = items[0]
    row = lookup("alice", [top["item_id"]])
    for f in top["explanation"]:
        occluded = row.copy()
        occluded[f["feature"]] = "" if DEMO_INPUTS[f["feature"]] == "string" else 0
        both = {
            c: tf.constant(
                np.concatenate([row[c].to_numpy(), occluded[c].to_numpy()]).astype(
                    object if t == "string" else t
                )
            )
            for c, t in DEMO_INPUTS.items()
        }
        scores = fn(**both)["probability"].numpy().reshape(-1)
        assert np.isclose(top["score"], scores[0], atol=1e-5)
        assert np.isclose(f["contribution"], scores[0] - scores[1], atol=1e-5), f


@pytest.mark.parametrize("value", ["yes", 1, None, {"items": 3}, [True]])
def test_bad_explain_values_are_400(gateway, value):
    r = rank(gateway, explain=value)
    assert r.status_code == 400 and "explain must be true or false" in r.text
