"""Freshness against the real local ModelServer: exported versions are tracked until served."""

from __future__ import annotations

import time

import numpy as np
import pytest

from freshrec.config import ModelSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_exports_are_served_and_freshness_is_measured(settings):
    from prometheus_client import CollectorRegistry

    from freshrec.data.synthetic import generate
    from freshrec.features.training_set import build_training_frame
    from freshrec.model.builder import build_model
    from freshrec.model.export import attach, export_model
    from freshrec.model.repository import ModelRepository
    from freshrec.model.spec import FeatureSpec
    from freshrec.online.freshness import FreshnessTracker, make_metrics
    from freshrec.online.learner import Featurizer, OnlineLearner
    from freshrec.online.sources import Batch
    from freshrec.serving.server import ModelServer

    ds = generate(seed=8, n_events=700, n_users=40, n_items=30, days=3.0)
    frame = build_training_frame(ds.events.iloc[:300], ds.users, ds.items)
    spec = FeatureSpec.for_description(ds.description, id_hash_buckets=256, frame=frame)
    ms = ModelSettings(embedding_dim=4, id_hash_buckets=256, deep_units=[8], cross_layers=1, dropout=0.0)
    model = attach(build_model(spec, ms), spec, ms)
    repo = ModelRepository(settings.models_dir, settings.model.name)
    v1 = repo.publish(export_model(model, settings.workdir / "boot"), {"source": "batch"})
    repo.set_label("stable", v1)
    cfg = settings.online.model_copy(
        update={
            "export_every_events": 200,
            "guard_min_events": 100,
            "guard_min_auc": 0.0,
            "learning_rate": 1e-3,
        }
    )
    fast = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"poll_interval_s": 0.2})}
    )
    registry = CollectorRegistry()
    with ModelServer(fast, rest_port=0, grpc_port=0) as server:
        tracker = FreshnessTracker(server.rest_url, settings.model.name, make_metrics(registry), timeout_s=60)
        learner = OnlineLearner(
            model,
            None,
            Featurizer(ds.users, ds.items),
            cfg,
            repository=repo,
            parent_version=v1,
            on_export=tracker.on_export,
        )
        events = ds.events.iloc[300:]
        for start in range(0, len(events), 100):
            chunk = events.iloc[start : start + 100]
            learner.step(Batch(chunk, None, np.full(len(chunk), time.time())))
        tracker.wait(60)
        # A version that never appears times out instead of hanging.
        never = FreshnessTracker(server.rest_url, settings.model.name, timeout_s=0.5)
        never.track(999, time.time())
        never.wait(5)
    summary = tracker.summary()
    assert learner.totals.exports >= 1 and summary["served"] == learner.totals.exports
    assert repo.stable() == max(r["version"] for r in summary["records"])
    assert all(0 < r["freshness_s"] < 60 and r["publish_to_serve_s"] >= 0 for r in summary["records"])
    assert summary["p50_s"] is not None and summary["p95_s"] >= summary["p50_s"]
    assert registry.get_sample_value("freshrec_online_freshness_seconds_count") == learner.totals.exports
    assert never.summary()["timed_out"] == 1
