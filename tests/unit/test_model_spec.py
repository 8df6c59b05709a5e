"""FeatureSpec: built from a description, adapted from data, JSON round trip, stable hash, input arrays."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.model.spec import ITEM_ACTIVITY, USER_ACTIVITY, FeatureSpec, frame_to_inputs, labels_of
from tests.unit.model_frames import DESCRIPTION, tiny_frame


def test_for_description_covers_ids_profile_and_activity():
    df = tiny_frame(200)
    spec = FeatureSpec.for_description(DESCRIPTION, id_hash_buckets=1000, frame=df)
    names = spec.input_names
    assert names[:2] == ["user_id", "item_id"]
    assert set(USER_ACTIVITY + ITEM_ACTIVITY) <= set(names)
    enc = {f.name: f.encoding for f in spec.features}
    assert enc["user_id"] == enc["item_id"] == "hash"
    assert spec.feature("user_id").params["num_bins"] == 1000
    assert enc["user_gender"] == "lookup" and spec.feature("user_gender").params["vocabulary"] == ["F", "M"]
    assert enc["item_genres"] == "multi_hash"
    assert enc["item_year"] == "bucketize"
    assert enc["user_age"] == "normalize" and enc["user_events_total"] == "normalize"
    assert spec.feature("user_events_total").params["log1p"] is True
    assert spec.feature("user_ctr_total").params["log1p"] is False
    assert spec.adapted


def test_adapted_stats_come_from_the_data():
    df = tiny_frame(300)
    spec = FeatureSpec.for_description(DESCRIPTION, frame=df)
    age = spec.feature("user_age").params
    assert age["mean"] == pytest.approx(df.user_age.mean())
    assert age["std"] == pytest.approx(df.user_age.std(ddof=0))
    counts = spec.feature("item_events_total").params
    assert counts["mean"] == pytest.approx(np.log1p(df.item_events_total).mean())
    bounds = spec.feature("item_year").params["boundaries"]
    assert bounds == sorted(bounds) and bounds[0] > 0  # year 0 (unknown) stays below the first boundary


def test_json_round_trip_and_hash():
    spec = FeatureSpec.for_description(DESCRIPTION, frame=tiny_frame(200))
    again = FeatureSpec.from_json(spec.to_json())
    assert again == spec and again.hash() == spec.hash()
    shifted = tiny_frame(200)
    shifted["user_age"] += 5
    other = FeatureSpec.for_description(DESCRIPTION, frame=shifted)
    assert other.hash() != spec.hash()  # different stats
    assert other.structure_hash() == spec.structure_hash()  # but interchangeable weights


def test_unadapted_spec_and_unknown_types():
    spec = FeatureSpec.for_description(DESCRIPTION)
    assert not spec.adapted
    with pytest.raises(ValueError, match="unknown type 'text'"):
        FeatureSpec.for_description({"features": {"title": "text"}})
    with pytest.raises(ValueError, match="lacks feature columns"):
        spec.adapt(tiny_frame(50).drop(columns=["user_age"]))


def test_description_objects_with_a_feature_list_are_read():
    class F:
        def __init__(self, name, type):
            self.name, self.type = name, type

    class D:
        def __init__(self):
            self.features = [F("user_gender", "categorical"), F("item_genres", "multi_categorical")]

    spec = FeatureSpec.for_description(D())
    assert "user_gender" in spec.input_names and spec.feature("item_genres").encoding == "multi_hash"


def test_frame_to_inputs_dtypes_and_missing_values():
    df = tiny_frame(20)
    spec = FeatureSpec.for_description(DESCRIPTION, frame=df)
    df.loc[0, "user_zip_prefix"] = None
    df.loc[1, "user_age"] = np.nan
    x = frame_to_inputs(df, spec)
    assert x["user_id"].dtype == object and x["user_zip_prefix"][0] == ""
    assert x["user_age"].dtype == np.float32 and x["user_age"][1] == 0.0
    assert labels_of(df, spec).dtype == np.float32
    df.loc[3, "label"] = 2
    with pytest.raises(ValueError, match="row 3"):
        labels_of(df, spec)
    with pytest.raises(ValueError, match="lacks model input columns"):
        frame_to_inputs(df.drop(columns=["item_genres"]), spec)


def test_spec_from_the_shipped_movielens_description_matches_the_features_contract():
    from freshrec.data.datasets import load_description
    from freshrec.features import activity

    spec = FeatureSpec.for_description(load_description("movielens-100k"), id_hash_buckets=1000)
    expected_profile = {
        "user_gender",
        "user_age",
        "user_occupation",
        "user_zip_prefix",
        "item_genres",
        "item_year",
    }
    assert set(spec.input_names) == {"user_id", "item_id"} | expected_profile | set(
        USER_ACTIVITY + ITEM_ACTIVITY
    )
    assert activity.USER_ACTIVITY == USER_ACTIVITY and activity.ITEM_ACTIVITY == ITEM_ACTIVITY
    assert (
        "rating" not in spec.input_names
    )  # context column kept by the loader, never a feature (it is the label)
    assert (
        spec.feature("item_genres").encoding == "multi_hash"
        and spec.feature("item_year").encoding == "bucketize"
    )
