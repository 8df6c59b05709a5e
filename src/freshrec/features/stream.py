"""The stream feature job: events → one incremental activity state → changed rows in the Feast online store.

One loop, the same locally and in the cluster::

    source.poll ──► drop replays (event_id seen-set) ──► validate (bad rows quarantined, never retried)
                ──► ActivityState.update ──► tail rows of the batch's users and items ──► online store
                ──► (every checkpoint_every_s) checkpoint (state + seen-set + stamps, one .npz, atomic)
                ──► source.commit(positions)

- **Source**: :mod:`freshrec.online.sources` (the event log's tail locally, a Redis Streams consumer group
  in the cluster), with the job's own positions file / consumer group, so it never moves the online
  learner's positions.
- **State**: :class:`freshrec.features.activity.ActivityState`, the class the online learner featurizes with
  and that is tested equal to the batch point-in-time features; the rows written are its
  :meth:`~freshrec.features.activity.ActivityState.tail_rows`, i.e. exactly the tail rows
  ``compute_activity`` gives (what ``materialize`` loads) on the same events.
- **Micro-batches**: bounded by size (``max_batch_events``) and time (``max_batch_s`` after the first event
  of the batch arrived), written with the online store's own ``online_write_batch`` (one transaction on
  SQLite, one pipeline pair on Redis), not through Feast's ``push`` (pandas → Arrow → protos per call).
- **Monotonic in event time**: a row is stamped with its entity's newest event time + 1 µs; when that does
  not move past the stamp the job last wrote for the entity (a late event), the stamp moves 1 µs past it,
  so the store's "older row loses" rule never drops a newer state and a row never moves back.
- **Exactly once** w.r.t. stream positions: positions are committed only after a checkpoint holding the
  state that includes them; a crash before the checkpoint redelivers the events onto the old state (the
  rows they give are the same, rewriting them is harmless); a crash after it but before the commit
  redelivers events the seen-set drops. So kill -9 at any point loses and double-counts nothing.
- **Freshness**: per event, wall time from entering the source (file mtime / Redis entry id) until its
  row is committed in the online store; exported as the histogram
  ``freshrec_stream_features_freshness_seconds`` (plus counters and the event-time watermark) on
  ``metrics_port`` and/or a node-exporter textfile under ``<state_dir>/metrics``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from freshrec.config import Settings
from freshrec.features.activity import ITEM_ACTIVITY, TAIL_OFFSET, USER_ACTIVITY, ActivityState
from freshrec.online.sources import Batch, EventLogSource, EventSource, RedisStreamSource, SeenIds

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.npz"
METRIC_PREFIX = "freshrec_stream_features"
FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_NAMES = {"user": USER_ACTIVITY, "item": ITEM_ACTIVITY}
_VIEWS = {"user": "user_activity_fv", "item": "item_activity_fv"}


class StreamJobError(RuntimeError):
    """The stream job cannot run as configured (store not applied, bad checkpoint); the message says why."""


class StoreNotApplied(StreamJobError):
    """The online store's registry has no activity feature views yet (``freshrec features apply`` has not run)."""


@dataclass
class StreamStats:
    """Counters since the job's state began (restored with the checkpoint)."""

    received: int = 0
    duplicates: int = 0
    quarantined: int = 0
    accepted: int = 0
    rows_written: int = 0
    batches: int = 0
    checkpoints: int = 0
    watermark: str | None = None  # newest event time in the state (ISO, UTC)


# ------------------------------------------------------------------------------------------------ writer


