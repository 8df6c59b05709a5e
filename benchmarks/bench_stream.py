"""Stream feature job benchmark: throughput against the store's bulk-write limit, and freshness at load.

On MovieLens-100k (event time order), for the SQLite online store and for Redis (+ PostgreSQL registry):

- ``features stream throughput (events/s)``: the whole job (``StreamFeatureJob.run`` following the event
  log: read, dedup, validate, ``ActivityState`` update, tail rows, write, checkpoints every
  ``checkpoint_every_s``) in micro-batches of ``max_batch_events``. Baseline, measured in the same run:
  writing the *same changed rows* (recorded from the job's writes) straight into the same online store
  in bulk, no state update: one SQLite ``executemany`` transaction per batch / one Redis pipeline per
  batch (values serialized as Feast stores them). Target ratio >= 0.5.
- ``features stream freshness p99 (s)``: a producer thread XADDs MovieLens events to a Redis stream at a
  fixed rate (the target rate, 0.5 x the bulk limit, capped at 0.9 x the job's own throughput) while the
  job follows the stream; freshness per event = row committed in the online store - entry id time. Target
  <= 1.0 s.
- context: Feast's own ``push`` (``OnlineFeatures.push``) per event and per batch, events/s.

The default store (SQLite) carries the exact row names; Redis rows end in ``[redis]``.
Run: ``nice -n 10 .venv/bin/python -m benchmarks.bench_stream [--quick]``.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.results import Row, main_for

REPO = Path(__file__).resolve().parents[1]
DATASETS = (REPO / ".." / "shared" / "datasets").resolve()
REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_CONNECTION = "127.0.0.1:6379,db=0"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _settings(workdir: Path, environment: str = "local", project: str = "freshrec", **stream):
    from freshrec.config import load_settings

    return load_settings(
        workdir=workdir,
        data={"datasets_dir": DATASETS},
        features={
            "environment": environment,
            "project": project,
            "redis_connection": REDIS_CONNECTION,
            "postgres_url": POSTGRES_URL,
            "repo_dir": REPO / "feature_repo",
            "stream": {"idle_poll_s": 0.05, "metrics_textfile": False, **stream},
        },
        online={"redis_url": REDIS_URL},
    )


class _Recorder:
    """Delegates to the job's writer and keeps what it wrote, per batch (for the baseline)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.batches: list[dict[str, pd.DataFrame]] = []
        self._current: dict[str, pd.DataFrame] = {}

    def write(self, entity: str, rows: pd.DataFrame) -> int:
        if entity == "user":
            self._current = {}
            self.batches.append(self._current)
        self._current[entity] = rows
        return self.inner.write(entity, rows)


def _serialized(writer, entity: str, rows: pd.DataFrame):
    from feast.protos.feast.types.Value_pb2 import Value
    from google.protobuf.timestamp_pb2 import Timestamp

    from freshrec.features.stream import _NAMES

    names = _NAMES[entity]
    ids = rows[f"{entity}_id"].astype(str).tolist()
    stamps = list(pd.DatetimeIndex(pd.to_datetime(rows["event_timestamp"], utc=True)).to_pydatetime())
    values = np.column_stack([rows[n].to_numpy(dtype=np.float32) for n in names]).tolist()
    out = []
    for eid, vals, ts in zip(ids, values, stamps, strict=True):
        stamp = Timestamp()
        stamp.FromDatetime(ts)
        out.append(
            (
                writer._key(entity, eid),
                [Value(float_val=v).SerializeToString() for v in vals],
                ts,
                stamp,
                names,
            )
        )
    return out


