"""Model behaviour on tiny inputs: shapes, dtypes, unseen ids, and train-serve parity of the SavedModel."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.config import ModelSettings
from freshrec.model import predict
from freshrec.model.builder import build_model
from freshrec.model.export import (
    attach,
    export_model,
    load_keras_model,
    predict_saved_model,
    signature_inputs,
)
from freshrec.model.spec import FeatureSpec, frame_to_inputs
from tests.unit.model_frames import DESCRIPTION, tiny_frame

SMALL = {"embedding_dim": 4, "id_hash_buckets": 256, "deep_units": [16], "cross_layers": 2}


@pytest.fixture(scope="module")
def frame():
    return tiny_frame(300)


@pytest.fixture(scope="module")
def spec(frame):
    return FeatureSpec.for_description(DESCRIPTION, id_hash_buckets=256, frame=frame)


@pytest.mark.parametrize(
    "settings",
    [
        ModelSettings(architecture="dcn", **SMALL),
        ModelSettings(architecture="dcn", cross_rank=3, **SMALL),
        ModelSettings(architecture="dcn", deep_batch_norm=True, **SMALL),
        ModelSettings(architecture="lr", **SMALL),
    ],
    ids=["dcn-full-rank", "dcn-low-rank", "dcn-batch-norm", "lr"],
)
def test_output_shape_dtype_and_range(settings, spec, frame):
    model = attach(build_model(spec, settings), spec, settings)
    out = model(frame_to_inputs(frame.head(7), spec), training=False)
    assert tuple(out.shape) == (7, 1)
    assert out.dtype == "float32"
    p = predict(model, frame.head(7))
    assert p.shape == (7,) and np.all((p > 0) & (p < 1))


def test_unseen_ids_and_categories_do_not_crash(spec, frame):
    model = build_model(spec, ModelSettings(**SMALL))
    rows = frame.head(4).copy()
    rows["user_id"] = ["never-seen-user", "", "ü-ñ", "x" * 500]
    rows["item_id"] = ["new-item"] * 4
    rows["user_gender"] = "unknown"  # lookup → OOV slot
    rows["item_genres"] = ["Sci-Fi|Western", "", "Action", "|||"]
    p = predict(model, rows, spec)
    assert p.shape == (4,) and np.isfinite(p).all()
    # Unseen ids hash into the fixed table: a bucket in range, stable across calls.
    import keras

    hashing = keras.layers.Hashing(num_bins=256)
    ids = np.asarray(hashing(np.array(["never-seen-user", "never-seen-user"], dtype=object)))
    assert ids[0] == ids[1] and 0 <= ids[0] < 256


def test_unadapted_spec_is_refused():
    with pytest.raises(ValueError, match="adapt"):
        build_model(FeatureSpec.for_description(DESCRIPTION), ModelSettings(**SMALL))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["dcn", "lr"])
def test_saved_model_matches_keras_model(arch, spec, frame, tmp_path):
    settings = ModelSettings(architecture=arch, **SMALL)
    model = attach(build_model(spec, settings), spec, settings)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(frame_to_inputs(frame, spec), frame["label"].to_numpy("float32"), epochs=1, verbose=0)
    expected = predict(model, frame)
    out = export_model(model, tmp_path / "export")
    served = predict_saved_model(out, frame)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    sig = signature_inputs(out)
    assert sig["user_id"] == "string" and sig["item_genres"] == "string"
    assert sig["user_events_total"] == "float32" and set(sig) == set(spec.input_names)
    reloaded = load_keras_model(out)
    np.testing.assert_allclose(predict(reloaded, frame), expected, atol=1e-5)
    with pytest.raises(FileExistsError):
        export_model(model, out)


@pytest.mark.slow
def test_exporting_the_same_model_again_writes_its_current_weights(spec, frame, tmp_path):
    # The online learner exports one model object many times; the traced serving function is reused,
    # and each SavedModel must still hold the weights of its own moment.
    settings = ModelSettings(architecture="dcn", **SMALL)
    model = attach(build_model(spec, settings), spec, settings)
    first = export_model(model, tmp_path / "first")
    before = predict_saved_model(first, frame)
    model.set_weights([w * 1.5 for w in model.get_weights()])
    second = export_model(model, tmp_path / "second")
    assert getattr(model, "_freshrec_export_serve", None) is not None
    np.testing.assert_allclose(predict_saved_model(second, frame), predict(model, frame), atol=1e-5)
    np.testing.assert_allclose(predict_saved_model(first, frame), before, atol=1e-6)
    assert not np.allclose(before, predict_saved_model(second, frame), atol=1e-4)
