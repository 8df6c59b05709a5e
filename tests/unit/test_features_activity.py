"""Activity features: strictly-earlier semantics, windows, smoothing, Feast rows, online parity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from freshrec.features.activity import (
    CTR_PRIOR,
    CTR_PRIOR_STRENGTH,
    HOURS_SINCE_LAST_CAP,
    ITEM_ACTIVITY,
    TAIL_OFFSET,
    USER_ACTIVITY,
    ActivityState,
    activity_as_of,
    activity_as_of_events,
    activity_defaults,
    compute_activity,
)

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def make_events(rows: list[tuple[str, str, float, int]]) -> pd.DataFrame:
    """Events in the data contract schema from (user, item, hours after T0, label)."""
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(rows))],
            "event_timestamp": pd.to_datetime([T0 + pd.Timedelta(hours=h) for _, _, h, _ in rows], utc=True),
            "user_id": [u for u, _, _, _ in rows],
            "item_id": [i for _, i, _, _ in rows],
            "label": np.array([lab for _, _, _, lab in rows], dtype=np.int8),
        }
    )


def random_events(n: int, n_users: int, n_items: int, seed: int = 0, days: float = 90.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # whole hours so that many events share a timestamp (the tricky case)
    hours = np.sort(rng.integers(0, int(days * 24), size=n))
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "event_timestamp": T0 + pd.to_timedelta(hours, unit="h"),
            "user_id": rng.integers(0, n_users, size=n).astype(str),
            "item_id": ("i" + pd.Series(rng.integers(0, n_items, size=n).astype(str))).to_numpy(),
            "label": rng.integers(0, 2, size=n).astype(np.int8),
        }
    )


def naive_loop(events: pd.DataFrame) -> pd.DataFrame:
    """Per-row reference: the slow obvious definition."""
    out = []
    ts = events["event_timestamp"]
    for _, ev in events.iterrows():
        row = {}
        for entity in ("user", "item"):
            mine = events[(events[f"{entity}_id"] == ev[f"{entity}_id"]) & (ts < ev["event_timestamp"])]
            for days in (1, 7, 30):
                w = mine[mine["event_timestamp"] >= ev["event_timestamp"] - pd.Timedelta(days=days)]
                row[f"{entity}_events_{days}d"] = len(w)
                if days == 30:
                    row[f"{entity}_ctr_30d"] = (w["label"].sum() + CTR_PRIOR_STRENGTH * CTR_PRIOR) / (
                        len(w) + CTR_PRIOR_STRENGTH
                    )
            row[f"{entity}_events_total"] = len(mine)
            row[f"{entity}_ctr_total"] = (mine["label"].sum() + CTR_PRIOR_STRENGTH * CTR_PRIOR) / (
                len(mine) + CTR_PRIOR_STRENGTH
            )
            if len(mine):
                hours = (ev["event_timestamp"] - mine["event_timestamp"].max()) / pd.Timedelta(hours=1)
                row[f"{entity}_hours_since_last"] = min(hours, HOURS_SINCE_LAST_CAP)
            else:
                row[f"{entity}_hours_since_last"] = HOURS_SINCE_LAST_CAP
        out.append(row)
    return pd.DataFrame(out)[USER_ACTIVITY + ITEM_ACTIVITY].astype(np.float32)


def test_hand_checked_values_and_same_timestamp_blindness():
    ev = make_events(
        [
            ("u1", "a", 0, 1),
            ("u1", "b", 0, 0),  # same timestamp as the first: neither sees the other
            ("u1", "a", 12, 1),
            ("u1", "c", 24 * 3, 0),
            ("u2", "a", 24 * 40, 1),
        ]
    )
    act = activity_as_of_events(ev)
    assert act["user_events_total"].tolist() == [0, 0, 2, 3, 0]
    assert act["user_events_1d"].tolist() == [0, 0, 2, 0, 0]
    assert act["user_events_7d"].tolist() == [0, 0, 2, 3, 0]
    assert act["user_hours_since_last"].tolist() == [HOURS_SINCE_LAST_CAP, HOURS_SINCE_LAST_CAP, 12, 60, 720]
    assert act["item_events_total"].tolist() == [0, 0, 1, 0, 2]
    # item a at day 40: two earlier events (both clicks) but outside the 30-day window
    assert act.loc[4, "item_events_30d"] == 0
    assert act.loc[4, "item_ctr_total"] == pytest.approx(
        (2 + CTR_PRIOR_STRENGTH * CTR_PRIOR) / (2 + CTR_PRIOR_STRENGTH)
    )
    assert act.loc[4, "item_ctr_30d"] == pytest.approx(CTR_PRIOR)
    assert act.loc[2, "user_ctr_30d"] == pytest.approx(
        (1 + CTR_PRIOR_STRENGTH * CTR_PRIOR) / (2 + CTR_PRIOR_STRENGTH)
    )
    assert all(act[c].dtype == np.float32 for c in act.columns)


def test_vectorised_equals_per_row_definition_on_random_events():
    ev = random_events(250, n_users=10, n_items=15, seed=3)
    fast = activity_as_of_events(ev)
    slow = naive_loop(ev)
    pd.testing.assert_frame_equal(fast.reset_index(drop=True), slow, check_exact=False, rtol=1e-6)


def test_input_order_is_kept():
    ev = random_events(200, 10, 10, seed=1)
    shuffled = ev.sample(frac=1.0, random_state=0)
    a = activity_as_of_events(shuffled)
    assert list(a.index) == list(shuffled.index)
    pd.testing.assert_frame_equal(a.sort_index(), activity_as_of_events(ev))


def test_feast_rows_give_strictly_earlier_state_under_asof_join():
    ev = random_events(300, 8, 12, seed=2)
    users, _items = compute_activity(ev)
    assert not users.duplicated(["user_id", "event_timestamp"]).any()
    expected = activity_as_of_events(ev)
    # Feast's rule: latest row with row_ts <= event_ts, per entity
    left = ev[["user_id", "event_timestamp"]].reset_index().sort_values("event_timestamp")
    joined = pd.merge_asof(left, users.sort_values("event_timestamp"), on="event_timestamp", by="user_id")
    joined = joined.set_index("index").sort_index()
    pd.testing.assert_frame_equal(joined[USER_ACTIVITY], expected[USER_ACTIVITY], check_names=False)
    # tail rows: after the last event, holding everything
    tail = users.sort_values("event_timestamp").groupby("user_id").tail(1).set_index("user_id")
    counts = ev.groupby("user_id").size()
    assert (tail["user_events_total"] == counts.reindex(tail.index)).all()
    last = ev.groupby("user_id")["event_timestamp"].max()
    assert (tail["event_timestamp"] == last.reindex(tail.index) + TAIL_OFFSET).all()


def test_activity_as_of_unknown_ids_get_defaults():
    ev = random_events(50, 3, 3, seed=4)
    got = activity_as_of(ev, "item", ["nope"], T0 + pd.Timedelta(days=100))
    assert got.iloc[0][ITEM_ACTIVITY].to_dict() == pytest.approx(activity_defaults("item"))
    with pytest.raises(ValueError, match="entity"):
        activity_as_of(ev, "shop", ["x"], T0)
    with pytest.raises(ValueError, match="label"):
        activity_as_of_events(ev.drop(columns=["label"]))


def test_activity_state_matches_offline_in_micro_batches():
    ev = random_events(600, 12, 20, seed=5, days=120)
    expected = activity_as_of_events(ev)
    state = ActivityState()
    got_u, got_i = [], []
    # batches cut through groups of equal timestamps on purpose; the state holds the batch itself and
    # must still answer with strictly earlier events only
    for start in range(0, len(ev), 37):
        batch = ev.iloc[start : start + 37]
        state.update(batch)
        got_u.append(state.user_rows(batch["user_id"], batch["event_timestamp"]))
        got_i.append(state.item_rows(batch["item_id"], batch["event_timestamp"]))
    users = pd.concat(got_u, ignore_index=True)
    items = pd.concat(got_i, ignore_index=True)
    pd.testing.assert_frame_equal(users[USER_ACTIVITY], expected[USER_ACTIVITY].reset_index(drop=True))
    pd.testing.assert_frame_equal(items[ITEM_ACTIVITY], expected[ITEM_ACTIVITY].reset_index(drop=True))
    assert state.events_seen == len(ev)
    # and "now" after everything equals the Feast tail rows
    now = ev["event_timestamp"].max() + pd.Timedelta(hours=5)
    ids = sorted(ev["user_id"].unique())
    pd.testing.assert_frame_equal(
        state.user_rows(ids, now)[USER_ACTIVITY], activity_as_of(ev, "user", ids, now)[USER_ACTIVITY]
    )