class OnlineRowWriter:
    """Writes activity rows to the configured Feast online store, in Feast's own layout, one bulk write per call.

    The entity keys and view objects are built once; values go in as serialized ``float_val`` protos, as
    Feast's push writes them (the tests read them back through Feast's readers and ``OnlineFeatures``).
    """

    def __init__(self, settings: Settings, store: Any | None = None) -> None:
        from freshrec.features.store import feature_store

        self.store = store or feature_store(settings)
        self.config = self.store.config
        self.online = self.store._get_provider().online_store
        try:
            self.views = {e: self.store.get_feature_view(v) for e, v in _VIEWS.items()}
        except Exception as exc:  # Feast raises its own "not found" types
            raise StoreNotApplied(
                f"the online store has no activity feature views ({exc}); run `freshrec features apply` first"
            ) from exc
        self._keys: dict[tuple[str, str], Any] = {}
        self._bytes: dict[str, dict[str, bytes]] = {}
        self._fields: dict[str, list[Any]] = {}

    def _key(self, entity: str, eid: str) -> Any:
        key = self._keys.get((entity, eid))
        if key is None:
            from feast.protos.feast.types.EntityKey_pb2 import EntityKey
            from feast.protos.feast.types.Value_pb2 import Value

            if len(self._keys) > 1_000_000:
                self._keys.clear()
            key = self._keys[(entity, eid)] = EntityKey(
                join_keys=[f"{entity}_id"], entity_values=[Value(string_val=eid)]
            )
        return key

    def write(self, entity: str, rows: pd.DataFrame) -> int:
        """Write ``rows`` (``<entity>_id``, ``event_timestamp``, the activity features); returns rows sent.

        A row stamped before the one stored for its entity is dropped (the store never moves back): on
        SQLite inside one ``BEGIN IMMEDIATE`` transaction with one ``executemany`` (what
        ``MonotonicSqliteOnlineStore`` does row by row); on Redis with Feast's rule (a stored stamp at or
        after the row's wins), one pipeline to read the stamps and one to write; other stores through
        their ``online_write_batch``.
        """
        if rows.empty:
            return 0
        from feast.protos.feast.types.Value_pb2 import Value

        names = _NAMES[entity]
        ids = rows[f"{entity}_id"].astype(str).tolist()
        stamps = list(pd.DatetimeIndex(pd.to_datetime(rows["event_timestamp"], utc=True)).to_pydatetime())
        values = np.column_stack([rows[n].to_numpy(dtype=np.float32) for n in names]).tolist()
        blobs = [[Value(float_val=v).SerializeToString() for v in vals] for vals in values]
        kind = self.config.online_store.type
        if kind.endswith("SqliteOnlineStore") or kind == "sqlite":
            self._write_sqlite(entity, ids, stamps, blobs)
        elif kind == "redis":
            self._write_redis(entity, ids, stamps, blobs)
        else:
            data = [
                (
                    self._key(entity, eid),
                    {n: Value(float_val=v) for n, v in zip(names, vals, strict=True)},
                    ts,
                    None,
                )
                for eid, vals, ts in zip(ids, values, stamps, strict=True)
            ]
            self.online.online_write_batch(self.config, self.views[entity], data, None)
        return len(ids)

    def _key_bytes(self, entity: str, eid: str) -> bytes:
        cache = self._bytes.setdefault(entity, {})
        key = cache.get(eid)
        if key is None:
            if len(cache) > 1_000_000:
                cache.clear()
            if self.config.online_store.type == "redis":
                from feast.infra.online_stores.helpers import _redis_key

                key = _redis_key(
                    self.config.project,
                    self._key(entity, eid),
                    entity_key_serialization_version=self.config.entity_key_serialization_version,
                )
            else:
                from feast.infra.key_encoding_utils import serialize_entity_key

                key = serialize_entity_key(
                    self._key(entity, eid),
                    entity_key_serialization_version=self.config.entity_key_serialization_version,
                )
            cache[eid] = key
        return key

    def _write_sqlite(
        self, entity: str, ids: list[str], stamps: list[datetime], blobs: list[list[bytes]]
    ) -> None:
        from feast.infra.online_stores.sqlite import _quote_id, _table_id
        from feast.utils import to_naive_utc

        from freshrec.features.local_store import _stored_times

        conn = self.online._get_conn(self.config)
        table = _table_id(
            self.config.project,
            self.views[entity],
            self.config.registry.enable_online_feature_view_versioning,
        )
        sql = (
            f"INSERT INTO {_quote_id(table)} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
            "VALUES (?, ?, ?, NULL, ?, NULL) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
            "created_ts = excluded.created_ts"
        )
        names = _NAMES[entity]
        keys = [self._key_bytes(entity, eid) for eid in ids]
        conn.execute("BEGIN IMMEDIATE")
        try:
            stored = _stored_times(conn, table, keys)
            params = []
            for key, ts, row in zip(keys, stamps, blobs, strict=True):
                naive = to_naive_utc(ts)
                held = stored.get(key)
                if held is not None and naive < held:
                    continue
                params += [(key, n, b, naive) for n, b in zip(names, row, strict=True)]
            conn.executemany(sql, params)
            conn.commit()
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise

    def _write_redis(
        self, entity: str, ids: list[str], stamps: list[datetime], blobs: list[list[bytes]]
    ) -> None:
        from feast.infra.online_stores.helpers import _mmh3
        from google.protobuf.timestamp_pb2 import Timestamp

        view = self.views[entity].name
        fields = self._fields.get(entity)
        if fields is None:
            fields = self._fields[entity] = [_mmh3(f"{view}:{n}") for n in _NAMES[entity]]
        ts_key = f"_ts:{view}"
        client = self.online._get_client(self.config.online_store)
        keys = [self._key_bytes(entity, eid) for eid in ids]
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, ts_key)
            held = pipe.execute()
        with client.pipeline(transaction=False) as pipe:
            for key, ts, row, prev in zip(keys, stamps, blobs, held, strict=True):
                stamp = Timestamp()
                stamp.FromDatetime(ts)
                if prev:
                    old = Timestamp()
                    old.ParseFromString(prev)
                    if (old.seconds, old.nanos) >= (stamp.seconds, stamp.nanos):
                        continue  # Feast's rule: the stored row is as new or newer
                mapping: dict[Any, bytes] = dict(zip(fields, row, strict=True))
                mapping[ts_key] = stamp.SerializeToString()
                pipe.hset(key, mapping=mapping)
            pipe.execute()


