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


def test_the_tap_keeps_what_each_request_was_ranked_on_and_the_learner_can_learn_exactly_that():
    """The gateway's lookup (here: the click feed's activity state as of the request, which is what the
    feed pushed) is tapped; a page's request-time frame holds those features, not the exact ones that know
    the page's earlier impressions; the served featurizer gives the learner the same features."""
    from freshrec.features.activity import USER_ACTIVITY
    from freshrec.loop.replay import LookupTap, ServedFeaturizer, request_time_frame
    from freshrec.online.learner import Featurizer

    history = _events([("u1", "i1", 1, "2020-01-01 00:00"), ("u2", "i1", 0, "2020-01-01 01:00")])
    window = _events(
        [
            ("u1", "i2", 1, "2020-01-02 10:00"),
            ("u1", "i3", 0, "2020-01-02 10:01"),
            ("u2", "i2", 1, "2020-01-02 11:00"),
        ]
    )
    history["event_id"] = ["h1", "h2"]
    window["event_id"] = ["e1", "e2", "e3"]
    feed = ClickFeed(history, None)

    def lookup(user_id, item_ids, as_of=None):
        ts = pd.Timestamp(as_of)
        users = feed.state.user_rows([user_id] * len(item_ids), ts).drop(columns="event_timestamp")
        items = feed.state.item_rows(item_ids, ts).drop(columns=["event_timestamp", "item_id"])
        return pd.concat([users, items], axis=1).assign(item_id=list(item_ids))

    tap = LookupTap(lookup)
    feed.start_window(window)
    frames = []
    for page in pages_of(window, page_size=10):
        feed.advance(page.as_of)
        tap(page.user_id, page.events["item_id"].tolist(), as_of=page.as_of.to_pydatetime())
        (answer,) = tap.take()
        frames.append(request_time_frame(page.events, answer))
    feed.finish()
    assert tap.take() == []
    u1 = frames[0]
    assert u1["user_id"].tolist() == ["u1", "u1"]
    # both of u1's impressions were ranked on u1's activity before the page: one event, one click
    assert u1["user_events_total"].tolist() == [1.0, 1.0]

    users = pd.DataFrame({"user_id": ["u1", "u2"]})
    items = pd.DataFrame({"item_id": ["i1", "i2", "i3"]})
    exact = Featurizer(users, items)
    exact.activity.update(history)
    served = ServedFeaturizer(Featurizer(users, items))
    served.activity.update(history)
    for frame in frames:
        served.add(frame)
    got = served(window.sort_values("event_timestamp", ignore_index=True))
    want = exact(window.sort_values("event_timestamp", ignore_index=True))
    # the exact features of u1's second impression know the first; the served ones (and the learner's) not
    assert want["user_events_total"].tolist() == [1.0, 2.0, 1.0]
    assert got["user_events_total"].tolist() == [1.0, 1.0, 1.0]
    rt = pd.concat(frames, ignore_index=True).sort_values("event_timestamp", ignore_index=True)
    for name in USER_ACTIVITY:
        assert got[name].tolist() == rt[name].tolist(), name
    # the wrapped featurizer's activity state moved on with the events, as the exact one did
    assert served.activity.events_seen == exact.activity.events_seen == len(history) + len(window)
    # learned rows leave the table: the same impression again (a redelivery) gets its exact features
    again = served(window.sort_values("event_timestamp", ignore_index=True).iloc[[1]])
    assert again["user_events_total"].tolist() == [want["user_events_total"].iloc[1]] == [2.0]
