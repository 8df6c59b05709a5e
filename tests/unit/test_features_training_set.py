"""The pure pandas training frame: columns, order, profile defaults, point-in-time profiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from freshrec.features.activity import ITEM_ACTIVITY, USER_ACTIVITY, activity_as_of_events
from freshrec.features.training_set import build_training_frame
from tests.unit.test_features_activity import T0, random_events


def profiles(ev: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users/items in the data contract schema, leaving one user and one item of ``ev`` out."""
    uids = sorted(ev["user_id"].unique())[1:]
    iids = sorted(ev["item_id"].unique())[1:]
    users = pd.DataFrame(
        {
            "user_id": uids,
            "user_gender": ["F" if i % 2 else "M" for i in range(len(uids))],
            "user_age": np.arange(len(uids), dtype=np.int64) + 18,
            "user_occupation": ["writer"] * len(uids),
            "user_zip_prefix": ["551"] * len(uids),
        }
    )
    items = pd.DataFrame(
        {
            "item_id": iids,
            "item_genres": ["Comedy|Drama"] * len(iids),
            "item_year": np.full(len(iids), 1995, dtype=np.int64),
        }
    )
    return users, items


def test_columns_order_and_defaults():
    ev = random_events(300, 6, 9, seed=7).sample(frac=1.0, random_state=1)
    ev["context"] = "web"
    users, items = profiles(ev)
    frame = build_training_frame(ev, users, items)
    assert list(frame.columns) == [
        *ev.columns,
        "user_gender",
        "user_age",
        "user_occupation",
        "user_zip_prefix",
        "item_genres",
        "item_year",
        *USER_ACTIVITY,
        *ITEM_ACTIVITY,
    ]
    assert frame["event_id"].tolist() == ev["event_id"].tolist()
    missing_user = sorted(ev["user_id"].unique())[0]
    rows = frame[frame["user_id"] == missing_user]
    assert (rows["user_gender"] == "").all() and (rows["user_age"] == 0).all()
    missing_item = sorted(ev["item_id"].unique())[0]
    assert (frame.loc[frame["item_id"] == missing_item, "item_year"] == 0).all()
    assert frame["user_age"].dtype == np.int64 and frame["item_year"].dtype == np.int64
    known = frame[frame["user_id"] != missing_user]
    assert (known["user_age"] >= 18).all()
    pd.testing.assert_frame_equal(
        frame[USER_ACTIVITY + ITEM_ACTIVITY], activity_as_of_events(ev.reset_index(drop=True))
    )


def test_profiles_with_timestamps_are_joined_point_in_time():
    ev = random_events(100, 3, 4, seed=8)
    users, items = profiles(ev)
    uid = users["user_id"].iloc[0]
    mid = ev["event_timestamp"].quantile(0.5)
    # the profile of `uid` changes half way: earlier events must see the old value
    users = pd.concat(
        [
            users.assign(event_timestamp=T0 - pd.Timedelta(days=1)),
            users.iloc[[0]].assign(user_age=99, event_timestamp=mid),
        ]
    )
    frame = build_training_frame(ev, users, items)
    mine = frame[frame["user_id"] == uid]
    assert (mine.loc[mine["event_timestamp"] >= mid, "user_age"] == 99).all()
    assert (mine.loc[mine["event_timestamp"] < mid, "user_age"] != 99).all()
    assert "event_timestamp" in frame.columns and frame.columns.tolist().count("event_timestamp") == 1


def test_bad_input_names_the_column():
    ev = random_events(10, 2, 2)
    users, items = profiles(ev)
    with pytest.raises(ValueError, match="event_id"):
        build_training_frame(ev.drop(columns=["event_id"]), users, items)
    with pytest.raises(ValueError, match="item_id"):
        build_training_frame(ev, users, items.rename(columns={"item_id": "movie"}))
