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
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
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


class LookupTap:
    """The gateway's feature lookup, keeping what it answered: the features each request was ranked on.

    The gateway calls it (``lookup(user_id, item_ids, as_of=...)``, in its worker threads) instead of the
    online store's ``lookup_columns``; :meth:`take` hands the answers since the last call to the replay,
    which sends one request at a time, so they are the answers for its last request(s), in order.
    """

    def __init__(self, lookup: Callable[..., Any]) -> None:
        self._lookup = lookup
        self._lock = threading.Lock()
        self._answers: list[dict[str, np.ndarray]] = []

    def __call__(self, user_id: str, item_ids: list[str], as_of: Any = None) -> Any:
        found = self._lookup(user_id, item_ids, as_of=as_of)
        if isinstance(found, pd.DataFrame):
            cols = {str(c): found[c].to_numpy(copy=True) for c in found.columns}
        else:
            cols = {str(c): np.array(v, copy=True) for c in found for v in (found[c],)}
        cols.setdefault("user_id", np.full(len(item_ids), str(user_id), dtype=object))
        cols.setdefault("item_id", np.asarray([str(i) for i in item_ids], dtype=object))
        with self._lock:
            self._answers.append(cols)
        return found

    def take(self) -> list[dict[str, np.ndarray]]:
        """The lookups' answers since the last call (oldest first), each column → one value per item."""
        with self._lock:
            answers, self._answers = self._answers, []
        return answers


def request_time_frame(events: pd.DataFrame, looked_up: dict[str, np.ndarray]) -> pd.DataFrame:
    """A page's events with the features the gateway looked up for them (same item order) put in place.

    ``events`` are the page's impressions (ids, label, event time); the looked-up columns replace the
    frame's columns of the same name, so the frame holds exactly what the page was ranked on.
    """
    frame = events.reset_index(drop=True).copy()
    items = [str(i) for i in looked_up["item_id"]]
    if items != frame["item_id"].astype(str).tolist():
        raise ValueError("the lookup answered other items than the page's")
    for name, values in looked_up.items():
        if name not in ("user_id", "item_id"):
            frame[name] = values
    return frame


class ServedFeaturizer:
    """The learner's featurizer, training on what serving sees: the features each event was ranked on.

    Wraps a :class:`freshrec.online.learner.Featurizer` (its activity state, ``peek`` and ``fresh_rows``
    stay as they are, so checkpoints and pushes are unchanged): for an event whose page was served, the
    feature columns the gateway looked up replace the exact point-in-time ones, so the model learns the
    inputs it is then served with, not features that know the page's earlier impressions and that the
    online store gives only after the request. Events nobody served keep their exact features.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._served: list[pd.DataFrame] = []
        self._table: pd.DataFrame | None = None

    def __getattr__(self, name: str) -> Any:  # activity, peek, fresh_rows, users, items: the inner one's
        return getattr(self.__dict__["inner"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "activity":  # the learner restores a checkpoint's activity state onto its featurizer
            setattr(self.inner, name, value)
        else:
            super().__setattr__(name, value)

    def add(self, frame: pd.DataFrame) -> None:
        """Served rows (``request_time_frame``s): ``user_id``, ``item_id`` and the looked-up features."""
        self._served.append(frame)

    def __call__(self, events: pd.DataFrame) -> pd.DataFrame:
        frame = self.inner(events)
        if self._served:
            parts = [self._table] if self._table is not None else []
            self._table = pd.concat([*parts, *self._served], ignore_index=True).drop_duplicates(
                ["user_id", "item_id"], keep="last"
            )
            self._served = []
        table = self._table
        if table is None or table.empty or frame.empty:
            return frame
        keys = pd.MultiIndex.from_arrays(
            [frame["user_id"].astype(str).to_numpy(), frame["item_id"].astype(str).to_numpy()]
        )
        indexed = table.set_index(
            [table["user_id"].astype(str).to_numpy(), table["item_id"].astype(str).to_numpy()]
        )
        hit = keys.isin(indexed.index)
        if not hit.any():
            return frame
        rows = indexed.reindex(keys[hit])
        names = [c for c in table.columns if c in frame.columns and c not in _NOT_FEATURES]
        for name in names:
            values = frame[name].to_numpy(copy=True)
            values[hit] = rows[name].to_numpy().astype(values.dtype, copy=False)
            frame[name] = values
        # learned rows leave the table (an impression is learned once)
        self._table = indexed[~indexed.index.isin(keys[hit])].reset_index(drop=True)
        return frame


# Columns of a served row that are the event's own, not features the gateway looked up.
_NOT_FEATURES = frozenset({"user_id", "item_id", "event_id", "event_timestamp", "label"})
