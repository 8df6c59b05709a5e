"""Error feedback in retraining: weights and hard-row copies from the prediction log joined with the clicks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from freshrec.config import FeedbackSettings, load_settings
from freshrec.serving.predlog import PredictionLog
from freshrec.training.feedback import (
    apply_feedback,
    feedback_training_frame,
    feedback_weights,
    served_logloss,
)

T0 = pd.Timestamp("2024-03-01", tz="UTC")


def _events(n: int = 8) -> pd.DataFrame:
    """Training rows: one impression per (user, item), a minute apart, alternating labels."""
    return pd.DataFrame(
        {
            "event_id": [f"e{k}" for k in range(n)],
            "event_timestamp": [T0 + pd.Timedelta(minutes=k) for k in range(n)],
            "user_id": [f"u{k}" for k in range(n)],
            "item_id": [f"i{k}" for k in range(n)],
            "label": np.array([k % 2 for k in range(n)], dtype="int8"),
            "user_age": np.arange(n),
        }
    )


def _log(directory, served: dict[int, float], events: pd.DataFrame, before_s: float = 30.0) -> None:
    """Write what the gateway would have logged: row k of ``events`` served with score ``served[k]``."""
    log = PredictionLog(directory)
    for k, score in served.items():
        row = events.iloc[k]
        at = row["event_timestamp"] - pd.Timedelta(seconds=before_s)
        log.add(f"r{k}", row["user_id"], [row["item_id"]], 3, "stable", np.array([score]), at.value)
    log.flush()


def _bce(y: int, p: float) -> float:
    return -math.log(p) if y == 1 else -math.log(1.0 - p)


def _settings(tmp_path, **feedback):
    return load_settings(workdir=tmp_path / "work", training={"feedback": feedback})


def test_weights_come_from_the_served_scores_joined_with_the_clicks(tmp_path):
    events = _events()
    served = {2: 0.4, 3: 0.3, 4: 0.2, 5: 0.7}  # labels 0, 1, 0, 1
    settings = _settings(tmp_path, mode="weight", max_weight=10.0)
    _log(settings.predictions_dir, served, events)

    rows, weights, summary = feedback_training_frame(events, settings)

    losses = {k: _bce(int(events["label"][k]), p) for k, p in served.items()}
    mean = sum(losses.values()) / len(losses)
    expected = np.ones(len(events))
    for k, loss in losses.items():
        expected[k] = loss / mean
    assert rows is events
    np.testing.assert_allclose(weights, expected, rtol=1e-9)
    assert weights[3] > weights[2] > weights[4]  # the worse the served score, the heavier the row
    assert summary.joined == 4 and summary.added == 0
    assert summary.served_logloss == pytest.approx(mean)


def test_rows_without_a_logged_prediction_keep_weight_one(tmp_path):
    events = _events()
    settings = _settings(tmp_path, mode="weight")
    # Row 1 served after its impression, row 6 served two hours before it (beyond the 1 h click window):
    # neither prediction is this row's; rows 3 and 5 are the only ones joined.
    _log(settings.predictions_dir, {1: 0.01}, events, before_s=-30.0)
    _log(settings.predictions_dir, {6: 0.99}, events, before_s=7200.0)
    _log(settings.predictions_dir, {3: 0.1, 5: 0.9}, events)

    losses = served_logloss(events, _read(settings), settings.rollout.click_window_s)
    unjoined = [0, 1, 2, 4, 6, 7]
    assert np.isnan(losses[unjoined]).all()
    assert losses[3] == pytest.approx(_bce(1, 0.1)) and losses[5] == pytest.approx(_bce(1, 0.9))
    _, weights, summary = feedback_training_frame(events, settings)
    assert summary.joined == 2
    np.testing.assert_array_equal(weights[unjoined], 1.0)
    assert weights[3] > 1.0 > weights[5]


def _read(settings):
    from freshrec.serving.predlog import read_predictions

    return read_predictions(settings.predictions_dir)


def test_the_cap_bounds_every_weight_and_no_row_dominates(tmp_path):
    events = _events(40)
    served = dict.fromkeys(range(40), 0.5)
    served[1] = 1e-6  # a clicked row the served model was sure about: a loss of ~14 nats
    served[2] = 1e-6  # an unclicked row scored right: a loss near 0
    settings = _settings(tmp_path, mode="weight", max_weight=3.0)
    _log(settings.predictions_dir, served, events)

    _, weights, summary = feedback_training_frame(events, settings)

    assert weights.max() == pytest.approx(3.0) and weights[1] == pytest.approx(3.0)
    assert weights.min() == pytest.approx(1 / 3) and weights[2] == pytest.approx(1 / 3)
    assert summary.capped == 2 and summary.max_weight == pytest.approx(3.0)
    # Uncapped, row 1 would weigh 14 / mean loss ≈ 14 of the others; capped, it weighs ~3, and the others
    # share what is left so the joined rows still average 1.
    assert weights[1] / np.median(weights) < 3.2
    assert weights.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(weights[3:], (40 - 3 - 1 / 3) / 38)


def test_augmentation_appends_copies_of_the_hard_rows_only(tmp_path):
    events = _events(10)
    # Labels alternate 0, 1: rows 1 and 3 (clicked) were scored 0.02 and 0.1 (hard); the rest about right.
    served = {k: (0.8 if k % 2 else 0.2) for k in range(10)}
    served[1], served[3] = 0.02, 0.1
    fb = FeedbackSettings(mode="augment", max_weight=3.0)
    settings = _settings(tmp_path, **fb.model_dump())
    _log(settings.predictions_dir, served, events)

    rows, weights, summary = feedback_training_frame(events, settings)

    assert weights is None
    losses = np.array([_bce(int(events["label"][k]), served[k]) for k in range(10)])
    copies = np.floor(np.maximum(feedback_weights(losses, 3.0), 1.0) + 1e-9).astype(int) - 1
    assert copies[1] == 2 and copies[3] >= 1 and copies[[0, 2, 4, 5, 6, 7, 8, 9]].sum() == 0
    counts = rows["event_id"].value_counts()
    for k in range(10):
        assert counts[f"e{k}"] == 1 + copies[k]
    assert len(rows) == 10 + copies.sum() == 10 + summary.added
    # The original rows come first, untouched; the copies are whole rows (features and label).
    pd.testing.assert_frame_equal(rows.iloc[:10], events)
    extra = rows.iloc[10:]
    assert set(extra["event_id"]) == {"e1", "e3"} and (extra["label"] == 1).all()
    assert summary.max_weight == 3.0


def test_off_leaves_the_source_untouched_and_no_log_means_plain_training(tmp_path):
    events = _events()
    path = tmp_path / "train.parquet"
    events.to_parquet(path)
    off = _settings(tmp_path)
    assert off.training.feedback.mode == "off"  # off by default (the benchmark's verdict)
    _log(off.predictions_dir, {1: 0.01}, events)
    same, weights, _ = feedback_training_frame(path, off)
    assert same == path and weights is None

    empty = _settings(tmp_path / "other", mode="weight")
    rows, weights, summary = feedback_training_frame(path, empty)
    assert weights is None and summary.joined == 0 and len(rows) == len(events)


def test_a_frame_without_the_join_keys_is_a_clear_error():
    events = _events().drop(columns=["event_timestamp"])
    with pytest.raises(ValueError, match="event_timestamp"):
        apply_feedback(events, pd.DataFrame({"score": []}), FeedbackSettings(mode="weight"), 3600.0)


@pytest.mark.parametrize("bad", [{"mode": "boost"}, {"max_weight": 0.5}])
def test_bad_feedback_settings_are_refused(bad):
    with pytest.raises(ValueError):
        FeedbackSettings(**bad)


@pytest.mark.slow
def test_training_follows_the_sample_weights():
    """Real Keras fit: with the clicked rows weighted down 20x, the model predicts far fewer clicks."""
    from freshrec.config import ModelSettings, TrainingSettings
    from freshrec.model import predict
    from freshrec.model.spec import FeatureSpec
    from freshrec.training import train
    from tests.unit.model_frames import DESCRIPTION, tiny_frame

    frame = tiny_frame(600, seed=4)
    tr, va = frame.iloc[:500], frame.iloc[500:]
    spec = FeatureSpec.for_description(DESCRIPTION, id_hash_buckets=256, frame=tr)
    model = ModelSettings(embedding_dim=4, id_hash_buckets=256, deep_units=[16], cross_layers=1)
    ts = TrainingSettings(batch_size=64, epochs=4, early_stopping_patience=4, learning_rate=5e-3, seed=3)
    weights = np.where(tr["label"].to_numpy() == 1, 0.05, 1.0)
    plain = train(tr, va, spec, model, ts)
    weighted = train(tr, va, spec, model, ts, sample_weight=weights)
    p_plain = float(np.mean(predict(plain.model, va, plain.spec)))
    p_weighted = float(np.mean(predict(weighted.model, va, weighted.spec)))
    assert p_weighted < 0.5 * p_plain, (p_plain, p_weighted)
    with pytest.raises(ValueError, match="sample_weight has 3 values for 500"):
        train(tr, va, spec, model, ts, sample_weight=np.ones(3))
