"""The learner on synthetic streams with known truth: drift (online beats static), poisoning (guard holds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from freshrec.config import ModelSettings, TrainingSettings

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory):
    """A small DCN trained on the pre-drift part of a synthetic stream with strong drift at its middle."""
    from freshrec.data.synthetic import generate
    from freshrec.features.training_set import build_training_frame
    from freshrec.model.export import export_model
    from freshrec.model.spec import FeatureSpec
    from freshrec.training import train

    ds = generate(
        seed=11,
        n_events=9000,
        n_users=150,
        n_items=100,
        days=20.0,
        drift_at=0.45,
        new_items=60,
        new_item_share=0.6,
        ctr_shift=0.8,
    )
    drift = ds.truth["drift_at"]
    events = ds.events
    before = events[events["event_timestamp"] < drift].reset_index(drop=True)
    after = events[events["event_timestamp"] >= drift].reset_index(drop=True)
    frame = build_training_frame(before, ds.users, ds.items)
    spec = FeatureSpec.for_description(ds.description, id_hash_buckets=1024, frame=frame)
    ms = ModelSettings(embedding_dim=8, id_hash_buckets=1024, deep_units=[32], cross_layers=1, dropout=0.0)
    n = len(frame)
    result = train(
        frame.iloc[: int(n * 0.9)],
        frame.iloc[int(n * 0.9) :],
        spec,
        ms,
        TrainingSettings(epochs=4, batch_size=256, learning_rate=3e-3),
    )
    out = export_model(result.model, tmp_path_factory.mktemp("boot") / "export")
    return {"ds": ds, "before": before, "after": after, "export": out, "drift": drift}


def _learner(bootstrap, settings, repository=None, parent=None, **online):
    from freshrec.features.activity import ActivityState
    from freshrec.model.export import load_keras_model
    from freshrec.online.learner import Featurizer, OnlineLearner

    cfg = settings.online.model_copy(update={"micro_batch": 200, "learning_rate": 2e-3, **online})
    activity = ActivityState()
    activity.update(bootstrap["before"])
    ds = bootstrap["ds"]
    return OnlineLearner(
        load_keras_model(bootstrap["export"]),
        load_keras_model(bootstrap["export"]),
        Featurizer(ds.users, ds.items, activity),
        cfg,
        repository=repository,
        parent_version=parent,
        keep_all_predictions=True,
    )


def _stream(learner, events: pd.DataFrame, batch: int = 200) -> None:
    from freshrec.online.sources import Batch

    for start in range(0, len(events), batch):
        learner.step(Batch(events.iloc[start : start + batch], None, np.zeros(0)))


def test_online_beats_static_after_drift(bootstrap, settings):
    learner = _learner(bootstrap, settings)  # no repository: the serving copy stays the static bootstrap
    _stream(learner, bootstrap["after"])
    online_auc, static_auc = learner.metrics.stream_auc(), learner.serving_metrics.stream_auc()
    online_ll, static_ll = learner.metrics.mean_logloss(), learner.serving_metrics.mean_logloss()
    assert learner.totals.learned == len(bootstrap["after"])
    assert online_auc > static_auc + 0.01, (online_auc, static_auc)
    assert online_ll < static_ll, (online_ll, static_ll)


def test_poisoned_stream_trips_guard_and_no_bad_version_is_exported(bootstrap, settings):
    from freshrec.model.repository import ModelRepository
    from freshrec.monitoring.alerts import AlertManager

    repo = ModelRepository(settings.models_dir, settings.model.name)
    v1 = repo.publish(bootstrap["export"], {"source": "batch"})
    repo.set_label("stable", v1)
    alerts = AlertManager(settings.alerts, settings.state_dir)

    def alert(result, rec):
        alerts.fire(
            settings.model.name, "online_guard_failed", "rejected", description="; ".join(result.reasons)
        )

    learner = _learner(
        bootstrap,
        settings,
        repository=repo,
        parent=v1,
        export_every_events=600,
        guard_min_events=200,
        reset_on_guard_failure=True,
    )
    assert learner.screener is None  # the guard alone here (screening would hold the flip before it)
    learner.on_guard_failure = alert
    after = bootstrap["after"]
    clean, poisoned = after.iloc[:1800].copy(), after.iloc[1800:].copy()
    _stream(learner, clean)
    clean_versions = repo.versions()
    assert len(clean_versions) > 1, [e.guard for e in learner.exports]  # clean updates do get exported
    poisoned["label"] = (1 - poisoned["label"]).astype("int8")
    flip_time = poisoned["event_timestamp"].min()
    _stream(learner, poisoned)
    assert learner.totals.guard_failures >= 2
    assert repo.versions() == clean_versions  # nothing learned from flipped labels reached the repository
    assert repo.stable() == clean_versions[-1]
    for v in repo.versions()[1:]:
        meta = repo.metadata(v)
        assert meta["source"] == "online" and pd.Timestamp(meta["newest_event_time"]) < flip_time
        assert meta["parent_version"] in repo.versions()
    failed = [e for e in learner.exports if not e.passed]
    assert any(not e.guard["checks"]["recent_auc"]["passed"] for e in failed)
    assert f"{settings.model.name}/online_guard_failed" in alerts.open_alerts()
    assert learner.totals.resets == learner.totals.guard_failures


def test_screening_holds_flipped_batches_before_they_are_learned_and_release_learns_them(bootstrap, settings):
    """The same label flip as above, with screening on: no flipped batch moves the weights until released."""
    from freshrec.config import ScreeningSettings
    from freshrec.online.sources import Batch

    learner = _learner(bootstrap, settings, screening=ScreeningSettings(enabled=True))
    after = bootstrap["after"]
    clean, poisoned = after.iloc[:1800].copy(), after.iloc[1800:3000].copy()
    _stream(learner, clean)
    assert learner.screener.counters["batches_held"] == 0  # no clean batch held
    assert learner.totals.learned == len(clean)
    poisoned["label"] = (1 - poisoned["label"]).astype("int8")
    weights = [w.copy() for w in learner.model.get_weights()]
    activity_events = learner.featurizer.activity.events_seen
    _stream(learner, poisoned)
    held = learner.screener.held.list()
    assert sum(h["events"] for h in held) == len(poisoned)  # every flipped batch held, none learned
    assert learner.totals.learned == len(clean)
    assert all(np.array_equal(a, b) for a, b in zip(weights, learner.model.get_weights(), strict=True))
    assert learner.featurizer.activity.events_seen == activity_events  # held events left activity alone
    assert all(any("serving_auc" in r or "serving_logloss" in r for r in h["reasons"]) for h in held)

    learner.screener.held.release([held[0]["batch_id"]])  # an operator says the first one is fine
    learner.step(Batch(poisoned.iloc[:0], None, np.zeros(0)))  # the next step learns it
    assert learner.totals.learned == len(clean) + held[0]["events"]
    assert len(learner.screener.held.list()) == len(held) - 1


def test_embedding_tables_learn_with_their_own_faster_optimizer(bootstrap, settings):
    from freshrec.online.learner import is_embedding_table

    def user_table_change(**online) -> tuple[float, object]:
        learner = _learner(bootstrap, settings, **online)
        table = next(v for v in learner.model.trainable_variables if v.path == "user_id_emb/embeddings")
        before = np.asarray(table).copy()
        _stream(learner, bootstrap["after"].iloc[:200])
        return float(np.abs(np.asarray(table) - before).max()), learner.trainer

    split_change, trainer = user_table_change()
    variables = trainer.model.trainable_variables
    assert [v.path for v in trainer.embedding_variables] == [
        v.path for v in variables if v.path.endswith("/embeddings")
    ]
    assert len(trainer.embedding_variables) + len(trainer.dense_variables) == len(variables)
    assert not any(is_embedding_table(v) for v in trainer.dense_variables)
    slices = -(-200 // settings.online.train_batch)  # one micro-batch of 200, learned slice by slice
    assert trainer.embedding_optimizer.iterations.numpy() == trainer.optimizer.iterations.numpy() == slices
    # The former learner (one Adam at 2e-4 for every variable) barely moves an id's row.
    single_change, _ = user_table_change(embedding_optimizer="adam", embedding_learning_rate=2e-4)
    assert split_change > 5 * single_change, (split_change, single_change)


def test_a_promotion_stops_the_learners_exports_even_one_landing_mid_export(bootstrap, settings):
    """A batch version promoted while the learner runs (the rollout task labelling a canary stable) is not
    overwritten by the learner's next export, even when it lands between the learner's read of the label and
    its write (here: during the publish): the learner marks itself superseded and exports no more, so its
    owner (``freshrec online --follow-stable``, the Deployment) restarts it from the new stable version."""
    from freshrec.model.repository import ModelRepository

    class PromotedDuringPublish(ModelRepository):
        promote_next: int | None = None

        def publish(self, *args, **kwargs):
            version = super().publish(*args, **kwargs)
            if self.promote_next is not None:  # the rollout task's label write, mid-export
                self.set_label("stable", self.promote_next)
                self.promote_next = None
            return version

    repo = PromotedDuringPublish(settings.models_dir, settings.model.name)
    v1 = repo.publish(bootstrap["export"], {"source": "batch"})
    batch = repo.publish(bootstrap["export"], {"source": "batch"})  # the canary, promoted later
    repo.set_label("stable", v1)
    learner = _learner(
        bootstrap, settings, repository=repo, parent=v1, export_every_events=400, guard_min_events=200
    )
    after = bootstrap["after"]
    _stream(learner, after.iloc[:1200])
    exported = [e.version for e in learner.exports if e.version is not None]
    assert exported and repo.stable() == exported[-1] and learner.superseded is None
    repo.promote_next = batch
    _stream(learner, after.iloc[1200:2400])
    assert repo.stable() == batch  # the promotion stands
    assert learner.superseded == batch
    versions = repo.versions()
    _stream(learner, after.iloc[2400:3600])
    assert repo.versions() == versions  # nothing more from the old lineage
    assert learner.superseded_by() == batch