# ------------------------------------------------------------------------------------------------ metrics


class BatchHistogram:
    """A Prometheus histogram (one ``model`` label) that takes a micro-batch's observations at once.

    ``prometheus_client``'s Histogram costs two locked increments per observation: 100,000 events a batch
    made it a tenth of the job's time. Here a batch is one ``searchsorted``; the exposition is the same
    (``_bucket``/``_count``/``_sum`` samples, cumulative ``le`` buckets) through a custom collector.
    """

    def __init__(self, name: str, documentation: str, model: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.model = name, documentation, model
        self.bounds = np.asarray(sorted(buckets), dtype=float)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # the last: above every bound
        self.total = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: Any) -> None:
        values = np.asarray(values, dtype=float)
        if not len(values):
            return
        # le semantics: a value equal to a bound falls in that bound's bucket
        slots = np.searchsorted(self.bounds, values, side="left")
        with self._lock:
            self.counts += np.bincount(slots, minlength=len(self.counts))
            self.total += float(values.sum())

    def observe(self, value: float) -> None:
        self.observe_many([value])

    def describe(self) -> list[Any]:
        from prometheus_client.core import HistogramMetricFamily

        return [HistogramMetricFamily(self.name, self.documentation, labels=["model"])]

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import HistogramMetricFamily

        with self._lock:
            cumulative = np.cumsum(self.counts)
            total = self.total
        family = HistogramMetricFamily(self.name, self.documentation, labels=["model"])
        buckets = [(_le(b), float(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)]
        family.add_metric([self.model], [*buckets, ("+Inf", float(cumulative[-1]))], total)
        yield family


def _le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)


