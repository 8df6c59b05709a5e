"""Convergence callbacks on small real TensorFlow training: best weights restored, LR cut on a plateau."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.config import ModelSettings, TrainingSettings
from freshrec.data.datasets import load_dataset, load_description
from freshrec.data.synthetic import generate_context
from freshrec.features.training_set import training_frames
from freshrec.model.spec import FeatureSpec
from freshrec.training import train

MODEL = ModelSettings(embedding_dim=4, deep_units=[16], cross_layers=1)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctx")
    generate_context(n_users=40, n_items=20, n_events=3000, seed=1).write(root / "synthetic-context")
    desc = load_description("synthetic-context")
    return desc, training_frames(load_dataset(desc, root))


def _train(frames, **training):
    desc, (tr, va, _) = frames
    spec = FeatureSpec.for_description(desc, MODEL.id_hash_buckets, frame=tr)
    return train(tr, va, spec, MODEL, TrainingSettings(batch_size=256, seed=7, **training))


@pytest.mark.slow
def test_a_too_high_learning_rate_plateaus_and_is_cut_and_the_best_epoch_is_restored(frames):
    # lr 0.05 overfits 2,400 rows within a couple of epochs: validation AUC stops improving, the learning
    # rate is halved after each epoch without a better AUC, and early stopping ends the run.
    result = _train(frames, learning_rate=0.05, epochs=12, early_stopping_patience=3, lr_reduce_patience=0)
    val_auc, lrs = result.history["val_auc"], result.history["learning_rate"]
    epochs = int(result.metrics["epochs_run"])
    assert epochs < 12, "early stopping, not the cap, ended the run"
    best = int(np.argmax(val_auc))
    assert best < epochs - 1
    # history holds the rate each epoch ran with: the first epoch without a better AUC (patience 0)
    # halves the rate of the epoch after it
    assert best + 2 < epochs
    assert lrs[best + 1] == pytest.approx(lrs[best])
    assert lrs[best + 2] == pytest.approx(lrs[best + 1] / 2, rel=1e-6)
    assert min(lrs) < 0.05
    # the returned model is the best epoch's, not the last one's
    assert result.metrics["best_epoch"] == best + 1
    assert result.metrics["val_auc"] == pytest.approx(max(val_auc), abs=2e-3)
    assert result.metrics["val_auc"] > val_auc[-1] + 1e-4


def test_the_callbacks_follow_the_settings():
    import keras

    from freshrec.training import _callbacks

    def kinds(**kw):
        return {type(c).__name__: c for c in _callbacks(TrainingSettings(**kw), None, None, "val_auc")}

    on = kinds(lr_reduce_factor=0.25, lr_reduce_patience=3, early_stopping_patience=4)
    assert isinstance(on["ReduceLROnPlateau"], keras.callbacks.ReduceLROnPlateau)
    assert (on["ReduceLROnPlateau"].factor, on["ReduceLROnPlateau"].patience) == (0.25, 3)
    assert on["EarlyStopping"].restore_best_weights and on["EarlyStopping"].patience == 4
    assert on["EarlyStopping"].monitor == "val_auc"
    assert "ReduceLROnPlateau" not in kinds(lr_reduce_factor=1.0)
