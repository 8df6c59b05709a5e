"""The ranking gateway over real HTTP, calling a real model server over gRPC.

Most tests inject an in-memory feature lookup (the gateway's ``lookup=`` parameter) to control the
features; ``test_gateway_with_real_feast_online_store`` uses the real Feast online store
(``OnlineFeatures``) after apply + materialize of a small synthetic dataset.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import requests

from freshrec.config import load_settings
from freshrec.model.repository import ModelRepository
from freshrec.serving.demo import publish_demo_version
from freshrec.serving.gateway import arm_for
from freshrec.serving.predlog import join_clicks, read_predictions

pytestmark = [pytest.mark.integration]

ITEMS = [f"item-{i}" for i in range(20)]


def lookup(user_id: str, item_ids: list[str], as_of=None) -> pd.DataFrame:
    """In-memory features: item_ctr_total grows with the item number, so the ranking is predictable."""
    n = len(item_ids)
    return pd.DataFrame(
        {
            "user_id": [user_id] * n,
            "item_id": item_ids,
            "user_age": np.full(n, 30, dtype=np.int64),
            "item_ctr_total": np.array([int(i.split("-")[1]) for i in item_ids], dtype=np.float32) * 5,
        }
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from freshrec.serving.gateway import Gateway
    from freshrec.serving.server import ModelServer

    settings = load_settings(
        workdir=tmp_path_factory.mktemp("gateway"), serving={"max_batch_size": 200, "poll_interval_s": 0.2}
    )
    md = settings.models_dir
    assert publish_demo_version(md, bias=0.0) == 1
    assert publish_demo_version(md, bias=3.0) == 2
    ModelRepository(md, "ctr").set_label("stable", 1)
    server = ModelServer(settings, rest_port=0, grpc_port=0).start()
    gateway = Gateway(settings, lookup=lookup, port=0, model_target=server.grpc_target).start()
    yield settings, server, gateway
    gateway.stop()
    server.stop()


def rank(gateway, user: str, items=ITEMS, **extra) -> requests.Response:
    return requests.post(
        gateway.url + "/v1/rank", json={"user_id": user, "item_ids": items, **extra}, timeout=10
    )


def set_canary(gateway, version, weight) -> requests.Response:
    return requests.put(
        gateway.admin_url + "/v1/admin/canary", json={"version": version, "weight": weight}, timeout=10
    )


def test_rank_orders_by_score_from_the_stable_version(stack):
    _, _, gateway = stack
    assert set_canary(gateway, None, 0).status_code == 200
    r = rank(gateway, "alice", request_id="req-1")
    assert r.status_code == 200
    body = r.json()
    assert body["request_id"] == "req-1" and body["model_version"] == 1 and body["arm"] == "stable"
    scores = [x["score"] for x in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert sorted(x["item_id"] for x in body["items"]) == sorted(ITEMS)
    assert all(0 < s < 1 for s in scores)


@pytest.mark.parametrize("weight", [0, 100, 50])
def test_sticky_split_by_weight(stack, weight):
    _, _, gateway = stack
    assert set_canary(gateway, 2, weight).json() == {"version": 2, "weight": weight}
    users = [f"user-{i}" for i in range(40)]
    arms = {}
    for u in users:
        body = rank(gateway, u, ITEMS[:5]).json()
        arms[u] = body["arm"]
        assert body["model_version"] == (2 if body["arm"] == "canary" else 1)
    assert arms == {u: arm_for(u, weight) for u in users}
    if weight == 0:
        assert set(arms.values()) == {"stable"}
    elif weight == 100:
        assert set(arms.values()) == {"canary"}
    else:
        assert set(arms.values()) == {"stable", "canary"}
        again = {u: rank(gateway, u, ITEMS[:5]).json()["arm"] for u in users}
        assert again == arms  # sticky per user


def test_stats_per_arm(stack):
    _, _, gateway = stack
    set_canary(gateway, 2, 50)
    assert requests.delete(gateway.admin_url + "/v1/admin/stats", timeout=10).status_code == 200
    for i in range(30):
        rank(gateway, f"stats-{i}", ITEMS[:10])
    stats = requests.get(gateway.admin_url + "/v1/admin/stats", timeout=10).json()
    assert set(stats) == {"stable", "canary"}
    assert stats["stable"]["requests"] + stats["canary"]["requests"] == 30
    for arm, version in (("stable", 1), ("canary", 2)):
        s = stats[arm]
        assert s["errors"] == 0 and s["model_version"] == version
        assert 0 < s["latency_p50_ms"] <= s["latency_p99_ms"]
        assert 0 < s["score_mean"] < 1
    assert stats["canary"]["score_mean"] > stats["stable"]["score_mean"]  # bias 3 vs 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"item_ids": ["a"]}, "user_id"),
        ({"user_id": "", "item_ids": ["a"]}, "user_id"),
        ({"user_id": "u"}, "item_ids"),
        ({"user_id": "u", "item_ids": []}, "empty"),
        ({"user_id": "u", "item_ids": [f"i{i}" for i in range(201)]}, "too many items"),
        ({"user_id": "u", "item_ids": ["a", 3]}, "item_ids[1]"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_rank_requests_are_400(stack, body, message):
    _, _, gateway = stack
    r = requests.post(gateway.url + "/v1/rank", json=body, timeout=10)
    assert r.status_code == 400 and message in r.json()["error"]


def test_admin_validation(stack):
    _, _, gateway = stack
    assert set_canary(gateway, 2, 101).status_code == 400
    assert set_canary(gateway, None, 10).status_code == 400
    assert set_canary(gateway, "two", 10).status_code == 400
    assert set_canary(gateway, 2, 20).status_code == 200
    assert requests.get(gateway.admin_url + "/v1/admin/canary", timeout=10).json() == {
        "version": 2,
        "weight": 20,
    }


def test_canary_on_missing_version_counts_errors_and_answers_502(stack):
    _, _, gateway = stack
    set_canary(gateway, 99, 100)
    requests.delete(gateway.admin_url + "/v1/admin/stats", timeout=10)
    r = rank(gateway, "bob", ITEMS[:3])
    assert r.status_code == 502 and "NOT_FOUND" in r.json()["error"]
    assert requests.get(gateway.admin_url + "/v1/admin/stats", timeout=10).json()["canary"]["errors"] == 1
    set_canary(gateway, None, 0)


def test_prediction_log_and_join_with_clicks(stack):
    settings, _, gateway = stack
    set_canary(gateway, 2, 50)
    bodies = [rank(gateway, f"log-{i}", ITEMS[:4], request_id=f"log-req-{i}").json() for i in range(6)]
    gateway.predlog.flush()
    frame = read_predictions(settings.predictions_dir)
    mine = frame[frame["request_id"].str.startswith("log-req-")]
    assert len(mine) == 6 * 4
    for body in bodies:
        rows = mine[mine["request_id"] == body["request_id"]]
        assert set(rows["arm"]) == {body["arm"]} and set(rows["model_version"]) == {body["model_version"]}
        logged = dict(zip(rows["item_id"], rows["score"], strict=True))
        for item in body["items"]:
            assert logged[item["item_id"]] == pytest.approx(item["score"])
    # clicks arrive after serving: one click, one non-click, the rest unlabelled
    first = mine[mine["request_id"] == "log-req-0"].iloc[0]
    second = mine[mine["request_id"] == "log-req-1"].iloc[0]
    events = pd.DataFrame(
        {
            "user_id": [first["user_id"], second["user_id"]],
            "item_id": [first["item_id"], second["item_id"]],
            "event_timestamp": [first["served_at"] + pd.Timedelta(seconds=5)] * 2,
            "label": [1, 0],
        }
    )
    joined = join_clicks(mine, events, window_s=60)
    labels = joined.set_index(["request_id", "item_id"])["label"]
    assert labels[("log-req-0", first["item_id"])] == 1
    assert labels[("log-req-1", second["item_id"])] == 0
    assert joined["label"].isna().sum() == len(mine) - 2
    set_canary(gateway, None, 0)


@pytest.mark.slow
def test_gateway_with_real_feast_online_store(settings):
    """Features from the real Feast online store (SQLite), scores from the real model server."""
    from freshrec.data.prepare import prepare_dataset
    from freshrec.data.synthetic import generate
    from freshrec.features import store
    from freshrec.serving.gateway import Gateway
    from freshrec.serving.server import ModelServer

    ds = generate(seed=5, n_users=30, n_items=25, n_events=800, days=20.0)
    prepare_dataset(ds, settings)
    store.apply(settings)
    store.materialize(settings)
    online = store.OnlineFeatures(settings)
    inputs = {
        "user_id": "string",
        "item_id": "string",
        "user_events_total": "float32",
        "item_ctr_total": "float32",
    }
    assert set(inputs) <= set(online.columns)
    publish_demo_version(settings.models_dir, inputs=inputs)
    user = str(ds.events["user_id"].iloc[-1])
    items = [str(i) for i in ds.events["item_id"].drop_duplicates().iloc[:15]] + ["never-seen-item"]
    with (
        ModelServer(settings, rest_port=0, grpc_port=0) as server,
        Gateway(settings, port=0, model_target=server.grpc_target) as gateway,
    ):
        start = time.perf_counter()
        r = rank(gateway, user, items)
        assert r.status_code == 200, r.text
        assert time.perf_counter() - start < 30
        body = r.json()
        assert body["model_version"] == 1 and len(body["items"]) == len(items)
        # the gateway's scores are the model's scores on the online store's features
        feats = online.lookup(user, items)
        direct = requests.post(
            server.rest_url + "/v1/models/ctr:predict",
            json={"inputs": {k: feats[k].tolist() for k in inputs}},
            timeout=10,
        ).json()["outputs"]
        want = dict(zip(items, np.ravel(direct), strict=True))
        for item in body["items"]:
            assert item["score"] == pytest.approx(want[item["item_id"]], rel=1e-5)
