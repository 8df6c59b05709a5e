"""The wired learner (build_learner + event-log source) on a prepared workdir with a real Feast store."""

from __future__ import annotations

import pandas as pd
import pytest

from freshrec.config import ModelSettings

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_learner_follows_event_log_after_trained_window_and_pushes_fresh_activity(settings):
    from freshrec.data.prepare import prepare_dataset
    from freshrec.data.synthetic import generate
    from freshrec.features import store
    from freshrec.features.activity import ActivityState
    from freshrec.features.training_set import build_training_frame
    from freshrec.model.builder import build_model
    from freshrec.model.export import attach, export_model
    from freshrec.model.repository import ModelRepository
    from freshrec.model.spec import FeatureSpec
    from freshrec.online.learner import build_learner
    from freshrec.online.sources import build_source

    ds = generate(seed=4, n_users=40, n_items=30, n_events=1200, days=20.0)
    prepare_dataset(ds, settings)
    store.apply(settings)
    events = ds.events.sort_values(["event_timestamp", "event_id"]).reset_index(drop=True)
    trained_until = events["event_timestamp"].iloc[899]
    frame = build_training_frame(events.iloc[:900], ds.users, ds.items)
    spec = FeatureSpec.for_description(ds.description, id_hash_buckets=256, frame=frame)
    ms = ModelSettings(embedding_dim=4, id_hash_buckets=256, deep_units=[8], cross_layers=1, dropout=0.0)
    repo = ModelRepository(settings.models_dir, settings.model.name)
    v1 = repo.publish(
        export_model(attach(build_model(spec, ms), spec, ms), settings.workdir / "boot"),
        {"source": "batch", "data_window": {"end": str(trained_until)}},
    )
    repo.set_label("stable", v1)

    history = events[events["event_timestamp"] <= trained_until]
    learner = build_learner(settings, history=history)
    assert learner.push is not None  # Feast is applied: fresh activity goes to the online store
    source = build_source(settings, "eventlog", start_after=trained_until)
    totals = learner.run(source, until_idle=True, idle_timeout_s=0.2)
    assert totals.scored == totals.learned == len(events) - len(history)
    assert totals.duplicates == 0 and totals.quarantined == 0

    # The online store now holds the learner's activity state after the last event, for the last user.
    state = ActivityState()
    state.update(events)
    user, item = events["user_id"].iloc[-1], events["item_id"].iloc[-1]
    as_of = events["event_timestamp"].max() + pd.Timedelta(microseconds=1)
    want = state.user_rows([user], as_of)["user_events_total"].iloc[0]
    got = store.OnlineFeatures(settings).lookup(user, [item], as_of=as_of.to_pydatetime())
    assert got["user_events_total"].iloc[0] == pytest.approx(want)
    assert want == (events["user_id"] == user).sum()

    # Positions were committed: a restarted learner resumes from its checkpoint and finds nothing new.
    again = build_learner(settings)
    assert again.totals.scored == totals.scored
    assert len(build_source(settings, "eventlog", start_after=trained_until).poll(100, 0)) == 0