def _bulk_sqlite(writer, batches) -> float:
    """Seconds to write ``batches`` with one executemany transaction per batch (no state, no checks)."""
    import sqlite3

    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.utils import to_naive_utc

    cfg = writer.config
    conn = sqlite3.connect(cfg.online_store.path, timeout=30)
    version = cfg.entity_key_serialization_version
    sql = {
        e: f'INSERT INTO "{cfg.project}_{v.name}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
        "VALUES (?, ?, ?, NULL, ?, NULL) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
        "value = excluded.value, event_ts = excluded.event_ts"
        for e, v in writer.views.items()
    }
    start = time.perf_counter()
    for batch in batches:
        with conn:
            for entity, rows in batch.items():
                params = []
                for key, blobs, ts, _, names in _serialized(writer, entity, rows):
                    kb = serialize_entity_key(key, entity_key_serialization_version=version)
                    naive = to_naive_utc(ts)
                    params += [(kb, n, b, naive) for n, b in zip(names, blobs, strict=True)]
                conn.executemany(sql[entity], params)
    took = time.perf_counter() - start
    conn.close()
    return took


def _bulk_redis(writer, batches) -> float:
    """Seconds to write ``batches`` with one Redis pipeline (HSET per row) per batch."""
    from feast.infra.online_stores.helpers import _mmh3, _redis_key

    from freshrec.features.stream import _NAMES

    cfg = writer.config
    client = writer.online._get_client(cfg.online_store)
    version = cfg.entity_key_serialization_version
    fields = {
        e: ([_mmh3(f"{v.name}:{n}") for n in _NAMES[e]], f"_ts:{v.name}") for e, v in writer.views.items()
    }
    start = time.perf_counter()
    for batch in batches:
        pipe = client.pipeline(transaction=False)
        for entity, rows in batch.items():
            fkeys, ts_key = fields[entity]
            for key, blobs, _, stamp, _ in _serialized(writer, entity, rows):
                mapping = dict(zip(fkeys, blobs, strict=True))
                mapping[ts_key] = stamp.SerializeToString()
                pipe.hset(
                    _redis_key(cfg.project, key, entity_key_serialization_version=version), mapping=mapping
                )
        pipe.execute()
    return time.perf_counter() - start


def _throughput(settings, n_events: int) -> tuple[float, float, _Recorder, object]:
    from freshrec.features.stream import OnlineRowWriter, StreamFeatureJob, build_stream_source

    recorder = _Recorder(OnlineRowWriter(settings))
    job = StreamFeatureJob(
        settings,
        source=build_stream_source(settings, "eventlog"),
        writer=recorder,
        state_dir=settings.state_dir / f"bench-{uuid.uuid4().hex[:6]}",
    )
    start = time.perf_counter()
    job.run(until_idle=True, max_events=n_events)
    took = time.perf_counter() - start - settings.features.stream.idle_poll_s
    events = job.stats.accepted
    batches = recorder.batches
    bulk = (
        _bulk_redis(recorder.inner, batches)
        if settings.features.environment == "redis"
        else _bulk_sqlite(recorder.inner, batches)
    )
    return events / took, events / bulk, recorder, job


def _freshness(settings, events: pd.DataFrame, rate: float, seconds: float) -> dict:
    import redis

    from freshrec.features.stream import OnlineRowWriter, StreamFeatureJob
    from freshrec.online.sources import RedisStreamSource, publish_events

    stream = f"freshrec:bench:stream-features:{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL)
    n = min(len(events), int(rate * seconds))
    evs = events.iloc[:n].reset_index(drop=True)
    source = RedisStreamSource(client, stream, "bench", "bench-1")
    job = StreamFeatureJob(settings, source=source, writer=OnlineRowWriter(settings), state_dir=None)
    done = threading.Event()

    def produce() -> None:
        tick = 0.01
        per_tick = max(1, round(rate * tick))
        t0 = time.perf_counter()
        for k, start in enumerate(range(0, n, per_tick)):
            publish_events(client, stream, evs.iloc[start : start + per_tick])
            wait = t0 + (k + 1) * tick - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    try:
        producer.start()
        job.run(until=lambda: done.is_set() and job.stats.received >= n)
        producer.join()
    finally:
        client.delete(stream)
    q = job.freshness_quantiles()
    return {"n": n, **q}