class StreamMetrics:
    """Prometheus metrics of the job (its own registry; served and/or written as a textfile)."""

    def __init__(self, model: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.model = model
        labels = ["model"]
        self.freshness = BatchHistogram(
            f"{METRIC_PREFIX}_freshness_seconds",
            "Wall time from an event entering the stream to its activity rows being readable in the online store.",
            model,
            FRESHNESS_BUCKETS,
        )
        self.registry.register(self.freshness)
        self.events = Counter(
            f"{METRIC_PREFIX}_events",
            "Events received, by outcome.",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self.rows = Counter(
            f"{METRIC_PREFIX}_rows_written",
            "Activity rows written to the online store.",
            labels,
            registry=self.registry,
        ).labels(model=model)
        self.watermark = Gauge(
            f"{METRIC_PREFIX}_watermark_timestamp_seconds",
            "Newest event time (epoch seconds) in the job's state.",
            labels,
            registry=self.registry,
        ).labels(model=model)
        self.last_write = Gauge(
            f"{METRIC_PREFIX}_last_write_timestamp_seconds",
            "Wall time of the last write to the online store.",
            labels,
            registry=self.registry,
        ).labels(model=model)

    def count(self, outcome: str, n: int) -> None:
        if n:
            self.events.labels(model=self.model, outcome=outcome).inc(n)


# ------------------------------------------------------------------------------------------------ job


@dataclass
class _Pending:
    positions: list[Any] = field(default_factory=list)


class StreamFeatureJob:
    """The stream feature job (see the module docstring).

    In-process use (the loop)::

        job = build_stream_job(settings)          # or StreamFeatureJob(settings, source=..., writer=...)
        job.warm(history_events)                   # optional: state of the events already materialized
        n_rows = job.process(events)               # one micro-batch, no source needed
        job.run(until=lambda: done, until_idle=True)   # follow the source

    Args:
        settings: freshrec settings (``features.stream`` holds the job's knobs).
        source: what to read (``run``); ``process`` needs none.
        writer: where rows go (default: :class:`OnlineRowWriter` on the configured online store).
        state_dir: where the checkpoint lives (None: no checkpoints; ``process`` still works).
        clock: wall clock (epoch seconds), for freshness.
    """

    def __init__(
        self,
        settings: Settings,
        source: EventSource | None = None,
        writer: Any | None = None,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.cfg = settings.features.stream
        self.source = source
        self.writer = writer if writer is not None else OnlineRowWriter(settings)
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.clock = clock
        self.say: Callable[[str], None] | None = None  # progress lines (default: the log)
        self.state = ActivityState()
        self.seen = SeenIds(self.cfg.seen_ids_capacity)
        self.stats = StreamStats()
        self.metrics = StreamMetrics(settings.model.name)
        self.freshness_s: list[float] = []  # per event, since start of this process (bounded)
        self._stamps: dict[str, dict[str, int]] = {"user": {}, "item": {}}  # last stamp written, ns
        self._pending = _Pending()
        self._last_checkpoint = time.monotonic()
        self._last_report = time.monotonic()
        self._last_textfile = 0.0
        if self.state_dir is not None:
            self.restore()

    # ---------------------------------------------------------------------------------- processing
    def warm(self, history: pd.DataFrame) -> None:
        """Add events already in the online store (materialized) to the state, without writing rows."""
        if len(history):
            self.state.update(history)
            if "event_id" in history.columns:
                self.seen.add(history["event_id"].astype(str))
            self._advance_watermark(history)

    def process(self, events: pd.DataFrame, entered_at: np.ndarray | None = None) -> int:
        """One micro-batch: dedup, validate, update the state, write the changed rows; returns rows written.

        ``entered_at`` (epoch seconds per event) feeds the freshness metric; without it none is recorded.
        """
        raw = events.reset_index(drop=True)
        self.stats.received += len(raw)
        if raw.empty:
            return 0
        ids = (
            raw["event_id"].astype(str).to_numpy() if "event_id" in raw.columns else np.array([""] * len(raw))
        )
        new = self.seen.mask_new(ids)
        dup = int((~new).sum())
        self.stats.duplicates += dup
        self.metrics.count("duplicate", dup)
        raw = raw[new].reset_index(drop=True)
        entered = None
        if entered_at is not None and len(entered_at) == len(new):
            entered = np.asarray(entered_at, dtype=np.float64)[new]
        accepted = self._validated(raw)
        self.seen.add(i for i in ids[new] if i)
        if accepted.empty:
            return 0
        if entered is not None and len(accepted) < len(raw):
            entered = None if "_pos" not in accepted.columns else entered[accepted["_pos"].to_numpy()]
        accepted = accepted.drop(columns=["_pos"], errors="ignore")
        self.state.update(accepted)
        self.stats.accepted += len(accepted)
        self.metrics.count("accepted", len(accepted))
        written = 0
        for entity in ("user", "item"):
            changed = pd.unique(accepted[f"{entity}_id"].astype(str))
            rows = self._stamped(entity, self.state.tail_rows(entity, changed))
            written += self.writer.write(entity, rows)
        done = self.clock()
        self.stats.rows_written += written
        self.stats.batches += 1
        self.metrics.rows.inc(written)
        self.metrics.last_write.set(done)
        self._advance_watermark(accepted)
        if entered is not None and len(entered):
            lags = np.maximum(done - entered, 0.0)
            self.metrics.freshness.observe_many(lags)
            self.freshness_s.extend(lags.tolist())
            if len(self.freshness_s) > 1_000_000:
                del self.freshness_s[: len(self.freshness_s) - 1_000_000]
        return written

    def _validated(self, raw: pd.DataFrame) -> pd.DataFrame:
        from freshrec.data.validation import validate_events, write_quarantine

        frame = raw.copy()
        frame["_pos"] = np.arange(len(frame))
        result = validate_events(frame, source="stream", future_tolerance_s=self.cfg.future_tolerance_s)
        bad = len(result.quarantined)
        if bad:
            self.stats.quarantined += bad
            self.metrics.count("quarantined", bad)
            write_quarantine(
                result.quarantined.drop(columns=["_pos"], errors="ignore"),
                self.settings.quarantine_dir,
                source="stream",
                name=f"features-stream-{uuid.uuid4().hex}",
            )
            log.warning("quarantined %d stream event(s): %s", bad, result.reasons)
        accepted = result.accepted
        if "_pos" in accepted.columns:
            accepted["_pos"] = pd.to_numeric(accepted["_pos"]).astype(np.int64)
        return accepted

    def _stamped(self, entity: str, rows: pd.DataFrame) -> pd.DataFrame:
        """Stamps that never go back per entity (see the module docstring)."""
        if rows.empty:
            return rows
        last = self._stamps[entity]
        ids = rows[f"{entity}_id"].tolist()
        stamps = pd.DatetimeIndex(rows["event_timestamp"]).as_unit("ns").asi8.copy()
        for k, eid in enumerate(ids):
            prev = last.get(eid)
            if prev is not None and stamps[k] <= prev:
                stamps[k] = prev + TAIL_OFFSET.value // 1  # 1 µs past what is stored
            last[eid] = int(stamps[k])
        rows = rows.copy()
        rows["event_timestamp"] = pd.to_datetime(stamps, utc=True)
        return rows

    def _advance_watermark(self, events: pd.DataFrame) -> None:
        newest = pd.Timestamp(pd.to_datetime(events["event_timestamp"], utc=True).max())
        current = pd.Timestamp(self.stats.watermark) if self.stats.watermark else None
        if current is None or newest > current:
            self.stats.watermark = newest.isoformat()
            self.metrics.watermark.set(newest.timestamp())

    # ---------------------------------------------------------------------------------- following a source
    def poll_batch(self) -> Batch | None:
        """One micro-batch from the source (positions: a tuple, one per poll): up to ``max_batch_events``, at most ``max_batch_s`` after the
        first of them arrived (waits up to ``idle_poll_s`` for that first one); None when nothing came."""
        if self.source is None:
            raise StreamJobError("the stream job has no source to poll")
        cfg = self.cfg
        first = self.source.poll(cfg.max_batch_events, timeout_s=cfg.idle_poll_s)
        if len(first) == 0 and not _has_positions(first.positions):
            return None
        parts = [first]
        n = len(first)
        deadline = time.monotonic() + cfg.max_batch_s
        while n < cfg.max_batch_events and len(first):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            more = self.source.poll(cfg.max_batch_events - n, timeout_s=remaining)
            if len(more) == 0 and not _has_positions(more.positions):
                break
            parts.append(more)
            n += len(more)
        events = pd.concat([p.events for p in parts if len(p)], ignore_index=True) if n else first.events
        entered = np.concatenate([np.asarray(p.entered_at, dtype=np.float64) for p in parts])
        return Batch(events=events, positions=tuple(p.positions for p in parts), entered_at=entered)

    def step(self, batch: Batch) -> int:
        """Process a polled batch and checkpoint/commit when due; returns rows written."""
        written = self.process(
            batch.events, batch.entered_at if len(batch.entered_at) == len(batch) else None
        )
        # poll_batch's batches carry a tuple of the source's positions, one per poll
        parts = batch.positions if isinstance(batch.positions, tuple) else (batch.positions,)
        self._pending.positions.extend(parts)
        if time.monotonic() - self._last_checkpoint >= self.cfg.checkpoint_every_s:
            self.checkpoint()
        self._maybe_report()
        return written

    def run(
        self,
        until: Callable[[], bool] | None = None,
        *,
        until_idle: bool = False,
        max_events: int | None = None,
    ) -> StreamStats:
        """Follow the source until ``until()`` is true, the source is idle (``until_idle``), or
        ``max_events`` were received; checkpoints on the way out. Returns the counters."""
        start = self.stats.received
        try:
            while until is None or not until():
                batch = self.poll_batch()
                if batch is None:
                    if until_idle:
                        break
                    continue
                self.step(batch)
                if max_events is not None and self.stats.received - start >= max_events:
                    break
        finally:
            self.checkpoint()
            self._write_textfile(force=True)
        return self.stats

    # ---------------------------------------------------------------------------------- checkpoint
    def checkpoint(self) -> Path | None:
        """Write state + seen-set + stamps + counters (one .npz, atomically), then commit the positions."""
        self._last_checkpoint = time.monotonic()
        if self.state_dir is None:
            self._commit()
            return None
        arrays = {f"a_{k}": v for k, v in self.state.to_arrays().items()}
        arrays["seen"] = np.asarray(self.seen.to_list(), dtype=str)
        for entity, stamps in self._stamps.items():
            arrays[f"stamp_{entity}_ids"] = np.asarray(list(stamps), dtype=str)
            arrays[f"stamp_{entity}_ns"] = np.asarray(list(stamps.values()), dtype=np.int64)
        arrays["meta"] = np.asarray(json.dumps({"stats": asdict(self.stats), "format": 1}))
        from freshrec.io import atomic_path

        path = self.state_dir / CHECKPOINT_FILE
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        self.stats.checkpoints += 1
        self._commit()
        return path

    def _commit(self) -> None:
        if self.source is not None:
            for positions in self._pending.positions:
                if _has_positions(positions):
                    self.source.commit(positions)
        self._pending.positions = []

    def restore(self) -> bool:
        """Load the checkpoint in ``state_dir``; False when there is none."""
        path = None if self.state_dir is None else self.state_dir / CHECKPOINT_FILE
        if path is None or not path.is_file():
            return False
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                self.state = ActivityState.from_arrays(
                    {k[2:]: data[k] for k in data.files if k.startswith("a_")}
                )
                self.seen = SeenIds(self.cfg.seen_ids_capacity, data["seen"].astype(str).tolist())
                for entity in ("user", "item"):
                    ids = data[f"stamp_{entity}_ids"].astype(str).tolist()
                    self._stamps[entity] = dict(zip(ids, data[f"stamp_{entity}_ns"].tolist(), strict=True))
        except (OSError, ValueError, KeyError) as exc:
            raise StreamJobError(
                f"stream job checkpoint {path} is unreadable ({exc}); move it away to start over"
            ) from exc
        self.stats = StreamStats(**meta["stats"])
        log.info(
            "restored stream job checkpoint: %d events accepted, watermark %s",
            self.stats.accepted,
            self.stats.watermark,
        )
        return True

    # ---------------------------------------------------------------------------------- reporting
    def freshness_quantiles(self) -> dict[str, float | None]:
        """p50/p99/max of the per-event freshness measured by this process."""
        if not self.freshness_s:
            return {"p50": None, "p99": None, "max": None}
        arr = np.asarray(self.freshness_s)
        return {
            "p50": float(np.quantile(arr, 0.5)),
            "p99": float(np.quantile(arr, 0.99)),
            "max": float(arr.max()),
        }

    def progress_line(self) -> str:
        q = self.freshness_quantiles()
        fresh = "n/a" if q["p99"] is None else f"p50 {q['p50']:.3f} s, p99 {q['p99']:.3f} s"
        s = self.stats
        return (
            f"{s.accepted:,} events ({s.duplicates:,} duplicate, {s.quarantined:,} quarantined), "
            f"{s.rows_written:,} rows written, watermark {s.watermark or '-'}, freshness {fresh}"
        )

    def _maybe_report(self) -> None:
        now = time.monotonic()
        if now - self._last_report >= self.cfg.report_every_s:
            self._last_report = now
            (self.say or log.info)(self.progress_line())
        self._write_textfile()

    def textfile(self) -> Path:
        return self.settings.state_dir / "metrics" / f"{METRIC_PREFIX}_{self.settings.model.name}.prom"

    def _write_textfile(self, force: bool = False) -> None:
        if not self.cfg.metrics_textfile:
            return
        now = time.monotonic()
        if not force and now - self._last_textfile < self.cfg.report_every_s:
            return
        from freshrec.monitoring.prometheus import write_textfile

        self._last_textfile = now
        write_textfile(self.metrics.registry, self.textfile())


def _has_positions(positions: Any) -> bool:
    return bool(positions)


# ------------------------------------------------------------------------------------------------ builders


def build_stream_source(
    settings: Settings, kind: str | None = None, start_after: pd.Timestamp | None = None
) -> EventLogSource | RedisStreamSource:
    """The job's source: the event log (own positions file) or Redis Streams (own consumer group)."""
    cfg = settings.features.stream
    kind = kind or settings.online.source
    if kind == "eventlog":
        return EventLogSource(
            settings.eventlog_dir,
            stream_state_dir(settings) / "eventlog_positions.json",
            start_after=start_after,
        )
    if kind == "redis":
        # the online settings' stream, claiming, dead-letter stream and limits; the job's own group
        return RedisStreamSource.from_settings(settings.online, group=cfg.group, consumer=cfg.consumer)
    raise StreamJobError(f"unknown stream source {kind!r} (expected 'eventlog' or 'redis')")


def stream_state_dir(settings: Settings) -> Path:
    return settings.state_dir / "features_stream"


def build_stream_job(
    settings: Settings,
    source: EventSource | str | None = None,
    *,
    start_after: pd.Timestamp | None = None,
    checkpoint: bool = True,
) -> StreamFeatureJob:
    """The job for ``settings``: its source (``source`` may be a kind, ``eventlog``/``redis``), the online
    store writer, and its checkpoint under ``<state_dir>/features_stream`` (restored when present)."""
    if source is None or isinstance(source, str):
        source = build_stream_source(settings, source, start_after=start_after)
    state_dir = stream_state_dir(settings) if checkpoint else None
    return StreamFeatureJob(settings, source=source, state_dir=state_dir)


def now_utc() -> datetime:
    return datetime.now(UTC)
