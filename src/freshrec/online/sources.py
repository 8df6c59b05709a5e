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


# Why an entry went to the dead-letter stream (the ``reason`` field of its dead-letter entry).
DEAD_NOT_UTF8 = "entry_not_utf8"
DEAD_MISSING_FIELD = "entry_missing_field"  # "entry_missing_field:<name>"
DEAD_TOO_LARGE = "entry_too_large"
DEAD_TOO_MANY_DELIVERIES = "entry_delivered_too_often"
# Fields of a dead-letter entry besides the original ones (which are copied byte for byte).
# Each consumer group that meets a bad entry sets it aside once (the learner's and the event sink's).
DEAD_FIELDS = (
    "_dead_reason",
    "_dead_entry_id",
    "_dead_deliveries",
    "_dead_consumer",
    "_dead_group",
    "_dead_at",
)


def _text(value: Any) -> str:
    """Redis ids and names as text (an undecodable byte is replaced: only for comparisons and logs)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _connection_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError)


class RedisStreamSource:
    """Reads a Redis stream through a consumer group (XREADGROUP), acknowledging (XACK) only on commit.

    After a (re)connection the consumer first re-reads its own pending entries (delivered, never
    acknowledged). Every ``claim_interval_s``, while running, it sweeps the group's pending list with
    XAUTOCLAIM and takes over entries idle for at least ``claim_min_idle_ms`` (a dead consumer's); in
    between it reads new entries.

    Each entry is checked on its own before it is handed out: one that cannot become an event row (a key
    or value not UTF-8, a required field missing, larger than ``max_entry_bytes``), or one delivered more
    than ``max_deliveries`` times (it keeps killing whoever reads it), is copied byte for byte to the
    dead-letter stream with its reason, delivery count and consumer, and acknowledged in the same
    MULTI/EXEC: it is set aside once, never lost and never retried forever. Values that are well-formed
    strings but not valid events (a bad timestamp or label) are the validation's job downstream.

    A lost connection does not raise from :meth:`poll`: it waits (exponential backoff with jitter, at most
    ``timeout_s`` per poll) and returns an empty batch, so the caller's loop keeps checking its stop flag.

    Args:
        client: a ``redis.Redis`` connection.
        stream, group, consumer: the stream key, consumer group and this consumer's name.
        claim_min_idle_ms: idle time after which another consumer's pending entry is taken over.
        claim_interval_s: how often the pending list is swept for such entries while running.
        dead_letter_stream: where set-aside entries go (default ``<stream>:dead``).
        max_deliveries: deliveries after which a pending entry is dead-lettered instead of handed out.
        max_entry_bytes: larger entries (keys + values) are dead-lettered.
        required_fields: fields every entry must have.
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        group: str,
        consumer: str,
        claim_min_idle_ms: int = 30_000,
        *,
        claim_interval_s: float = 10.0,
        dead_letter_stream: str | None = None,
        max_deliveries: int = 5,
        max_entry_bytes: int = 65_536,
        required_fields: Iterable[str] = EVENT_COLUMNS,
    ) -> None:
        from redis.backoff import ExponentialWithJitterBackoff

        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.claim_min_idle_ms = claim_min_idle_ms
        self.claim_interval_s = claim_interval_s
        self.dead_letter_stream = dead_letter_stream or f"{stream}:dead"
        self.max_deliveries = max_deliveries
        self.max_entry_bytes = max_entry_bytes
        self.required_fields = tuple(required_fields)
        self.dead_lettered: dict[str, int] = {}  # reason → entries set aside by this consumer
        self.claimed = 0  # entries taken over from other consumers by this one
        self.connection_failures = 0  # consecutive failed calls (0 once a call succeeds)
        self._backoff = ExponentialWithJitterBackoff(base=0.05, cap=5.0)
        self._recovering = True
        self._pending_cursor = "0-0"
        self._claim_cursor = "0-0"
        self._next_claim = time.monotonic() + claim_interval_s  # the start-up scan claims first
        self._outstanding: set[str] = set()  # handed out in this session, not yet committed
        self._group_ready = False
        try:
            self._ensure_group()
        except _connection_errors() as exc:  # poll retries with backoff
            log.warning("redis unreachable for %s at start: %s", stream, exc)

    @classmethod
    def from_url(
        cls, url: str, stream: str, group: str, consumer: str, claim_min_idle_ms: int = 30_000, **kwargs: Any
    ) -> RedisStreamSource:
        """A source on a new connection to ``url`` (keyword arguments as for the constructor)."""
        import redis

        return cls(redis.Redis.from_url(url), stream, group, consumer, claim_min_idle_ms, **kwargs)

    @classmethod
    def from_settings(
        cls, cfg: Any, *, group: str | None = None, consumer: str | None = None
    ) -> RedisStreamSource:
        """A source as ``settings.online`` configures it (``group``/``consumer`` override its own)."""
        return cls.from_url(
            cfg.redis_url,
            cfg.stream,
            group or cfg.group,
            consumer or cfg.consumer,
            cfg.claim_min_idle_ms,
            claim_interval_s=cfg.claim_interval_s,
            dead_letter_stream=cfg.dead_letter_stream,
            max_deliveries=cfg.max_deliveries,
            max_entry_bytes=cfg.max_entry_bytes,
        )

    def _ensure_group(self) -> None:
        import redis

        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # -------------------------------------------------------------------------------- reading
    def _deliveries(self, ids: list[str]) -> dict[str, int]:
        """How many times each pending entry was delivered (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for eid in ids:
            pipe.xpending_range(self.stream, self.group, min=eid, max=eid, count=1)
        out: dict[str, int] = {}
        for eid, rows in zip(ids, pipe.execute(), strict=True):
            if rows:
                out[eid] = int(rows[0]["times_delivered"])
        return out

    def _claim(self, max_events: int) -> list[tuple[str, dict | None]]:
        """One step of the sweep over the group's pending list: take over entries idle long enough.

        XPENDING (with IDLE) lists them, then XCLAIM (with the same minimum idle time, so an entry its
        owner has just touched stays with it) moves them to this consumer. Entries this consumer has
        already handed out in this session are left alone: they are in flight, not abandoned.
        """
        start = "-" if self._claim_cursor == "0-0" else f"({self._claim_cursor}"
        rows = self.client.xpending_range(
            self.stream, self.group, min=start, max="+", count=max_events, idle=self.claim_min_idle_ms
        )
        if len(rows) < max_events:  # the sweep went round the whole pending list
            self._claim_cursor = "0-0"
            self._next_claim = time.monotonic() + self.claim_interval_s
        else:
            self._claim_cursor = _text(rows[-1]["message_id"])
        ids = [_text(r["message_id"]) for r in rows]
        ids = [i for i in ids if i not in self._outstanding]
        if not ids:
            return []
        entries = [
            (_text(eid), fields)
            for eid, fields in self.client.xclaim(
                self.stream, self.group, self.consumer, self.claim_min_idle_ms, ids
            )
        ]
        if entries:
            self.claimed += len(entries)
            log.info(
                "%s claimed %d entries idle for %d ms or more",
                self.consumer,
                len(entries),
                self.claim_min_idle_ms,
            )
        return entries

    def _read(self, max_events: int, timeout_s: float) -> tuple[list[tuple[str, dict | None]], bool, bool]:
        """Raw entries; whether they may have been delivered before (their counts are then checked); and
        whether this was the (blocking) read of new entries, after which an empty answer means idle."""
        if not self._group_ready:
            self._ensure_group()
        if self._recovering:
            res = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: self._pending_cursor}, count=max_events
            )
            entries = [(_text(eid), fields) for eid, fields in (res[0][1] if res else [])]
            if entries:
                self._pending_cursor = entries[-1][0]
                fresh = [e for e in entries if e[0] not in self._outstanding]
                if fresh:
                    log.info("redelivering %d pending entries of %s", len(fresh), self.consumer)
                return fresh, True, False
            self._recovering = False
            self._pending_cursor = "0-0"
            self._next_claim = 0.0  # claim abandoned entries before reading new ones
        if time.monotonic() >= self._next_claim:
            entries = self._claim(max_events)
            if entries or self._claim_cursor != "0-0":
                return entries, True, False
        block = int(timeout_s * 1000)
        res = self.client.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=max_events,
            block=block if block > 0 else None,
        )
        return [(_text(eid), fields) for eid, fields in (res[0][1] if res else [])], False, True

    def _check(self, fields: dict) -> tuple[dict[str, str] | None, str | None]:
        """The entry as text fields, or the reason it must be dead-lettered."""
        size = sum(
            len(k) + len(v) for k, v in fields.items() if isinstance(k, bytes) and isinstance(v, bytes)
        )
        if size > self.max_entry_bytes:
            return None, DEAD_TOO_LARGE
        try:
            text = {
                (k.decode("utf-8") if isinstance(k, bytes) else str(k)): (
                    v.decode("utf-8") if isinstance(v, bytes) else str(v)
                )
                for k, v in fields.items()
            }
        except UnicodeDecodeError:
            return None, DEAD_NOT_UTF8
        for name in self.required_fields:
            if name not in text:
                return None, f"{DEAD_MISSING_FIELD}:{name}"
        return text, None

    def _dead_letter(self, bad: list[tuple[str, dict, str, int]]) -> None:
        """Copy entries to the dead-letter stream and acknowledge them, atomically (MULTI/EXEC)."""
        pipe = self.client.pipeline(transaction=True)
        now = f"{time.time():.3f}"
        for eid, fields, reason, deliveries in bad:
            copy = {k: v for k, v in fields.items() if _text(k) not in DEAD_FIELDS}
            copy.update(
                {
                    "_dead_reason": reason,
                    "_dead_entry_id": eid,
                    "_dead_deliveries": str(deliveries),
                    "_dead_consumer": self.consumer,
                    "_dead_group": self.group,
                    "_dead_at": now,
                }
            )
            pipe.xadd(self.dead_letter_stream, copy)
        pipe.xack(self.stream, self.group, *[b[0] for b in bad])
        pipe.execute()
        for _, _, reason, _ in bad:
            key = reason.split(":", 1)[0]
            self.dead_lettered[key] = self.dead_lettered.get(key, 0) + 1
        log.warning(
            "dead-lettered %d entries of %s to %s: %s",
            len(bad),
            self.stream,
            self.dead_letter_stream,
            sorted({b[2] for b in bad}),
        )

    def poll(self, max_events: int, timeout_s: float = 0.0) -> Batch:
        """Up to ``max_events`` checked entries (waits up to ``timeout_s``); bad ones are dead-lettered.

        The positions include the dead-lettered entries (already acknowledged; acknowledging again is a
        no-op), so a batch of only bad entries is not mistaken for an idle stream.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        good: list[tuple[str, dict[str, str]]] = []
        done: list[str] = []  # trimmed from the stream while pending, or dead-lettered: nothing to learn
        try:
            while not good and not done:
                entries, redelivered, final = self._read(max_events, max(0.0, deadline - time.monotonic()))
                deliveries = self._deliveries([e for e, _ in entries]) if redelivered and entries else {}
                bad: list[tuple[str, dict, str, int]] = []
                for eid, fields in entries:
                    if fields is None:
                        done.append(eid)
                        continue
                    n = deliveries.get(eid, 1)
                    text, reason = self._check(fields)
                    if reason is None and n > self.max_deliveries:
                        reason = DEAD_TOO_MANY_DELIVERIES
                    if reason is not None:
                        bad.append((eid, fields, reason, n))
                    else:
                        good.append((eid, text))  # type: ignore[arg-type]
                if bad:
                    self._dead_letter(bad)
                    done.extend(b[0] for b in bad)
                if final:
                    break
        except _connection_errors() as exc:
            self._disconnected(exc, timeout_s)
            good, done = [], []
        else:
            self.connection_failures = 0
        ids = [eid for eid, _ in good]
        self._outstanding.update(ids)
        self._outstanding.update(done)
        events = stream_entries_frame(good)
        # The entry id starts with the millisecond at which Redis received it: the event's arrival time.
        entered = np.asarray([int(e.split("-")[0]) / 1000.0 for e in events["_entry_id"]], dtype=np.float64)
        return Batch(events=events.drop(columns=["_entry_id"]), positions=ids + done, entered_at=entered)

    def _disconnected(self, exc: BaseException, timeout_s: float) -> None:
        self.connection_failures += 1
        delay = self._backoff.compute(self.connection_failures)
        log.warning(
            "redis unreachable for %s (%d failed calls in a row): %s; retrying in %.2f s",
            self.stream,
            self.connection_failures,
            exc,
            delay,
        )
        time.sleep(min(delay, max(timeout_s, 0.05)) if timeout_s > 0 else delay)
        # What was read but not received may sit in this consumer's pending list: re-read it on return.
        self._recovering = True
        self._pending_cursor = "0-0"
        self._group_ready = False  # the stream may be new (a restarted Redis without persistence)

    def commit(self, positions: list[str]) -> None:
        """Acknowledge ``positions``; if Redis is unreachable they stay pending and come back later.

        An entry that comes back this way is one the caller already holds (it drops it by ``event_id``).
        """
        try:
            for start in range(0, len(positions), 1000):
                chunk = positions[start : start + 1000]
                if chunk:
                    self.client.xack(self.stream, self.group, *chunk)
        except _connection_errors() as exc:
            self.connection_failures += 1
            log.warning("acknowledging %d entries of %s failed: %s", len(positions), self.stream, exc)
            self._recovering = True
            self._pending_cursor = "0-0"
        self._outstanding.difference_update(positions)

    def pending_count(self) -> int:
        """Entries delivered to the group and not yet acknowledged."""
        return int(self.client.xpending(self.stream, self.group)["pending"])

    def dead_letter_count(self) -> int:
        """Entries in the dead-letter stream (from every consumer)."""
        return int(self.client.xlen(self.dead_letter_stream))

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
        return RedisStreamSource.from_settings(cfg)
    raise ValueError(f"unknown online source {kind!r} (expected 'eventlog' or 'redis')")