def _feast_push(
    settings, recorder: _Recorder, events: pd.DataFrame, n_batches: int, n_single: int
) -> tuple[float, float]:
    from freshrec.features import store
    from freshrec.features.activity import ActivityState

    online = store.OnlineFeatures(settings)
    batches = recorder.batches[:n_batches]
    start = time.perf_counter()
    for b in batches:
        online.push(user_rows=b.get("user"), item_rows=b.get("item"))
    per_batch_s = time.perf_counter() - start
    per_batch_events = n_batches * settings.features.stream.max_batch_events
    state = ActivityState()
    evs = events.iloc[:n_single]
    start = time.perf_counter()
    for k in range(len(evs)):
        one = evs.iloc[k : k + 1]
        state.update(one)
        online.push(
            user_rows=state.tail_rows("user", one["user_id"].astype(str)),
            item_rows=state.tail_rows("item", one["item_id"].astype(str)),
        )
    single_s = time.perf_counter() - start
    return per_batch_events / per_batch_s, len(evs) / single_s


def _rows_for(settings, label: str, events: pd.DataFrame, quick: bool) -> list[Row]:
    suffix = "" if label == "sqlite" else f" [{label}]"
    n = 20_000 if quick else len(events)
    load_before = os.getloadavg()[0]
    ours, limit, recorder, job = _throughput(settings, n)
    batch = settings.features.stream.max_batch_events
    cond = (
        f"MovieLens-100k, {job.stats.accepted:,} events, {len(recorder.batches)} micro-batches of <= {batch}, "
        f"{job.stats.rows_written:,} rows, {label} online store; baseline: the same rows bulk-written "
        f"({'one Redis pipeline' if label == 'redis' else 'one executemany transaction'} per batch, no state); "
        f"load avg {load_before:.2f}"
    )
    rows = [Row(f"features stream throughput (events/s){suffix}", round(ours), round(limit), conditions=cond)]
    rate = min(0.5 * limit, 0.9 * ours)
    seconds = 5.0 if quick else 15.0
    load_before = os.getloadavg()[0]
    fresh = _freshness(settings, events, rate, seconds)
    rows.append(
        Row(
            f"features stream freshness p99 (s){suffix}",
            round(fresh["p99"], 3) if fresh["p99"] is not None else "n/a",
            1.0,
            conditions=(
                f"{fresh['n']:,} events XADDed at {rate:,.0f} events/s (min(0.5 x bulk limit, 0.9 x job "
                f"throughput)) to Redis Streams, {label} online store, batches <= {batch} events / "
                f"{settings.features.stream.max_batch_s} s; p50 {fresh['p50']:.3f} s, max {fresh['max']:.3f} s; "
                f"baseline = the SLO; load avg {load_before:.2f}"
            ),
        )
    )
    per_batch, per_event = _feast_push(settings, recorder, events, 5 if quick else 20, 100 if quick else 300)
    rows.append(
        Row(
            f"features stream Feast push per batch (events/s){suffix}",
            round(per_batch),
            round(ours),
            conditions=f"OnlineFeatures.push of the job's recorded batches ({batch} events each); baseline: the job",
        )
    )
    rows.append(
        Row(
            f"features stream Feast push per event (events/s){suffix}",
            round(per_event),
            round(ours),
            conditions="ActivityState.update + OnlineFeatures.push of 1 user + 1 item row per event; baseline: the job",
        )
    )
    return rows


def run(quick: bool) -> list[Row]:
    from freshrec.data.eventlog import EventLog
    from freshrec.data.prepare import prepare
    from freshrec.features import store

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        local = _settings(Path(tmp) / "work")
        prepare(local, "movielens-100k")
        store.apply(local)
        events = EventLog(local.eventlog_dir).read()
        events = events.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)
        rows += _rows_for(local, "sqlite", events, quick)

        project = f"freshrec_bench_{uuid.uuid4().hex[:6]}"
        redis_settings = _settings(Path(tmp) / "work-redis", "redis", project)
        prepare(redis_settings, "movielens-100k")
        try:
            store.apply(redis_settings)
            rows += _rows_for(redis_settings, "redis", events, quick)
        finally:
            fs = store.feature_store(redis_settings)
            fs._get_provider().online_store.teardown(fs.config, fs.list_feature_views(), fs.list_entities())
            fs.registry.delete_project(project, commit=True)
    return rows


if __name__ == "__main__":
    main_for(run)
