"""Event sources for the online learner: one interface, the local event log and Redis Streams.

Delivery is at least once. ``poll`` hands out a batch and an opaque ``positions`` value; the learner calls
``commit(positions)`` only after a checkpoint that includes those events is on disk. A crash in between
redelivers them, and the learner drops the replays by ``event_id`` (its seen-set lives in the checkpoint),
so every event is counted exactly once.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from freshrec.io import atomic_write_text

log = logging.getLogger(__name__)

EVENT_COLUMNS = ["event_id", "event_timestamp", "user_id", "item_id", "label"]


@dataclass
class Batch:
    """A polled micro-batch.

    Attributes:
        events: the events as delivered (not yet validated: values may be raw strings, rows malformed).
        positions: opaque; pass to ``EventSource.commit`` once the batch is checkpointed.
        entered_at: wall-clock time (epoch seconds) at which each event entered the source, for freshness.
    """

    events: pd.DataFrame
    positions: Any
    entered_at: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.events)


class EventSource(Protocol):
    """What the learner reads from."""

    def poll(self, max_events: int, timeout_s: float) -> Batch:
        """Return up to ``max_events`` events not yet handed out in this session (waits up to ``timeout_s``)."""
        ...

    def commit(self, positions: Any) -> None:
        """Mark everything up to ``positions`` as durably processed."""
        ...


# ---------------------------------------------------------------------------------------------------- event log


class EventLogSource:
    """Follows the Parquet files of a ``freshrec.data.eventlog.EventLog`` directory.

    New files are merged into the not-yet-delivered events, which are handed out in event-time order
    (ties by file then row). The position is, per file (relative path), how many of its rows (in the file's
    time order) have been processed; it is persisted atomically as JSON on ``commit``.

    Args:
        root: the event log directory.
        state_path: where committed positions are kept (under ``settings.state_dir``).
        poll_interval_s: how often an idle ``poll`` looks for new files.
        start_after: events at or before this time are skipped (the starting model was trained on them).
    """

    def __init__(
        self,
        root: Path,
        state_path: Path,
        poll_interval_s: float = 0.2,
        start_after: pd.Timestamp | None = None,
    ) -> None:
        self.root = Path(root)
        self.start_after = pd.Timestamp(start_after) if start_after is not None else None
        self.state_path = Path(state_path)
        self.poll_interval_s = poll_interval_s
        self.committed: dict[str, int] = {}
        if self.state_path.exists():
            self.committed = {
                k: int(v) for k, v in json.loads(self.state_path.read_text()).get("files", {}).items()
            }
        self._cursor: dict[str, int] = dict(self.committed)
        self._known: dict[str, int] = {}  # file → row count, once merged into the pending frame
        self._pending = pd.DataFrame()
        self._next = 0

    def files(self) -> list[Path]:
        """Event files in the log (temporary and hidden files of in-progress writes are skipped)."""
        if not self.root.exists():
            return []
        out = []
        for p in sorted(self.root.rglob("*.parquet")):
            rel = p.relative_to(self.root)
            if any(part.startswith((".", "_")) for part in rel.parts) or ".tmp" in p.name:
                continue
            out.append(p)
        return out

    def _refresh(self) -> None:
        new = [p for p in self.files() if str(p.relative_to(self.root)) not in self._known]
        if not new:
            return
        parts = [self._pending.iloc[self._next :]] if len(self._pending) else []
        for path in new:
            rel = str(path.relative_to(self.root))
            df = pd.read_parquet(path)
            df = self._sorted(df)
            self._known[rel] = len(df)
            start = self._cursor.get(rel, 0)
            if self.start_after is not None:
                # The file is in time order, so the skipped events are a prefix of it.
                start = max(start, int((df["event_timestamp"] <= self.start_after).sum()))
                self._cursor[rel] = start
            if start >= len(df):
                continue
            df = df.iloc[start:].copy()
            df["_file"] = rel
            df["_entered_at"] = path.stat().st_mtime
            parts.append(df)
        if not parts:
            return
        merged = pd.concat(parts, ignore_index=True)
        # Stable sort on event time keeps per-file order, so what is taken from a file is always a prefix.
        self._pending = merged.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
        self._next = 0

    @staticmethod
    def _sorted(df: pd.DataFrame) -> pd.DataFrame:
        if "event_timestamp" not in df.columns:
            raise ValueError(f"event log file lacks 'event_timestamp' (columns: {list(df.columns)})")
        return df.sort_values("event_timestamp", kind="stable").reset_index(drop=True)

    def poll(self, max_events: int, timeout_s: float = 0.0) -> Batch:
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            self._refresh()
            if self._next < len(self._pending):
                break
            if time.monotonic() >= deadline:
                return Batch(events=pd.DataFrame(columns=EVENT_COLUMNS), positions={}, entered_at=np.zeros(0))
            time.sleep(self.poll_interval_s)
        chunk = self._pending.iloc[self._next : self._next + max_events]
        self._next += len(chunk)
        counts = chunk["_file"].value_counts()
        for rel, n in counts.items():
            self._cursor[str(rel)] = self._cursor.get(str(rel), 0) + int(n)
        positions = {str(rel): self._cursor[str(rel)] for rel in counts.index}
        entered = chunk["_entered_at"].to_numpy(dtype=np.float64)
        events = chunk.drop(columns=["_file", "_entered_at"]).reset_index(drop=True)
        return Batch(events=events, positions=positions, entered_at=entered)

    def commit(self, positions: dict[str, int]) -> None:
        if not positions:
            return
        for rel, offset in positions.items():
            self.committed[rel] = max(self.committed.get(rel, 0), int(offset))
        atomic_write_text(self.state_path, json.dumps({"files": self.committed}, indent=1, sort_keys=True))

    def lag(self) -> int:
        """Events known to the source but not yet handed out."""
        self._refresh()
        return len(self._pending) - self._next


# ---------------------------------------------------------------------------------------------------- redis


def _encode(value: Any) -> str:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def publish_events(redis_client: Any, stream: str, df: pd.DataFrame, maxlen: int | None = None) -> list[str]:
    """Append events to a Redis stream (XADD, one entry per row, every column as a string field).

    Timestamps are written in ISO 8601. Returns the entry ids in order.
    """
    ids: list[str] = []
    columns = list(df.columns)
    records = df.to_dict("records")
    for start in range(0, len(records), 1000):
        pipe = redis_client.pipeline(transaction=False)
        for rec in records[start : start + 1000]:
            fields = {c: _encode(rec[c]) for c in columns}
            if maxlen is not None:
                pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)
            else:
                pipe.xadd(stream, fields)
        ids.extend(i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute())
    return ids


def stream_entries_frame(entries: Iterable[tuple[str, dict[str, str]]]) -> pd.DataFrame:
    """Stream entries as a frame of raw strings (a missing field is ""), plus the entry id in ``_entry_id``.

    Typing and the checks for malformed rows are ``freshrec.data.validation.validate_events``' job.
    """
    rows = []
    for entry_id, fields in entries:
        row = dict(fields)
        row["_entry_id"] = entry_id
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else [*EVENT_COLUMNS, "_entry_id"])
    for col in EVENT_COLUMNS:
        if col not in frame.columns:
            frame[col] = ""
    return frame.fillna("")


class RedisStreamSource:
    """Reads a Redis stream through a consumer group (XREADGROUP), acknowledging (XACK) only on commit.

    After a restart the consumer first re-reads its own pending entries (delivered, never acknowledged),
    and claims (XAUTOCLAIM) entries left pending by other consumers for at least ``claim_min_idle_ms``;
    only then does it read new entries.

    Args:
        client: a ``redis.Redis`` connection.
        stream, group, consumer: the stream key, consumer group and this consumer's name.
        claim_min_idle_ms: idle time after which another consumer's pending entry is taken over.
    """

    def __init__(
        self, client: Any, stream: str, group: str, consumer: str, claim_min_idle_ms: int = 30_000
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.claim_min_idle_ms = claim_min_idle_ms
        self._recovering = True
        self._pending_cursor = "0-0"
        self._ensure_group()

    @classmethod
    def from_url(cls, url: str, stream: str, group: str, consumer: str, claim_min_idle_ms: int = 30_000):
        import redis

        return cls(redis.Redis.from_url(url), stream, group, consumer, claim_min_idle_ms)

    def _ensure_group(self) -> None:
        import redis

        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @staticmethod
    def _decode(entries: list) -> list[tuple[str, dict[str, str] | None]]:
        out = []
        for entry_id, fields in entries:
            eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            if fields is None:
                out.append((eid, None))
                continue
            out.append(
                (
                    eid,
                    {
                        (k.decode() if isinstance(k, bytes) else k): (
                            v.decode() if isinstance(v, bytes) else v
                        )
                        for k, v in fields.items()
                    },
                )
            )
        return out

    def _claim_abandoned(self) -> None:
        start = "0-0"
        while True:
            res = self.client.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_min_idle_ms, start_id=start, count=1000
            )
            start = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
            if start == "0-0":
                break

    def _read(self, max_events: int, timeout_s: float) -> list[tuple[str, dict[str, str] | None]]:
        if self._recovering:
            if self._pending_cursor == "0-0":
                self._claim_abandoned()
            res = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: self._pending_cursor}, count=max_events
            )
            entries = self._decode(res[0][1]) if res else []
            if entries:
                self._pending_cursor = entries[-1][0]
                log.info("redelivering %d pending entries of %s", len(entries), self.consumer)
                return entries
            self._recovering = False
        block = int(timeout_s * 1000)
        res = self.client.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=max_events,
            block=block if block > 0 else None,
        )
        return self._decode(res[0][1]) if res else []

    def poll(self, max_events: int, timeout_s: float = 0.0) -> Batch:
        entries = self._read(max_events, timeout_s)
        ids = [eid for eid, _ in entries]
        # Entries trimmed from the stream while pending come back without fields: nothing to learn, ack them.
        events = stream_entries_frame([(eid, f) for eid, f in entries if f is not None])
        # The entry id starts with the millisecond at which Redis received it: the event's arrival time.
        entered = np.asarray([int(e.split("-")[0]) / 1000.0 for e in events["_entry_id"]], dtype=np.float64)
        return Batch(events=events.drop(columns=["_entry_id"]), positions=ids, entered_at=entered)

    def commit(self, positions: list[str]) -> None:
        for start in range(0, len(positions), 1000):
            chunk = positions[start : start + 1000]
            if chunk:
                self.client.xack(self.stream, self.group, *chunk)

    def pending_count(self) -> int:
        """Entries delivered to the group and not yet acknowledged."""
        return int(self.client.xpending(self.stream, self.group)["pending"])

    def lag(self) -> int | None:
        """Entries in the stream not yet delivered to the group (Redis ≥ 7), else None."""
        for g in self.client.xinfo_groups(self.stream):
            name = g.get("name")
            name = name.decode() if isinstance(name, bytes) else name
            if name == self.group:
                lag = g.get("lag")
                return int(lag) if lag is not None else None
        return None


# ---------------------------------------------------------------------------------------------------- dedup


class SeenIds:
    """A bounded set of recently processed ``event_id``s (oldest forgotten first), saved with the checkpoint.

    The bound only has to cover the redelivery horizon (events since the last commit), so a generous
    capacity makes duplicates after a crash impossible in practice while keeping memory bounded.
    """

    def __init__(self, capacity: int = 1_000_000, ids: Iterable[str] = ()) -> None:
        self.capacity = capacity
        self._order: deque[str] = deque()
        self._set: set[str] = set()
        self.add(ids)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._set

    def __len__(self) -> int:
        return len(self._set)

    def mask_new(self, ids: Iterable[str]) -> np.ndarray:
        """Boolean mask: True where the id is neither seen before nor repeated earlier in ``ids``."""
        out = []
        local: set[str] = set()
        for i in ids:
            new = i not in self._set and i not in local
            local.add(i)
            out.append(new)
        return np.asarray(out, dtype=bool)

    def add(self, ids: Iterable[str]) -> None:
        for i in ids:
            if i in self._set:
                continue
            self._set.add(i)
            self._order.append(i)
        while len(self._order) > self.capacity:
            self._set.discard(self._order.popleft())

    def to_list(self) -> list[str]:
        return list(self._order)


def build_source(
    settings: Any, kind: str | None = None, start_after: pd.Timestamp | None = None
) -> EventLogSource | RedisStreamSource:
    """The configured source: ``eventlog`` (follows ``settings.eventlog_dir``) or ``redis``."""
    cfg = settings.online
    kind = kind or cfg.source
    if kind == "eventlog":
        return EventLogSource(
            settings.eventlog_dir,
            settings.state_dir / "online" / "eventlog_positions.json",
            start_after=start_after,
        )
    if kind == "redis":
        return RedisStreamSource.from_url(
            cfg.redis_url, cfg.stream, cfg.group, cfg.consumer, cfg.claim_min_idle_ms
        )
    raise ValueError(f"unknown online source {kind!r} (expected 'eventlog' or 'redis')")
