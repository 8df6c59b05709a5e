"""Training end to end on tiny frames: warm start, crash resume, Parquet input, infra check in a fresh process."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.config import ModelSettings, TrainingSettings
from freshrec.model import predict
from freshrec.model.builder import build_model
from freshrec.model.export import load_spec
from freshrec.model.infra import check_predictions, infra_check
from freshrec.model.spec import FeatureSpec
from freshrec.training import train
from freshrec.training.metrics import logloss
from tests.unit.model_frames import DESCRIPTION, tiny_frame

pytestmark = pytest.mark.slow

MODEL = ModelSettings(embedding_dim=4, id_hash_buckets=512, deep_units=[16], cross_layers=1, dropout=0.0)


def _fit(epochs: int, lr: float = 0.02, patience: int = 10) -> TrainingSettings:
    return TrainingSettings(epochs=epochs, batch_size=64, learning_rate=lr, early_stopping_patience=patience)


@pytest.fixture(scope="module")
def frames():
    df = tiny_frame(900, seed=3)
    return df.iloc[:700].reset_index(drop=True), df.iloc[700:].reset_index(drop=True)


@pytest.fixture(scope="module")
def parent(frames, tmp_path_factory):
    train_df, valid_df = frames
    spec = FeatureSpec.for_description(DESCRIPTION, id_hash_buckets=512)
    result = train(train_df, valid_df, spec, MODEL, _fit(8))
    out = result.export(tmp_path_factory.mktemp("parent") / "export")
    return result, out


def test_training_learns_and_reports(parent, frames):
    result, _ = parent
    m = result.metrics
    assert m["val_auc"] > 0.7  # the tiny frame's signal is learnable
    assert m["val_logloss"] < m["initial_val_loss"]
    assert 1 <= m["best_epoch"] <= m["epochs_run"] <= 8
    assert len(result.history["loss"]) == m["epochs_run"] and "val_auc" in result.history
    assert result.spec.adapted and not result.warm_started


def test_warm_start_child_starts_from_the_parents_loss(parent, frames):
    result, export_dir = parent
    _, valid_df = frames
    # Later data with users and items the parent never saw.
    later = tiny_frame(500, seed=4, users=60, items=90)
    later["user_id"] = later["user_id"] + "-new"
    child = train(
        later, valid_df, FeatureSpec.for_description(DESCRIPTION, 512), MODEL, _fit(1), parent=export_dir
    )
    fresh = build_model(result.spec, MODEL)
    fresh_loss = logloss(valid_df["label"].to_numpy(), predict(fresh, valid_df, result.spec))
    assert child.warm_started and child.spec.hash() == load_spec(export_dir).hash()
    assert child.metrics["initial_val_loss"] == pytest.approx(result.metrics["val_logloss"], abs=0.01)
    assert child.metrics["initial_val_loss"] < fresh_loss - 0.05
    p = predict(child.model, later.head(20))
    assert np.isfinite(p).all()


def test_warm_start_from_an_incompatible_architecture_is_refused(parent, frames):
    _, export_dir = parent
    train_df, valid_df = frames
    with pytest.raises(ValueError, match="do not fit a lr model"):
        train(
            train_df,
            valid_df,
            load_spec(export_dir),
            MODEL.model_copy(update={"architecture": "lr"}),
            _fit(1),
            parent=export_dir,
        )


def test_resume_after_a_crash_from_parquet(frames, tmp_path):
    import keras

    train_df, valid_df = frames
    train_df.to_parquet(tmp_path / "train.parquet")
    valid_df.to_parquet(tmp_path / "valid.parquet")
    spec = FeatureSpec.for_description(DESCRIPTION, 512, frame=train_df)
    ckpt = tmp_path / "ckpt"

    seen: dict[str, float] = {}

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[f"loss_{epoch}"] = float(logs["loss"])
            if epoch == 1:
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            tmp_path / "train.parquet",
            tmp_path / "valid.parquet",
            spec,
            MODEL,
            _fit(4),
            checkpoint_dir=ckpt,
            callbacks=[Crash()],
        )
    assert any(ckpt.iterdir()), "no backup written before the crash"
    resumed = train(
        tmp_path / "train.parquet", tmp_path / "valid.parquet", spec, MODEL, _fit(4), checkpoint_dir=ckpt
    )
    # Epochs 1-2 were done before the crash; only 3-4 run again.
    assert resumed.metrics["epochs_run"] == 2
    # It continues from epoch 2's weights: epoch 3's training loss keeps falling from where epoch 2 ended
    # (a fresh model would start again near epoch 1's loss).
    assert resumed.history["loss"][0] < seen["loss_1"] < seen["loss_0"]
    assert not ckpt.exists() or not any(ckpt.iterdir())  # backup removed after a clean finish


def test_infra_check_serves_in_a_fresh_process(parent, frames):
    result, export_dir = parent
    _, valid_df = frames
    sample = valid_df.head(40)
    expected = predict(result.model, sample)
    ok = infra_check(export_dir, sample, expected)
    assert ok.ok, ok.message
    assert ok.max_abs_diff < 1e-4 and ok.rows == 40 and ok.signature_inputs["user_id"] == "string"
    bad = check_predictions(expected * 0.99, expected, 1e-4)
    assert not bad.ok and "differ from training" in bad.message
    assert "holds no saved_model.pb" in infra_check(export_dir / "nope", sample, expected).message
    # The reference predictions may be a function, computed while the serving process loads the export.
    lazy = infra_check(export_dir, sample, lambda: expected * 0.99)
    assert not lazy.ok and "differ from training" in lazy.message
    assert infra_check(export_dir, sample, lambda: expected).ok

    def broken():
        raise RuntimeError("the trained model did not load")

    with pytest.raises(RuntimeError, match="did not load"):
        infra_check(export_dir, sample, broken)


def test_mixed_precision_trains_in_half_and_outputs_float32(frames):
    import keras

    train_df, valid_df = frames
    spec = FeatureSpec.for_description(DESCRIPTION, 512)
    result = train(train_df, valid_df, spec, MODEL, _fit(1).model_copy(update={"mixed_precision": True}))
    # bfloat16 on CPU (float16 with loss scaling on GPUs); the probability stays float32.
    assert result.model.get_layer("deep_0").compute_dtype == "bfloat16"
    assert predict(result.model, valid_df.head(5)).dtype == np.float32
    assert np.isfinite(result.metrics["val_logloss"])
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
