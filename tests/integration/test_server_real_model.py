"""The real freshrec model (builder + export_model + repository) through the model server and the gateway."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import requests

from freshrec.config import ModelSettings, load_settings
from freshrec.model.builder import build_model
from freshrec.model.export import export_model, predict_saved_model
from freshrec.model.repository import ModelRepository
from freshrec.model.spec import FeatureSpec
from tests.unit.model_frames import DESCRIPTION, tiny_frame

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_real_model_served_by_rest_and_ranked_by_gateway(tmp_path):
    from freshrec.serving.gateway import Gateway
    from freshrec.serving.server import ModelServer

    settings = load_settings(workdir=tmp_path / "work")
    frame = tiny_frame(30, seed=1)
    spec = FeatureSpec.for_description(DESCRIPTION, id_hash_buckets=64, frame=tiny_frame(200, seed=2))
    model = build_model(
        spec, ModelSettings(embedding_dim=4, id_hash_buckets=64, deep_units=[8], cross_layers=1)
    )
    export = export_model(model, tmp_path / "export", spec)
    repo = ModelRepository(settings.models_dir, "ctr")
    version = repo.publish(export, {"test": True})
    repo.set_label("stable", version)
    names = spec.input_names
    want = np.ravel(predict_saved_model(repo.path(version), frame))

    def lookup(user_id: str, item_ids: list[str], as_of=None) -> pd.DataFrame:
        rows = (
            frame.drop_duplicates("item_id")
            .set_index("item_id", drop=False)
            .loc[item_ids]
            .reset_index(drop=True)
        )
        return rows.assign(user_id=user_id)

    with ModelServer(settings, rest_port=0, grpc_port=0) as server:
        instances = [
            {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in frame[names].to_dict("records")
        ]
        r = requests.post(
            server.rest_url + "/v1/models/ctr/labels/stable:predict",
            json={"instances": instances},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.ravel(r.json()["predictions"]), want, rtol=1e-5, atol=1e-6)

        user = frame["user_id"].iloc[0]
        items = frame.loc[frame["user_id"] == user, "item_id"].drop_duplicates().tolist()
        items = items or frame["item_id"].iloc[:5].tolist()
        with Gateway(settings, lookup=lookup, port=0, model_target=server.grpc_target) as gateway:
            r = requests.post(gateway.url + "/v1/rank", json={"user_id": user, "item_ids": items}, timeout=30)
            assert r.status_code == 200, r.text
            body = r.json()
        assert body["model_version"] == version and len(body["items"]) == len(items)
        direct = np.ravel(predict_saved_model(repo.path(version), lookup(user, items)))
        got = {x["item_id"]: x["score"] for x in body["items"]}
        for item, score in zip(items, direct, strict=True):
            assert got[item] == pytest.approx(float(score), rel=1e-5, abs=1e-6)
