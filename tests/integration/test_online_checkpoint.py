"""Checkpoint, crash between checkpoint and XACK, restore: replays are dropped by event_id, nothing lost."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from freshrec.config import ModelSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _tiny_learner(settings, ds, **online):
    from freshrec.features.training_set import build_training_frame
    from freshrec.model.builder import build_model
    from freshrec.model.export import attach
    from freshrec.model.spec import FeatureSpec
    from freshrec.online.learner import Featurizer, OnlineLearner

    frame = build_training_frame(ds.events.iloc[:300], ds.users, ds.items)
    spec = FeatureSpec.for_description(ds.description, id_hash_buckets=256, frame=frame)
    ms = ModelSettings(embedding_dim=4, id_hash_buckets=256, deep_units=[8], cross_layers=1, dropout=0.0)
    model = attach(build_model(spec, ms), spec, ms)
    cfg = settings.online.model_copy(update={"micro_batch": 100, **online})
    return OnlineLearner(
        model,
        None,
        Featurizer(ds.users, ds.items),
        cfg,
        state_dir=settings.state_dir / "online" / "ctr",
        quarantine_dir=settings.quarantine_dir,
    )


def test_crash_after_checkpoint_before_ack_replays_are_dropped(settings, redis_url):
    import redis

    from freshrec.data.synthetic import generate
    from freshrec.online.sources import RedisStreamSource, publish_events

    ds = generate(seed=5, n_events=600, n_users=40, n_items=30, days=3.0)
    client = redis.Redis.from_url(redis_url)
    stream = f"freshrec:test:{uuid.uuid4().hex[:8]}"
    publish_events(client, stream, ds.events)
    try:
        learner = _tiny_learner(settings, ds)
        source = RedisStreamSource(client, stream, "g", "c1")
        for _ in range(3):
            learner.step(source.poll(100, 0.5), source)  # checkpoint, then XACK
        assert source.pending_count() == 0
        batch = source.poll(100, 0.5)
        learner.step(batch, None)  # checkpointed, but the process "dies" before acknowledging
        assert source.pending_count() == 100
        weights_before = [w.copy() for w in learner.model.get_weights()]
        optimizers_before = learner.trainer.state()
        assert len(optimizers_before["embedding"]) > 1  # Adagrad accumulators of the embedding tables
        del learner, source

        again = _tiny_learner(settings, ds)
        assert again.restore()
        assert again.totals.scored == 400
        assert all((a == b).all() for a, b in zip(again.model.get_weights(), weights_before, strict=True))
        # Both optimizers' state came back too (dense Adam moments, embedding Adagrad accumulators).
        steps = 4 * -(-100 // again.settings.train_batch)  # 4 batches of 100, each in train_batch slices
        assert again.trainer.optimizer.iterations.numpy() == steps
        assert again.trainer.embedding_optimizer.iterations.numpy() == steps
        restored = again.trainer.state()
        for key in ("dense", "embedding"):
            assert all(
                np.array_equal(a, b) for a, b in zip(restored[key], optimizers_before[key], strict=True)
            )
        source = RedisStreamSource(client, stream, "g", "c1")
        totals = again.run(source, until_idle=True, idle_timeout_s=0.5)
        assert totals.duplicates == 100  # the redelivered batch, dropped by event_id
        assert totals.scored == totals.learned == len(ds.events)
        assert source.pending_count() == 0

        # A second consumer takes over entries a dead one left pending (XAUTOCLAIM).
        publish_events(client, stream, ds.events.iloc[:50].assign(event_id=lambda d: "x" + d["event_id"]))
        dead = RedisStreamSource(client, stream, "g", "dead")
        dead._recovering = False
        assert len(dead.poll(50, 0.5)) == 50
        taker = RedisStreamSource(client, stream, "g", "c2", claim_min_idle_ms=0)
        claimed = taker.poll(100, 0.5)
        assert sorted(claimed.events["event_id"]) == sorted("x" + ds.events["event_id"].iloc[:50])
        taker.commit(claimed.positions)
        assert taker.pending_count() == 0
    finally:
        client.delete(stream)


def test_label_delay_buffers_until_the_click_window_closes_and_survives_restart(settings):
    import numpy as np
    import pandas as pd

    from freshrec.data.synthetic import generate
    from freshrec.online.sources import Batch

    ds = generate(seed=6, n_events=400, n_users=30, n_items=20, days=2.0)
    learner = _tiny_learner(settings, ds, label_delay_s=6 * 3600.0)
    events = ds.events
    for start in range(0, 300, 100):
        learner.step(Batch(events.iloc[start : start + 100], None, np.zeros(0)))
    watermark = events["event_timestamp"].iloc[299]
    waiting = int((events["event_timestamp"].iloc[:300] + pd.Timedelta(hours=6) > watermark).sum())
    assert learner.totals.scored == 300 and learner.totals.learned == 300 - waiting > 0
    assert len(learner.buffer) == waiting
    again = _tiny_learner(settings, ds, label_delay_s=6 * 3600.0)
    assert again.restore() and len(again.buffer) == waiting
    again.step(Batch(events.iloc[300:], None, np.zeros(0)))
    assert again.totals.scored == 400 and again.totals.learned + len(again.buffer) == 400
