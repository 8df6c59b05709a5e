"""The replay's traffic, in event time: pages of impressions and the click feed that follows them.

A replay window's impressions become pages (per user, ``page_size`` items in time order); the pages are
served in the order of their request time (``as_of``: a second before the page's first impression), and
before each one the window's events up to that time "land": the :class:`ClickFeed` applies them to the
activity state and writes the changed user and item rows to the online store, as the streaming feature
job does in a cluster. So every page is ranked on features that hold every event before its request, and
the learner (fed in the same time order) can export a version that learned them before the next pages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    """One ranking request of the replay: a user's next ``page_size`` impressions."""

    as_of: pd.Timestamp  # request time (event time): a second before the page's first impression
    user_id: str
    events: pd.DataFrame


def pages_of(window: pd.DataFrame, page_size: int) -> list[Page]:
    """The window's impressions as pages, in request-time order (ties: the user's own order)."""
    pages: list[Page] = []
    for user_id, group in window.groupby("user_id", sort=False):
        group = group.sort_values("event_timestamp", kind="stable").drop_duplicates("item_id")
        for i in range(0, len(group), page_size):
            part = group.iloc[i : i + page_size]
            pages.append(Page(part["event_timestamp"].min() - pd.Timedelta(seconds=1), str(user_id), part))
    pages.sort(key=lambda p: p.as_of)
    return pages


class ClickFeed:
    """Events land in event time: the activity state follows them and the changed rows go online.

    ``push(user_rows, item_rows)`` writes to the online store (``OnlineFeatures.push``); ``on_events`` gets
    every batch of events that landed, in time order (the loop appends them to the event log for the
    learner). A push that fails costs freshness, not the replay: it is logged and the next one catches up.
    """

    def __init__(
        self,
        history: pd.DataFrame,
        push: Callable[..., Any] | None,
        on_events: Callable[[pd.DataFrame], Any] | None = None,
    ) -> None:
        from freshrec.features.activity import ActivityState

        self.state = ActivityState()
        self.state.update(history)
        self.newest = history["event_timestamp"].max() if len(history) else None
        self.push_fn = push
        self.on_events = on_events
        self.pushes = 0
        self.push_failures = 0
        self._pending: pd.DataFrame | None = None
        self._cursor = 0

    def start_window(self, window: pd.DataFrame) -> None:
        """The window's events, in time order, wait to land (what is left of the last one lands first)."""
        self.finish()
        self._pending = window.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
        self._cursor = 0

    def advance(self, until: pd.Timestamp) -> int:
        """Land every waiting event before ``until``; push the rows they changed as of ``until``."""
        if self._pending is None:
            return 0
        ts = self._pending["event_timestamp"]
        end = int(ts.searchsorted(until, side="left"))
        if end <= self._cursor:
            return 0
        batch = self._pending.iloc[self._cursor : end]
        self._cursor = end
        self._land(batch, until)
        return len(batch)

    def finish(self) -> int:
        """Land what is left of the window (rows as of a microsecond after its newest event)."""
        if self._pending is None or self._cursor >= len(self._pending):
            self._pending = None
            return 0
        batch = self._pending.iloc[self._cursor :]
        self._pending = None
        self._land(batch, batch["event_timestamp"].max() + pd.Timedelta(microseconds=1))
        return len(batch)

    def _land(self, batch: pd.DataFrame, as_of: pd.Timestamp) -> None:
        self.state.update(batch)
        newest = batch["event_timestamp"].max()
        self.newest = newest if self.newest is None else max(self.newest, newest)
        if self.on_events is not None:
            self.on_events(batch)
        if self.push_fn is None:
            return
        users = pd.unique(batch["user_id"].astype(str))
        items = pd.unique(batch["item_id"].astype(str))
        try:
            self.push_fn(
                user_rows=self.state.user_rows(users, as_of), item_rows=self.state.item_rows(items, as_of)
            )
            self.pushes += 1
        except Exception as exc:  # a feature-store hiccup costs freshness, not the replay
            self.push_failures += 1
            log.warning("pushing activity rows as of %s failed: %s", as_of, exc)
