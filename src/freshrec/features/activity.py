"""User and item activity features, as of a time, from strictly earlier events only.

For an entity (a user or an item) and a time ``t`` the features use the events of that entity with
``event_timestamp < t``: events at the same timestamp never see each other, so a training row cannot
leak its own label (or a simultaneous one) into its features.

Features (``USER_ACTIVITY``; ``ITEM_ACTIVITY`` is the same with the ``item_`` prefix), all float32:

- ``<p>_events_1d|7d|30d``: events in ``[t - window, t)``; ``<p>_events_total``: all events before ``t``.
- ``<p>_ctr_30d``, ``<p>_ctr_total``: click rate smoothed towards a *fixed* prior,
  ``(clicks + CTR_PRIOR_STRENGTH * CTR_PRIOR) / (events + CTR_PRIOR_STRENGTH)``. The prior is fixed
  (not the running global CTR) so that an entity's value only changes with its own events, which is
  what lets Feast store one row per entity change and the online :class:`ActivityState` agree exactly.
  With no history the value is ``CTR_PRIOR``.
- ``<p>_hours_since_last``: hours since the entity's latest earlier event, capped at
  ``HOURS_SINCE_LAST_CAP`` (30 days); with no history it is the cap.

Rows for Feast (:func:`compute_activity`): for every entity and every distinct timestamp ``t`` at which it
has events, one row stamped ``t`` holding the features as of *before* ``t``; plus one "tail" row per entity
stamped ``last + TAIL_OFFSET`` holding the state after its last event (what the online store should serve).
Feast's point-in-time join takes the latest row with ``row_ts <= event_ts``, so an event at ``t`` gets the
row stamped ``t``: exactly the strictly-earlier state, with the windows evaluated at ``t``.

Everything is vectorised: events are sorted by (entity, time) once and every window bound is a
``numpy.searchsorted`` on an int64 key ``entity_code * (n_times + 1) + time_rank``.
"""

from __future__ import annotations

import zipfile
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

WINDOWS_DAYS: tuple[int, ...] = (1, 7, 30)
CTR_PRIOR = 0.5
CTR_PRIOR_STRENGTH = 10.0
HOURS_SINCE_LAST_CAP = 720.0
TAIL_OFFSET = pd.Timedelta(microseconds=1)

_SUFFIXES = [
    "events_1d",
    "events_7d",
    "events_30d",
    "events_total",
    "ctr_30d",
    "ctr_total",
    "hours_since_last",
]
USER_ACTIVITY: list[str] = [f"user_{s}" for s in _SUFFIXES]
ITEM_ACTIVITY: list[str] = [f"item_{s}" for s in _SUFFIXES]
ACTIVITY_DTYPE = np.float32

_NS_PER_DAY = 86_400 * 10**9
_NS_PER_HOUR = 3_600 * 10**9
_REQUIRED = ("event_timestamp", "user_id", "item_id", "label")


def activity_defaults(prefix: str) -> dict[str, float]:
    """Feature values for an entity with no history (unknown ids)."""
    return {
        f"{prefix}_events_1d": 0.0,
        f"{prefix}_events_7d": 0.0,
        f"{prefix}_events_30d": 0.0,
        f"{prefix}_events_total": 0.0,
        f"{prefix}_ctr_30d": CTR_PRIOR,
        f"{prefix}_ctr_total": CTR_PRIOR,
        f"{prefix}_hours_since_last": HOURS_SINCE_LAST_CAP,
    }


def _smoothed_ctr(clicks: np.ndarray, events: np.ndarray) -> np.ndarray:
    return (clicks + CTR_PRIOR_STRENGTH * CTR_PRIOR) / (events + CTR_PRIOR_STRENGTH)


def _check_events(events: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in events.columns]
    if missing:
        raise ValueError(f"events frame lacks column(s) {missing}; has {list(events.columns)}")


