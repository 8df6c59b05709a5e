"""Pure parts of the Feast glue (no store needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from freshrec.features.activity import HOURS_SINCE_LAST_CAP
from freshrec.features.store import _aged_hours, _entity_chunks


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
    assert _aged_hours(2.0, t, t + timedelta(days=90)) == HOURS_SINCE_LAST_CAP
    assert _aged_hours(HOURS_SINCE_LAST_CAP, t, t + timedelta(hours=1)) == HOURS_SINCE_LAST_CAP  # no history
    assert _aged_hours(2.0, t, t - timedelta(hours=1)) == 2.0  # a request before the row: no negative age
