"""The whole batch flow on a small synthetic stream: train → evaluate → bless → infra check → publish,
then a second run that warm-starts from the published stable version and is compared with it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from freshrec.data.synthetic import generate
from freshrec.model.export import load_spec
from freshrec.model.references import ReferenceStore
from freshrec.model.repository import ModelRepository
from freshrec.training import run_training

pytestmark = pytest.mark.slow


@pytest.fixture
def small(settings):
    return settings.model_copy(
        update={
            "model": settings.model.model_copy(
                update={"embedding_dim": 4, "id_hash_buckets": 1024, "deep_units": [16], "cross_layers": 1}
            ),
            "training": settings.training.model_copy(
                update={"epochs": 3, "batch_size": 128, "learning_rate": 0.01}
            ),
            "blessing": settings.blessing.model_copy(update={"min_auc": 0.55, "max_logloss": 0.69}),
        }
    )


def test_first_run_publishes_stable_and_second_run_warm_starts(small):
    data = generate(n_users=150, n_items=80, n_events=3000, seed=1)
    first = run_training(small, data=data, publish=True)
    assert first.blessing["blessed"], first.blessing["reasons"]
    assert first.infra is not None and first.infra["ok"], first.infra
    assert first.version == 1 and first.labelled_stable and first.production is None
    repo = ModelRepository(small.models_dir, small.model.name)
    assert repo.versions() == [1] and repo.stable() == 1
    meta = repo.metadata(1)
    assert meta["feature_spec_hash"] == load_spec(repo.path(1)).hash()
    assert meta["parent_version"] is None and meta["blessing"]["blessed"] is True
    assert meta["metrics"]["auc"] == pytest.approx(first.candidate["auc"])
    assert {"train_start", "train_end", "test_start", "test_end"} <= set(meta["data_window"])
    json.dumps(first.to_dict(), default=str)
    # the drift monitor's reference, as the pipeline's push + rollout write it: the training frame of v1,
    # and (v1 being stable) its stable.parquet copy, inside the training window
    refs = ReferenceStore(small.references_dir, small.model.name)
    reference = pd.read_parquet(refs.stable_path)
    assert refs.stable_version() == 1 and pd.read_parquet(refs.path(1)).equals(reference)
    assert {"user_id", "item_id", "label", "event_timestamp"} <= set(reference.columns)
    assert 0 < len(reference) < len(data.events)
    assert str(reference["event_timestamp"].max()) == meta["data_window"]["train_end"]

    second = run_training(small, data=data, publish=False)
    assert second.parent_version == 1 and second.production_version == 1
    assert second.train_metrics["initial_val_loss"] < first.train_metrics["initial_val_loss"] - 0.01
    assert second.production is not None and second.production["auc"] == pytest.approx(
        first.candidate["auc"], abs=1e-4
    )
    assert [c["name"] for c in second.blessing["checks"]][-2:] == [
        "auc_vs_production",
        "logloss_vs_production",
    ]
    assert second.version is None and repo.versions() == [1]