def _ts_ns(values: pd.Series | pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    """UTC timestamps as int64 nanoseconds (naive values are taken as UTC)."""
    ts = pd.to_datetime(values, utc=True)
    if isinstance(ts, pd.Series):
        ts = pd.DatetimeIndex(ts)
    return ts.as_unit("ns").asi8


class _History:
    """One entity column of an event frame, sorted by (entity, time), ready for as-of queries."""

    def __init__(self, ids: np.ndarray, ts_ns: np.ndarray, labels: np.ndarray) -> None:
        self.vocab, codes = np.unique(ids, return_inverse=True)
        self.times = np.unique(ts_ns)
        self.base = np.int64(len(self.times) + 1)
        rank = np.searchsorted(self.times, ts_ns)
        keys = codes.astype(np.int64) * self.base + rank
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.ts = ts_ns[order]
        self.clicks = np.concatenate([[0], np.cumsum(labels[order].astype(np.int64))])

    def codes_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes of ``ids`` in the vocabulary and a mask of the ids that have any history."""
        pos = np.searchsorted(self.vocab, ids)
        pos = np.minimum(pos, max(len(self.vocab) - 1, 0))
        known = (self.vocab[pos] == ids) if len(self.vocab) else np.zeros(len(ids), dtype=bool)
        return pos.astype(np.int64), known

    def _pos(self, codes: np.ndarray, q_ns: np.ndarray) -> np.ndarray:
        # index of the first event of `codes` with time >= q (events before it are strictly earlier)
        rank = np.searchsorted(self.times, q_ns, side="left")
        return np.searchsorted(self.keys, codes * self.base + rank, side="left")

    def as_of(self, ids: np.ndarray, q_ns: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
        codes, known = self.codes_of(ids)
        start = np.searchsorted(self.keys, codes * self.base, side="left")
        hi = self._pos(codes, q_ns)
        hi = np.where(known, hi, start)
        out: dict[str, np.ndarray] = {}
        counts: dict[int, np.ndarray] = {}
        clicks: dict[int, np.ndarray] = {}
        for days in WINDOWS_DAYS:
            lo = np.where(known, self._pos(codes, q_ns - days * _NS_PER_DAY), start)
            counts[days] = (hi - lo).astype(np.float64)
            clicks[days] = (self.clicks[hi] - self.clicks[lo]).astype(np.float64)
            out[f"{prefix}_events_{days}d"] = counts[days]
        total = (hi - start).astype(np.float64)
        out[f"{prefix}_events_total"] = total
        out[f"{prefix}_ctr_30d"] = _smoothed_ctr(clicks[30], counts[30])
        out[f"{prefix}_ctr_total"] = _smoothed_ctr(
            (self.clicks[hi] - self.clicks[start]).astype(np.float64), total
        )
        has_prev = hi > start
        prev_ts = self.ts[np.maximum(hi - 1, 0)] if len(self.ts) else np.zeros(len(hi), dtype=np.int64)
        hours = np.where(has_prev, (q_ns - prev_ts) / _NS_PER_HOUR, HOURS_SINCE_LAST_CAP)
        out[f"{prefix}_hours_since_last"] = np.minimum(hours, HOURS_SINCE_LAST_CAP)
        return {k: v.astype(ACTIVITY_DTYPE) for k, v in out.items()}


def _entity_history(events: pd.DataFrame, key: str) -> _History:
    return _History(
        events[key].astype(str).to_numpy(dtype=object).astype(str),
        _ts_ns(events["event_timestamp"]),
        events["label"].to_numpy(),
    )


def activity_as_of(
    events: pd.DataFrame, entity: str, ids: Iterable[str], as_of: pd.Timestamp | pd.Series | np.ndarray
) -> pd.DataFrame:
    """Activity features of ``entity`` ("user" or "item") for ``ids`` at ``as_of`` (scalar or per id).

    Uses the events strictly before ``as_of``; unknown ids get :func:`activity_defaults`.
    """
    if entity not in ("user", "item"):
        raise ValueError(f"entity must be 'user' or 'item', got {entity!r}")
    _check_events(events)
    ids_arr = np.asarray(list(ids), dtype=str)
    q = _as_of_ns(as_of, len(ids_arr))
    feats = _entity_history(events, f"{entity}_id").as_of(ids_arr, q, entity)
    return pd.DataFrame({f"{entity}_id": ids_arr.astype(object), **feats})


def _as_of_ns(as_of: pd.Timestamp | pd.Series | np.ndarray | str, n: int) -> np.ndarray:
    if isinstance(as_of, pd.Series | np.ndarray | pd.DatetimeIndex | list):
        q = _ts_ns(as_of)
        if len(q) != n:
            raise ValueError(f"as_of has {len(q)} values for {n} ids")
        return q
    return np.full(n, _ts_ns(pd.DatetimeIndex([pd.Timestamp(as_of)]))[0], dtype=np.int64)


def activity_as_of_events(events: pd.DataFrame, history: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per event (same index and order): ``USER_ACTIVITY + ITEM_ACTIVITY`` as of its time.

    Args:
        history: the events the features are computed from (strictly earlier ones only); default
            ``events`` itself. A split's rows get a history that leaves out later splits.
    """
    _check_events(events)
    hist = events if history is None else history
    _check_events(hist)
    q = _ts_ns(events["event_timestamp"])
    cols: dict[str, np.ndarray] = {}
    for entity in ("user", "item"):
        key = f"{entity}_id"
        ids = events[key].astype(str).to_numpy(dtype=object).astype(str)
        cols.update(_entity_history(hist, key).as_of(ids, q, entity))
    return pd.DataFrame(cols, index=events.index)


def _entity_rows(events: pd.DataFrame, entity: str) -> pd.DataFrame:
    key = f"{entity}_id"
    hist = _entity_history(events, key)
    pairs = pd.DataFrame({key: events[key].astype(str).to_numpy(), "ts": _ts_ns(events["event_timestamp"])})
    pairs = pairs.drop_duplicates()
    last = pairs.groupby(key, sort=False)["ts"].max()
    tail = pd.DataFrame({key: last.index.to_numpy(), "ts": last.to_numpy() + TAIL_OFFSET.value})
    rows = pd.concat([pairs, tail], ignore_index=True).sort_values([key, "ts"], kind="stable")
    ids = rows[key].to_numpy(dtype=str)
    q = rows["ts"].to_numpy(dtype=np.int64)
    feats = hist.as_of(ids, q, entity)
    ts = pd.to_datetime(q, utc=True)
    return pd.DataFrame({key: ids.astype(object), "event_timestamp": ts, **feats}).reset_index(drop=True)


def compute_activity(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Timestamped activity rows for Feast: ``(user_rows, item_rows)``.

    Each frame has ``<entity>_id``, ``event_timestamp`` (UTC) and the activity features. A row stamped at
    an event time ``t`` holds the state as of before ``t``; the last row of each entity, stamped
    ``last_event + TAIL_OFFSET``, holds the state after all its events (see the module docstring).
    """
    _check_events(events)
    return _entity_rows(events, "user"), _entity_rows(events, "item")


@dataclass
class _EntityState:
    recent: deque[tuple[int, int]] = field(default_factory=deque)  # (ts_ns, label), time-ordered
    total: int = 0
    clicks: int = 0
    # time of the newest event that has left `recent` (needed for hours_since_last when `recent` is empty)
    last_dropped_ns: int | None = None


class ActivityState:
    """Incremental activity state for the online learner; gives the same numbers as the offline code.

    Per entity it keeps a deque of the (time, label) pairs of its last 60 days plus running totals.
    Queries must be at ``as_of >= newest event of the entity - 30 days`` to be exact (the online learner
    asks about "now" or about the events of the batch it just added). Events may arrive in any order within a batch; an event older than the
    entity's newest is inserted in time order.
    """

    def __init__(self) -> None:
        self._states: dict[str, dict[str, _EntityState]] = {"user": {}, "item": {}}
        self.events_seen = 0

    def update(self, events: pd.DataFrame) -> None:
        """Add a batch of events (event frame with at least event_timestamp, user_id, item_id, label)."""
        _check_events(events)
        if events.empty:
            return
        ts = _ts_ns(events["event_timestamp"])
        labels = events["label"].to_numpy().astype(np.int64)
        order = np.argsort(ts, kind="stable")
        ts_sorted = ts[order]
        lab_sorted = labels[order]
        for entity in ("user", "item"):
            ids = events[f"{entity}_id"].astype(str).to_numpy()[order]
            vocab, codes = np.unique(ids, return_inverse=True)
            by_id = np.argsort(codes, kind="stable")  # grouped by id, time order kept inside a group
            bounds = np.flatnonzero(np.diff(codes[by_id])) + 1
            starts = np.concatenate([[0], bounds]).tolist()
            ends = np.concatenate([bounds, [len(by_id)]]).tolist()
            g_ts = ts_sorted[by_id].tolist()
            g_lab = lab_sorted[by_id].tolist()
            g_codes = codes[by_id]
            g_clicks = np.add.reduceat(lab_sorted[by_id], starts).tolist() if len(by_id) else []
            states = self._states[entity]
            # one Python step per entity in the batch (not per event): the deque is extended in bulk
            for k, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
                eid = str(vocab[g_codes[lo]])
                st = states.get(eid)
                if st is None:
                    st = states[eid] = _EntityState()
                pairs = list(zip(g_ts[lo:hi], g_lab[lo:hi], strict=True))
                if st.recent and pairs[0][0] < st.recent[-1][0]:
                    st.recent = deque(sorted([*st.recent, *pairs]))
                else:
                    st.recent.extend(pairs)
                st.total += len(pairs)
                st.clicks += int(g_clicks[k])
                # keep 2 x 30 days so that queries up to 30 days before the newest event stay exact
                horizon = st.recent[-1][0] - 2 * WINDOWS_DAYS[-1] * _NS_PER_DAY
                while st.recent and st.recent[0][0] < horizon:
                    st.last_dropped_ns = st.recent.popleft()[0]
        self.events_seen += len(events)

    def _rows(
        self, entity: str, ids: Iterable[str], as_of: pd.Timestamp | pd.Series | np.ndarray
    ) -> pd.DataFrame:
        ids_list = [str(i) for i in ids]
        q_all = _as_of_ns(as_of, len(ids_list))
        states = self._states[entity]
        defaults = activity_defaults(entity)
        n = len(ids_list)
        sts = [states.get(eid) for eid in ids_list]
        have = np.asarray([st is not None and st.total > 0 for st in sts], dtype=bool)
        cols: dict[str, np.ndarray] = {
            name: np.full(n, value, dtype=np.float64) for name, value in defaults.items()
        }
        rows = np.flatnonzero(have)
        if len(rows):
            # every known id's recent (time, label) pairs, concatenated; segment k belongs to rows[k]
            known = [sts[r] for r in rows.tolist()]
            lengths = np.asarray([len(st.recent) for st in known], dtype=np.int64)
            size = int(lengths.sum())
            rts = np.fromiter((p[0] for st in known for p in st.recent), dtype=np.int64, count=size)
            rlab = np.fromiter((p[1] for st in known for p in st.recent), dtype=np.float64, count=size)
            seg = np.repeat(np.arange(len(rows)), lengths)
            q = q_all[rows]
            qs = q[seg]
            before = rts < qs
            k = len(rows)

            def per_segment(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
                w = mask.astype(np.float64) if weights is None else np.where(mask, weights, 0.0)
                return np.bincount(seg, weights=w, minlength=k)

            n_before = per_segment(before)
            later = lengths - n_before
            totals = np.asarray([st.total for st in known], dtype=np.float64) - later
            clicks_later = per_segment(~before, rlab)
            total_clicks = np.asarray([st.clicks for st in known], dtype=np.float64) - clicks_later
            for days in WINDOWS_DAYS:
                in_win = before & (rts >= qs - days * _NS_PER_DAY)
                count = per_segment(in_win)
                cols[f"{entity}_events_{days}d"][rows] = count
                if days == WINDOWS_DAYS[-1]:
                    cols[f"{entity}_ctr_30d"][rows] = _smoothed_ctr(per_segment(in_win, rlab), count)
            cols[f"{entity}_events_total"][rows] = totals
            cols[f"{entity}_ctr_total"][rows] = _smoothed_ctr(total_clicks, totals)
            # recent is time-ordered: the events before q are a prefix; the newest of them is its last
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            nb = n_before.astype(np.int64)
            last_idx = np.maximum(starts + nb - 1, 0)
            prev_recent = rts[last_idx] if size else np.zeros(k, dtype=np.int64)
            dropped = np.asarray(
                [-1 if st.last_dropped_ns is None else st.last_dropped_ns for st in known], dtype=np.int64
            )
            has_dropped = np.asarray([st.last_dropped_ns is not None for st in known], dtype=bool)
            prev = np.where(nb > 0, prev_recent, dropped)
            has_prev = (nb > 0) | has_dropped
            hours = np.where(has_prev, (q - prev) / _NS_PER_HOUR, HOURS_SINCE_LAST_CAP)
            cols[f"{entity}_hours_since_last"][rows] = np.minimum(hours, HOURS_SINCE_LAST_CAP)
        frame = pd.DataFrame({f"{entity}_id": ids_list})
        for name in defaults:
            frame[name] = cols[name].astype(ACTIVITY_DTYPE)
        frame["event_timestamp"] = pd.to_datetime(q_all, utc=True)
        return frame

    def user_rows(self, ids: Iterable[str], as_of: pd.Timestamp | pd.Series | np.ndarray) -> pd.DataFrame:
        """``user_id``, ``USER_ACTIVITY`` and ``event_timestamp`` (= as_of) per id, from events before as_of."""
        return self._rows("user", ids, as_of)

    def item_rows(self, ids: Iterable[str], as_of: pd.Timestamp | pd.Series | np.ndarray) -> pd.DataFrame:
        """``item_id``, ``ITEM_ACTIVITY`` and ``event_timestamp`` (= as_of) per id, from events before as_of."""
        return self._rows("item", ids, as_of)

    def newest_ns(self, entity: str, ids: Iterable[str]) -> np.ndarray:
        """Time (int64 ns) of each id's newest event; ``-1`` for an id with none."""
        states = self._states[entity]
        out = []
        for eid in ids:
            st = states.get(str(eid))
            if st is None or not st.recent:
                out.append(-1 if st is None or st.last_dropped_ns is None else st.last_dropped_ns)
            else:
                out.append(st.recent[-1][0])
        return np.asarray(out, dtype=np.int64)

    def tail_rows(self, entity: str, ids: Iterable[str]) -> pd.DataFrame:
        """Rows of ``ids`` as of just after each one's newest event (``newest + TAIL_OFFSET``).

        These are exactly :func:`compute_activity`'s tail rows (what the online store should serve) on the
        same events; ids with no events are left out.
        """
        ids_list = [str(i) for i in ids]
        newest = self.newest_ns(entity, ids_list)
        keep = newest >= 0
        kept = [i for i, k in zip(ids_list, keep.tolist(), strict=True) if k]
        return self._rows(entity, kept, newest[keep] + TAIL_OFFSET.value)

    # -------------------------------------------------------------------------------- checkpoint (no pickle)
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The whole state as plain arrays (for ``numpy.savez``; :meth:`from_arrays` reads them back)."""
        out: dict[str, np.ndarray] = {"events_seen": np.asarray([self.events_seen], dtype=np.int64)}
        for entity, states in self._states.items():
            ids = list(states)
            sts = [states[i] for i in ids]
            out[f"{entity}_ids"] = np.asarray(ids, dtype=str)
            out[f"{entity}_total"] = np.asarray([s.total for s in sts], dtype=np.int64)
            out[f"{entity}_clicks"] = np.asarray([s.clicks for s in sts], dtype=np.int64)
            dropped = [s.last_dropped_ns for s in sts]
            out[f"{entity}_has_dropped"] = np.asarray([d is not None for d in dropped], dtype=bool)
            out[f"{entity}_dropped"] = np.asarray([0 if d is None else d for d in dropped], dtype=np.int64)
            out[f"{entity}_lengths"] = np.asarray([len(s.recent) for s in sts], dtype=np.int64)
            out[f"{entity}_recent_ts"] = np.fromiter((p[0] for s in sts for p in s.recent), dtype=np.int64)
            out[f"{entity}_recent_label"] = np.fromiter((p[1] for s in sts for p in s.recent), dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: Any) -> ActivityState:
        """The state :meth:`to_arrays` wrote (a dict or an open ``.npz``)."""
        state = cls()
        state.events_seen = int(np.asarray(arrays["events_seen"])[0])
        for entity in ("user", "item"):
            ids = np.asarray(arrays[f"{entity}_ids"]).astype(str).tolist()
            total = np.asarray(arrays[f"{entity}_total"]).tolist()
            clicks = np.asarray(arrays[f"{entity}_clicks"]).tolist()
            has_dropped = np.asarray(arrays[f"{entity}_has_dropped"]).tolist()
            dropped = np.asarray(arrays[f"{entity}_dropped"]).tolist()
            lengths = np.asarray(arrays[f"{entity}_lengths"])
            ts = np.asarray(arrays[f"{entity}_recent_ts"]).tolist()
            labels = np.asarray(arrays[f"{entity}_recent_label"]).tolist()
            if not (len(ids) == len(total) == len(lengths) and int(lengths.sum()) == len(ts) == len(labels)):
                raise ValueError(f"activity state arrays for {entity!r} are inconsistent")
            ends = np.cumsum(lengths).tolist()
            start = 0
            states = state._states[entity]
            for k, eid in enumerate(ids):
                end = ends[k]
                states[eid] = _EntityState(
                    recent=deque(zip(ts[start:end], labels[start:end], strict=True)),
                    total=int(total[k]),
                    clicks=int(clicks[k]),
                    last_dropped_ns=int(dropped[k]) if has_dropped[k] else None,
                )
                start = end
        return state

    def save(self, path: Path | str) -> Path:
        """Write the state to ``path`` (``.npz``, atomically; no pickle)."""
        from freshrec.io import atomic_path

        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **self.to_arrays())
        return Path(path)

    @classmethod
    def load(cls, path: Path | str) -> ActivityState:
        """The state :meth:`save` wrote.

        Raises:
            ValueError: ``path`` is not such a state (not an npz, object arrays, missing or inconsistent
                arrays); ``allow_pickle=False`` means loading never runs code.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls.from_arrays(data)
        except (
            KeyError,
            IndexError,
            ValueError,
            UnicodeDecodeError,
            OSError,
            EOFError,
            zipfile.BadZipFile,
        ) as exc:
            raise ValueError(f"{path} is not an activity state file: {exc}") from exc
