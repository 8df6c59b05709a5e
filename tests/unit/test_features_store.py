"""Pure parts of the Feast glue (no store needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from feast.protos.feast.types.Value_pb2 import Null, Value

from freshrec.features.activity import CTR_PRIOR, HOURS_SINCE_LAST_CAP
from freshrec.features.store import (
    _age_activity,
    _aged_hours,
    _decode_column,
    _entity_chunks,
    _value_to_python,
)


def test_entity_chunks_keep_whole_entities_and_bound_the_join():
    rng = np.random.default_rng(0)
    ids = rng.choice([f"u{k}" for k in range(50)], size=2000, p=np.r_[[0.3], np.full(49, 0.7 / 49)])
    pairs = pd.DataFrame({"user_id": ids, "event_timestamp": np.arange(2000)})
    budget = 5000
    chunks = _entity_chunks(pairs, "user_id", budget)
    assert len(chunks) > 3
    together = pd.concat(chunks).sort_values("event_timestamp")
    pd.testing.assert_frame_equal(together.reset_index(drop=True), pairs)
    owners = [set(c["user_id"]) for c in chunks]
    assert sum(len(o) for o in owners) == pairs["user_id"].nunique()  # no entity split across chunks
    biggest = pairs["user_id"].value_counts().max() ** 2
    for c in chunks:
        cost = (c["user_id"].value_counts() ** 2).sum()
        assert cost <= budget + biggest


def test_aged_hours():
    t = datetime(2024, 1, 1, tzinfo=UTC)
    assert _aged_hours(2.0, t, t + timedelta(hours=3)) == 5.0
    assert _aged_hours(2.0, t, t + timedelta(days=90)) == 2.0 + 90 * 24  # uncapped: windows need it
    assert _aged_hours(HOURS_SINCE_LAST_CAP, t, t + timedelta(hours=1)) == HOURS_SINCE_LAST_CAP  # no history
    assert _aged_hours(2.0, t, t - timedelta(hours=1)) == 2.0  # a request before the row: no negative age


def test_age_activity_caps_hours_and_empties_windows_the_last_event_has_left():
    t = datetime(2024, 1, 1, tzinfo=UTC)

    def stored() -> dict[str, np.ndarray]:
        # rows stamped t: last event 2 h, 3 days and 20 days before t; the fourth id has no row
        return {
            "user_hours_since_last": np.array([2.0, 72.0, 480.0, HOURS_SINCE_LAST_CAP], np.float32),
            "user_events_1d": np.array([5, 0, 0, 0], np.float32),
            "user_events_7d": np.array([9, 4, 0, 0], np.float32),
            "user_events_30d": np.array([20, 8, 3, 0], np.float32),
            "user_ctr_30d": np.array([0.6, 0.7, 0.4, CTR_PRIOR], np.float32),
        }

    found = [True, True, True, False]
    cols = stored()
    _age_activity(cols, "user", found, [t] * 4, lambda ts: ts, t + timedelta(days=5))
    # ages 122 h, 192 h, 600 h: the 1-day window has lost every last event, the 7-day one two of them
    np.testing.assert_allclose(cols["user_hours_since_last"], [122.0, 192.0, 600.0, HOURS_SINCE_LAST_CAP])
    np.testing.assert_array_equal(cols["user_events_1d"], [0, 0, 0, 0])
    np.testing.assert_array_equal(cols["user_events_7d"], [9, 0, 0, 0])
    np.testing.assert_array_equal(cols["user_events_30d"], [20, 8, 3, 0])
    np.testing.assert_allclose(cols["user_ctr_30d"], [0.6, 0.7, 0.4, CTR_PRIOR])
    cols = stored()
    _age_activity(cols, "user", found, [t] * 4, lambda ts: ts, t + timedelta(days=15))
    # ages 362 h, 432 h, 840 h (served capped at 720): the third row's 30-day window is empty
    np.testing.assert_allclose(cols["user_hours_since_last"], [362.0, 432.0, 720.0, 720.0])
    np.testing.assert_array_equal(cols["user_events_7d"], [0, 0, 0, 0])
    np.testing.assert_array_equal(cols["user_events_30d"], [20, 8, 0, 0])
    np.testing.assert_allclose(cols["user_ctr_30d"], [0.6, 0.7, CTR_PRIOR, CTR_PRIOR])


@pytest.mark.parametrize(
    ("values", "default", "dtype"),
    [
        ([Value(float_val=x) for x in (0.0, 1.5, -3.25e-9, 7e30)], 0.5, np.float32),  # bulk path
        ([Value(double_val=x) for x in (0.1, -2.0, 1e300)], 0.0, np.float64),  # bulk path
        ([Value(float_val=0.1), Value(double_val=0.2), Value(float_val=0.3)], 0.0, np.float32),  # mixed kinds
        ([Value(float_val=1.0), Value(int64_val=2**25)], 0.0, np.float32),  # same size, another kind
        (
            [Value(float_val=1.0), Value(), Value(null_val=Null.NULL), None],
            720.0,
            np.float32,
        ),  # missing/unset
        ([Value(int64_val=x) for x in (0, -1, 2**40, 1998)], 0, np.int64),
        ([Value(string_val=x) for x in ("", "Comedy|Romance", "é" * 300, "1|2|3")] + [None], "", object),
        ([None, None], "x", object),
    ],
)
def test_decode_column_equals_parsing_each_value_proto(values, default, dtype):
    blobs = [None if v is None else v.SerializeToString() for v in values]
    want = np.asarray([_value_to_python(v, default) for v in values], dtype=dtype)
    got = _decode_column(blobs, default, dtype)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
