"""The replay's pages and click feed: requests in time order, features hold exactly the earlier events."""

from __future__ import annotations

import pandas as pd

from freshrec.features.activity import ActivityState
from freshrec.loop.replay import ClickFeed, pages_of


def _events(rows):
    return pd.DataFrame(
        [
            {"user_id": u, "item_id": i, "label": y, "event_timestamp": pd.Timestamp(t, tz="UTC")}
            for u, i, y, t in rows
        ]
    )


def test_pages_are_in_request_time_order_and_the_feed_lands_only_earlier_events():
    history = _events([("u1", "i1", 1, "2020-01-01 00:00")])
    window = _events(
        [
            ("u1", "i2", 1, "2020-01-02 10:00"),
            ("u1", "i3", 0, "2020-01-02 10:01"),
            ("u2", "i2", 1, "2020-01-02 09:00"),
            ("u2", "i4", 1, "2020-01-02 11:00"),
        ]
    )
    pushed: list[tuple[pd.DataFrame, pd.DataFrame]] = []
    landed: list[pd.DataFrame] = []
    feed = ClickFeed(
        history, lambda user_rows, item_rows: pushed.append((user_rows, item_rows)), landed.append
    )
    pages = pages_of(window, page_size=2)
    assert [(p.user_id, len(p.events)) for p in pages] == [("u2", 2), ("u1", 2)]
    assert pages[0].as_of == pd.Timestamp("2020-01-02 08:59:59", tz="UTC")

    feed.start_window(window)
    assert feed.advance(pages[0].as_of) == 0 and not pushed  # nothing happened before the first request
    assert feed.advance(pages[1].as_of) == 1  # u2's 09:00 event landed before u1's 09:59:59 request
    users, items = pushed[-1]
    assert users["user_id"].tolist() == ["u2"] and items["item_id"].tolist() == ["i2"]
    expected = ActivityState()
    expected.update(pd.concat([history, window.iloc[[2]]]))
    pd.testing.assert_frame_equal(items, expected.item_rows(["i2"], pages[1].as_of))
    assert feed.finish() == 3  # the rest of the window lands at its end, in time order
    got = pd.concat(landed)
    assert got["event_timestamp"].is_monotonic_increasing and len(got) == len(window)
    assert feed.newest == window["event_timestamp"].max()
