"""Feast glue: apply, materialize, point-in-time training set, fast online lookup and push.

The store is configured in code (``FeatureStore(config=RepoConfig(...))``) from the settings, so the
workdir is chosen at run time and nothing is generated on disk but Feast's own files:

- ``environment == "local"``: provider local, file registry ``<workdir>/feast/registry.db``, SQLite
  online store ``<workdir>/feast/online.db``, file (Dask) offline store over ``<workdir>/tables``;
- ``environment == "redis"``: Redis online store (``features.redis_connection``) and the SQL registry
  on PostgreSQL (``features.postgres_url``); the offline store stays the Parquet tables.

The objects come from :func:`freshrec.features.definitions.make_definitions`; the checked-in
``feature_repo/`` holds the same objects and YAML files for the ``feast`` CLI.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from freshrec.config import Settings
from freshrec.features.activity import (
    CTR_PRIOR,
    HOURS_SINCE_LAST_CAP,
    ITEM_ACTIVITY,
    TAIL_OFFSET,
    USER_ACTIVITY,
    WINDOWS_DAYS,
    activity_defaults,
    compute_activity,
)
from freshrec.features.definitions import PUSH_SOURCES, TABLE_FILES, VIEW_NAMES, make_definitions
from freshrec.features.training_set import PROFILE_DEFAULTS
from freshrec.io import atomic_write_parquet

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig

log = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ROW_KEY = "freshrec_row"
JOIN_ROWS_PER_QUERY = 4_000_000  # see _entity_chunks

Progress = Callable[[str], None]


def feast_dir(settings: Settings) -> Path:
    """Where the local registry and SQLite online store live."""
    return (settings.workdir / "feast").resolve()


SQLITE_STORE_TYPE = "freshrec.features.local_store.MonotonicSqliteOnlineStore"
REGISTRY_STORE_TYPE = "freshrec.features.local_store.AtomicLocalRegistryStore"


def _is_sqlite(kind: str) -> bool:
    return kind == "sqlite" or kind.endswith("SqliteOnlineStore")


def repo_config(settings: Settings) -> RepoConfig:
    """The Feast ``RepoConfig`` for ``settings.features.environment``."""
    from feast import RepoConfig

    fs = settings.features
    common: dict[str, Any] = {
        "project": fs.project,
        "provider": "local",
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
        "repo_path": settings.tables_dir.resolve(),
    }
    if fs.environment == "local":
        # Only the local store keeps files here; a cluster pod's workdir holds only its mounted artefacts.
        feast_dir(settings).mkdir(parents=True, exist_ok=True)
        return RepoConfig(
            registry={
                "registry_type": "file",
                # written to a temporary file and renamed: a reader never sees it half-written
                "registry_store_type": REGISTRY_STORE_TYPE,
                "path": str(feast_dir(settings) / "registry.db"),
                "cache_ttl_seconds": 60,
            },
            # Feast's SQLite store, but a row older than the stored one is ignored, as Redis does it
            online_store={"type": SQLITE_STORE_TYPE, "path": str(feast_dir(settings) / "online.db")},
            **common,
        )
    return RepoConfig(
        registry={"registry_type": "sql", "path": fs.postgres_url, "cache_ttl_seconds": 60},
        online_store={"type": "redis", "connection_string": fs.redis_connection},
        **common,
    )


def feature_store(settings: Settings) -> FeatureStore:
    """A ``FeatureStore`` for the settings (no ``feature_store.yaml`` needed)."""
    from feast import FeatureStore

    return FeatureStore(config=repo_config(settings))


def table_paths(settings: Settings) -> dict[str, Path]:
    return {kind: settings.tables_dir / name for kind, name in TABLE_FILES.items()}


def write_activity_tables(settings: Settings, events: pd.DataFrame | None = None) -> dict[str, int]:
    """Compute the activity rows (from ``events`` or the whole event log) and write both tables.

    Returns the row counts by table kind.
    """
    if events is None:
        from freshrec.data.eventlog import EventLog

        events = EventLog(settings.eventlog_dir).read()
    if events.empty:
        raise ValueError(
            f"no events in the event log {settings.eventlog_dir}: run `freshrec data prepare` or ingest events first"
        )
    users, items = compute_activity(events)
    paths = table_paths(settings)
    # atomically: a reader (Feast, a pipeline step) never sees a half-written table
    atomic_write_parquet(users, paths["user_activity"])
    atomic_write_parquet(items, paths["item_activity"])
    log.info(
        "activity tables: %d user rows, %d item rows from %d events", len(users), len(items), len(events)
    )
    return {"user_activity": len(users), "item_activity": len(items), "events": len(events)}


def missing_profiles(settings: Settings) -> list[Path]:
    """The profile tables ``freshrec data prepare`` (or the pipeline's ingest) has not written yet."""
    paths = table_paths(settings)
    return [paths[kind] for kind in ("user_profile", "item_profile") if not paths[kind].exists()]


def _require_profiles(settings: Settings) -> None:
    paths = table_paths(settings)
    for kind in ("user_profile", "item_profile"):
        if not paths[kind].exists():
            raise FileNotFoundError(
                f"{paths[kind]} not found: run `freshrec data prepare` first (it writes the profiles)"
            )


APPLY_ATTEMPTS = 5


def _concurrent_registry_write(exc: BaseException) -> bool:
    """A unique-key violation from the SQL registry: another writer applied the same object first."""
    try:
        from sqlalchemy.exc import IntegrityError
    except ImportError:  # no SQL registry without sqlalchemy
        return False
    return isinstance(exc, IntegrityError)


@dataclass
class ApplyReport:
    project: str
    environment: str
    objects: list[str]
    activity_rows: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"applied {len(self.objects)} Feast objects to project {self.project} ({self.environment})"


def apply(settings: Settings, progress: Progress | None = None) -> ApplyReport:
    """Register entities, sources, views and the feature service (building activity tables if missing)."""
    say = progress or log.info
    _require_profiles(settings)
    paths = table_paths(settings)
    built: dict[str, int] = {}
    if not (paths["user_activity"].exists() and paths["item_activity"].exists()):
        say("building activity tables from the event log")
        built = write_activity_tables(settings)
    defs = make_definitions(settings.tables_dir.resolve(), settings.features.ttl_days)
    store = feature_store(settings)
    say(f"applying {len(defs.objects)} objects to project {settings.features.project}")
    for attempt in range(1, APPLY_ATTEMPTS + 1):
        try:
            store.apply(defs.objects)
            break
        except Exception as exc:
            if attempt == APPLY_ATTEMPTS or not _concurrent_registry_write(exc):
                raise
            # Another writer (the cluster's feast-apply Job, a pipeline's features task) inserted the same
            # rows between this apply's read and its insert: Feast's SQL registry upserts by select-then-
            # insert, so the loser hits the primary key. Its objects are now there; applying again updates
            # them to these definitions.
            say(
                f"concurrent registry write ({type(exc).__name__}); applying again ({attempt}/{APPLY_ATTEMPTS})"
            )
            time.sleep(0.2 * attempt)
            store = feature_store(settings)
    return ApplyReport(
        settings.features.project, settings.features.environment, [o.name for o in defs.objects], built
    )


@dataclass
class MaterializeReport:
    end: datetime
    views: dict[str, str]  # view name -> "full from 1970" | "incremental from <ts>"
    activity_rows: dict[str, int]
    seconds: float

    def __str__(self) -> str:
        kinds = sorted({how.split(" from ")[0] for how in self.views.values()})
        return (
            f"materialized {len(self.views)} views ({'/'.join(kinds)}) up to {self.end:%Y-%m-%d %H:%M:%S} UTC "
            f"in {self.seconds:.1f} s"
        )


def materialize(
    settings: Settings,
    end: datetime | None = None,
    incremental: bool = True,
    rebuild_activity: bool = True,
    progress: Progress | None = None,
) -> MaterializeReport:
    """Load the latest feature rows up to ``end`` (default now; the state just after the events at ``end``
    included) into the online store.

    The activity tables are recomputed from the event log first (``rebuild_activity``). A view that was
    never materialized is loaded in full (from 1970: MovieLens is older than any TTL-based start Feast
    would pick); later calls only load activity rows stamped after the previous end (profiles, small,
    are always loaded in full). Events that arrive late
    (stamped before that end) reach the offline tables but not the online store until a full run
    (``incremental=False``).
    """
    say = progress or log.info
    start_t = time.perf_counter()
    end = end or datetime.now(UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    # the state *after* the events at `end` is stamped end + TAIL_OFFSET: include it
    end = end + TAIL_OFFSET.to_pytimedelta()
    rows: dict[str, int] = {}
    if rebuild_activity:
        say("computing activity tables from the event log")
        rows = write_activity_tables(settings)
    store = feature_store(settings)
    done: dict[str, str] = {}
    for name in VIEW_NAMES:
        view = store.get_feature_view(name)
        last = view.most_recent_end_time
        # profiles are small and re-stamped at the start of the data by `prepare`, so a new id would never
        # fall in an incremental window: load them in full every time
        if incremental and last is not None and not name.endswith("_profile_fv"):
            say(f"{name}: incremental from {last:%Y-%m-%d %H:%M:%S}")
            store.materialize_incremental(end_date=end, feature_views=[name])
            done[name] = f"incremental from {last.isoformat()}"
        else:
            say(f"{name}: full")
            store.materialize(start_date=EPOCH, end_date=end, feature_views=[name])
            done[name] = "full from 1970"
    return MaterializeReport(end, done, rows, time.perf_counter() - start_t)


def _feast_default(dtype: Any) -> Any:
    name = str(dtype).lower()
    if "int" in name or "bool" in name:
        return PROFILE_DEFAULTS["int"]
    if "float" in name or "double" in name:
        return PROFILE_DEFAULTS["float"]
    return PROFILE_DEFAULTS["string"]


def _profile_schema(store: FeatureStore, entity: str) -> list[tuple[str, Any]]:
    view = store.get_feature_view(f"{entity}_profile_fv")
    return [(f.name, f.dtype) for f in view.features]


def _fix_profile_column(values: pd.Series, dtype: Any) -> pd.Series:
    default = _feast_default(dtype)
    values = values.astype(object).where(values.notna(), default)
    if isinstance(default, int):
        return values.astype(np.int64)
    if isinstance(default, float):
        return values.astype(np.float64)
    return values.astype(str).astype(object)


def _entity_chunks(pairs: pd.DataFrame, key: str, budget: int) -> list[pd.DataFrame]:
    """Split entity rows into groups of whole entities whose join size stays under ``budget`` rows.

    Feast's file store joins every entity row with every source row of the same entity before picking
    the point-in-time one, so an entity with n rows costs about n**2; whole entities per query keep the
    answer exact and bound the memory (MovieLens-100k in one query peaks near 3 GB).
    """
    counts = pairs.groupby(key).size()
    cost = counts.astype(np.int64) ** 2
    group = ((cost.cumsum() - cost) // max(budget, 1)).rename("chunk")  # by where each entity starts
    chunk_of = pairs[key].map(group)
    return [
        part.drop(columns="chunk") for _, part in pairs.assign(chunk=chunk_of.to_numpy()).groupby("chunk")
    ]


def training_set(settings: Settings, events: pd.DataFrame) -> pd.DataFrame:
    """The point-in-time training set for ``events``, by ``settings.features.training_set_engine``.

    ``feast`` asks the offline store (:func:`get_training_set`); ``pandas`` joins the profile tables
    and computes the activity features from ``events`` themselves
    (:func:`freshrec.features.training_set.build_training_frame`). Both give the same frame.
    """
    if settings.features.training_set_engine == "feast":
        return get_training_set(settings, events)
    from freshrec.features.training_set import build_training_frame

    _require_profiles(settings)
    paths = table_paths(settings)
    return build_training_frame(
        events, pd.read_parquet(paths["user_profile"]), pd.read_parquet(paths["item_profile"])
    )


def get_training_set(settings: Settings, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Feast point-in-time training set for ``entity_df`` (events): same columns as ``build_training_frame``.

    Rows keep the order of ``entity_df``; missing profiles and activity get the documented defaults.
    """
    for col in ("event_timestamp", "user_id", "item_id"):
        if col not in entity_df.columns:
            raise ValueError(f"entity_df lacks column {col!r}; has {list(entity_df.columns)}")
    store = feature_store(settings)
    service = store.get_feature_service(settings.features.feature_service)
    edf = entity_df.reset_index(drop=True)
    ts = pd.to_datetime(edf["event_timestamp"], utc=True)
    out = pd.DataFrame(index=edf.index)
    # One Feast query per entity, over its distinct (id, timestamp) pairs. Asking for the user and item views
    # in one query loses features: Feast's file offline store de-duplicates on (join keys seen so far,
    # timestamp) after each view, so two events of a user at the same second with different items get
    # nulls for one of them (MovieLens is full of such sessions).
    for entity in ("user", "item"):
        key = f"{entity}_id"
        refs = [
            f"{proj.name_to_use()}:{feat.name}"
            for proj in service.feature_view_projections
            if proj.name.startswith(f"{entity}_")
            for feat in proj.features
        ]
        pairs = pd.DataFrame({key: edf[key].astype(str), "event_timestamp": ts}).drop_duplicates()
        parts = [
            store.get_historical_features(entity_df=chunk.reset_index(drop=True), features=refs).to_df()
            for chunk in _entity_chunks(pairs, key, JOIN_ROWS_PER_QUERY)
        ]
        got = pd.concat(parts, ignore_index=True)
        got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True)
        got = got.drop_duplicates([key, "event_timestamp"])
        left = pd.DataFrame({key: edf[key].astype(str), "event_timestamp": ts, ROW_KEY: np.arange(len(edf))})
        merged = left.merge(got, on=[key, "event_timestamp"], how="left", validate="many_to_one")
        merged = merged.sort_values(ROW_KEY).reset_index(drop=True)
        for col in merged.columns:
            if col not in (key, "event_timestamp", ROW_KEY):
                out[col] = merged[col]
    frame = entity_df.reset_index(drop=True).copy()
    for entity in ("user", "item"):
        for name, dtype in _profile_schema(store, entity):
            frame[name] = _fix_profile_column(out[name], dtype).to_numpy()
    for entity, names in (("user", USER_ACTIVITY), ("item", ITEM_ACTIVITY)):
        defaults = activity_defaults(entity)
        for name in names:
            frame[name] = out[name].astype(np.float64).fillna(defaults[name]).astype(np.float32).to_numpy()
    return frame


def _value_to_python(value: Any, default: Any) -> Any:
    """A Feast ``ValueProto`` as a Python scalar (``default`` when missing or unset)."""
    if value is None:
        return default
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return default
    return getattr(value, kind)


@functools.cache
def _fixed_width_kinds() -> dict[int, tuple[int, np.dtype]]:
    """Serialized size -> (tag byte, numpy dtype) of the ``ValueProto`` kinds numpy can decode in bulk."""
    from feast.protos.feast.types.Value_pb2 import Value

    kinds = {}
    for kind, dtype in (("float_val", "<f4"), ("double_val", "<f8")):
        raw = Value(**{kind: 0.0}).SerializeToString()  # one tag byte, then the little-endian value
        kinds[len(raw)] = (raw[0], np.dtype(dtype))
    return kinds


def _decode_column(blobs: Sequence[bytes | None], default: Any, dtype: Any) -> np.ndarray:
    """Serialized Feast ``ValueProto``s (None or empty: missing) as one typed column.

    The values of :func:`_value_to_python` on each parsed blob (``default`` for missing, unset or null),
    cast to ``dtype``. A column of floats or doubles only (the activity features) is decoded at once
    with numpy; any other column (strings, ints, a mix) is parsed blob by blob.
    """
    out = np.full(len(blobs), default, dtype=dtype)
    if all(blobs):  # every id has a value: the usual case
        present: Sequence[int] = range(len(blobs))
        values = blobs
    else:
        present = [i for i, blob in enumerate(blobs) if blob]
        if not present:
            return out
        values = [blobs[i] for i in present]
    size = len(values[0])
    fixed = _fixed_width_kinds().get(size)
    if fixed is not None and set(map(len, values)) == {size}:
        raw = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(values), size)
        if (raw[:, 0] == fixed[0]).all():
            out[list(present)] = raw[:, 1:].copy().view(fixed[1])[:, 0]
            return out
    from feast.protos.feast.types.Value_pb2 import Value

    for i, blob in zip(present, values, strict=True):
        out[i] = _value_to_python(Value.FromString(blob), default)
    return out


EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)


def _aged_hours(hours: float, row_ts: datetime | None, as_of: datetime) -> float:
    """``hours_since_last`` of a row stamped ``row_ts``, moved forward to ``as_of``, *uncapped* (no
    history stays at the cap)."""
    if row_ts is None or hours >= HOURS_SINCE_LAST_CAP:
        return hours
    return hours + max((as_of - row_ts).total_seconds() / 3600.0, 0.0)


def _aged_hours_epoch(hours: np.ndarray, rows: np.ndarray, stamps: Any, as_of: datetime) -> np.ndarray | None:
    """:func:`_aged_hours` of ``rows`` at once, for stamps that are integer epoch seconds (None otherwise).

    The same floats as the scalar path: the elapsed time is exact in integer microseconds, then divided
    as ``timedelta.total_seconds`` does (one correctly rounded division).
    """
    picked = stamps[rows] if isinstance(stamps, np.ndarray) else [stamps[k] for k in rows]
    kinds = set(map(type, picked))
    if kinds and kinds != {int}:
        return None
    as_of_us = (as_of - EPOCH_UTC) // timedelta(microseconds=1)
    elapsed_s = (as_of_us - np.asarray(picked, dtype=np.int64) * 1_000_000).astype(np.float64) / 1e6
    stored = hours[rows].astype(np.float64)
    return np.where(stored >= HOURS_SINCE_LAST_CAP, stored, stored + np.maximum(elapsed_s / 3600.0, 0.0))


def _age_activity(
    cols: dict[str, np.ndarray], entity: str, found: Any, stamps: Any, to_datetime: Any, as_of: datetime
) -> None:
    """Move a stored activity row forward to the request time ``as_of``, where that is exact.

    ``hours_since_last`` grows by the time elapsed since the row's stamp (capped, as offline). A window
    count (``events_1d|7d|30d``, and ``ctr_30d`` with it) whose window now starts after the entity's last
    event is 0 (``ctr_30d``: the prior), exactly as the offline definition gives it; a window that still
    reaches back to the last event keeps its stored value (an upper bound: the row does not say which of
    its events have left the window since).
    """
    hours_name = f"{entity}_hours_since_last"
    if hours_name not in cols:
        return
    rows = np.flatnonzero(found)
    if not len(rows):
        return
    hours = cols[hours_name]
    aged = _aged_hours_epoch(hours, rows, stamps, as_of) if to_datetime is _sqlite_ts else None
    if aged is None:
        aged = np.array([_aged_hours(float(hours[k]), to_datetime(stamps[k]), as_of) for k in rows])
    hours[rows] = np.minimum(aged, HOURS_SINCE_LAST_CAP)
    for days in WINDOWS_DAYS:
        name = f"{entity}_events_{days}d"
        if name not in cols:
            continue
        # the window [as_of - days, as_of) holds the last event iff it is at most `days` old; a capped
        # "no history" value (>= the cap) has no event in any window either
        expired = rows[aged > days * 24.0]
        cols[name][expired] = 0
        if days == 30 and f"{entity}_ctr_30d" in cols:
            cols[f"{entity}_ctr_30d"][expired] = CTR_PRIOR


@dataclass
class _StoredRows:
    """One view's rows for a list of ids as the online store keeps them, not decoded yet."""

    blobs: dict[str, list[bytes | None]]  # per feature: each id's serialized ValueProto (None: missing)
    found: list[bool]  # whether the store has a row for each id
    stamps: list[Any]  # each row's timestamp as stored (see ``to_datetime``)
    to_datetime: Callable[[Any], datetime | None]

    @classmethod
    def empty(cls, names: list[str], n: int, to_datetime: Callable[[Any], datetime | None]) -> _StoredRows:
        return cls({name: [None] * n for name in names}, [False] * n, [None] * n, to_datetime)


class _SqliteReader:
    """Reads Feast's SQLite online tables (``<project>_<view>``: entity_key, feature_name, value, event_ts).

    One query per lookup for every view of the user and the items (Feast's ``online_read`` sends one
    per view, serializes every key and converts every timestamp on every call): the ids are joined as
    ``VALUES (position, key)`` rows, so each result row carries its id's position and no key bytes come
    back; serialized keys are cached per id. The table layout is Feast's; a failing read falls back to
    ``online_read``, and the lookup tests check the values against it and the offline computation.
    """

    def __init__(self, config: RepoConfig, views: dict[str, list[tuple[Any, list[str]]]]) -> None:
        path = Path(config.online_store.path)
        if not path.is_absolute() and config.repo_path:
            path = Path(config.repo_path) / path
        self._conn = sqlite3.connect(str(path), check_same_thread=False, timeout=10.0)
        self._lock = threading.Lock()
        self._project = config.project
        self._version = config.entity_key_serialization_version
        self._views = views
        self._key_bytes: dict[tuple[str, str], bytes] = {}
        self._sql: dict[tuple[tuple[str, int], ...], str] = {}

    def _key(self, entity: str, entity_id: str) -> bytes:
        key = self._key_bytes.get((entity, entity_id))
        if key is None:
            from feast.infra.key_encoding_utils import serialize_entity_key
            from feast.protos.feast.types.EntityKey_pb2 import EntityKey
            from feast.protos.feast.types.Value_pb2 import Value

            if len(self._key_bytes) > 1_000_000:  # bound the cache on endless id streams
                self._key_bytes.clear()
            proto = EntityKey(join_keys=[f"{entity}_id"], entity_values=[Value(string_val=entity_id)])
            key = serialize_entity_key(proto, entity_key_serialization_version=self._version)
            self._key_bytes[(entity, entity_id)] = key
        return key

    def _query(self, shape: tuple[tuple[str, int], ...]) -> str:
        """The SQL for ``shape`` (entity, number of ids): rows (view number, id position, feature, value, ts)."""
        sql = self._sql.get(shape)
        if sql is None:
            keys, selects = [], []
            for k, (entity, n) in enumerate(shape):
                keys.append(f"k{k}(pos, key) AS (VALUES {','.join(f'({i}, ?)' for i in range(n))})")
                for view, _ in self._views[entity]:
                    selects.append(
                        f"SELECT {len(selects)}, k.pos, t.feature_name, t.value, t.event_ts FROM k{k} AS k "
                        f'JOIN "{self._project}_{view.name}" AS t ON t.entity_key = k.key'
                    )
            sql = self._sql[shape] = f"WITH {', '.join(keys)} {' UNION ALL '.join(selects)}"
        return sql

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: it changes whenever another connection commits to the file
        (Feast's writes, a push, a materialize, another process), so equal values mean nothing changed."""
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def read(self, ids: dict[str, list[str]]) -> dict[str, list[_StoredRows]]:
        """Per entity, per view: the stored rows of ``ids[entity]`` (each list non-empty)."""
        sql = self._query(tuple((entity, len(entity_ids)) for entity, entity_ids in ids.items()))
        params = [self._key(entity, i) for entity, entity_ids in ids.items() for i in entity_ids]
        with self._lock:
            fetched = self._conn.execute(sql, params).fetchall()
        out = {
            entity: [
                _StoredRows.empty(names, len(ids[entity]), _sqlite_ts) for _, names in self._views[entity]
            ]
            for entity in ids
        }
        by_number = [rows for entity in ids for rows in out[entity]]
        for number, pos, name, blob, ts in fetched:
            rows = by_number[number]
            column = rows.blobs.get(name)
            if column is not None:
                column[pos] = blob
            rows.found[pos] = True
            rows.stamps[pos] = ts
        return out


class _RedisReader:
    """One HMGET per entity id for *all* its views (Feast keeps them in the same hash), one pipeline per lookup.

    Feast's ``online_read`` sends one pipeline per view and re-serializes every key each time; the
    fields and keys here are built with Feast's own helpers (``_redis_key``, ``_mmh3``), the replies
    decoded as Feast does, and the Redis lookup test checks the values against ``online_read`` and the
    offline computation.
    """

    def __init__(
        self, online_store: Any, config: RepoConfig, views: dict[str, list[tuple[Any, list[str]]]]
    ) -> None:
        from feast.infra.online_stores.helpers import _mmh3

        self._store = online_store
        self._config = config
        self._keys: dict[tuple[str, str], bytes] = {}
        # per entity: the field list of one HMGET and, per view, the slice of it and the feature names
        self._fields: dict[str, list[Any]] = {}
        self._layout: dict[str, list[tuple[int, int, list[str]]]] = {}
        for entity, entity_views in views.items():
            fields: list[Any] = []
            layout = []
            for view, names in entity_views:
                start = len(fields)
                fields += [_mmh3(f"{view.name}:{n}") for n in names] + [f"_ts:{view.name}"]
                layout.append((start, len(fields), names))
            self._fields[entity] = fields
            self._layout[entity] = layout

    def _key(self, entity: str, entity_id: str) -> bytes:
        key = self._keys.get((entity, entity_id))
        if key is None:
            from feast.infra.online_stores.helpers import _redis_key
            from feast.protos.feast.types.EntityKey_pb2 import EntityKey
            from feast.protos.feast.types.Value_pb2 import Value

            if len(self._keys) > 1_000_000:
                self._keys.clear()
            proto = EntityKey(join_keys=[f"{entity}_id"], entity_values=[Value(string_val=entity_id)])
            key = _redis_key(
                self._config.project,
                proto,
                entity_key_serialization_version=self._config.entity_key_serialization_version,
            )
            self._keys[(entity, entity_id)] = key
        return key

    def read(self, ids: dict[str, list[str]]) -> dict[str, list[_StoredRows]]:
        """Per entity, per view: the stored rows of ``ids[entity]`` (each list non-empty)."""
        commands = [
            (self._key(entity, i), self._fields[entity])
            for entity, entity_ids in ids.items()
            for i in entity_ids
        ]
        replies = self._store._read_hash_fields(self._config, commands)
        out: dict[str, list[_StoredRows]] = {}
        first = 0
        for entity, entity_ids in ids.items():
            part = replies[first : first + len(entity_ids)]
            first += len(entity_ids)
            fields = [list(values) for values in zip(*part, strict=True)]  # one list per field
            out[entity] = [
                _StoredRows(
                    blobs={name: fields[start + j] for j, name in enumerate(names)},
                    # Feast: an id none of whose fields is set has no row
                    found=[reply[start:end].count(None) < end - start for reply in part],
                    stamps=fields[end - 1],
                    to_datetime=_redis_ts,
                )
                for start, end, names in self._layout[entity]
            ]
        return out


def _redis_ts(raw: bytes | None) -> datetime:
    """Feast's Redis ``_ts:<view>`` field (a serialized ``Timestamp``; unset reads as the epoch, as in Feast)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    if raw:
        stamp.ParseFromString(raw)
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, UTC)


def _identity(value: Any) -> Any:
    return value


def _sqlite_ts(raw: Any) -> datetime | None:
    """Feast's SQLite ``event_ts``: epoch seconds (current Feast) or an ISO string (older files)."""
    if raw is None:
        return None
    if isinstance(raw, int | float):
        return datetime.fromtimestamp(raw, UTC)
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ts = datetime.fromisoformat(text)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


class _DecodedCache:
    """Decoded, not yet aged, stored rows of one entity's ids, valid for one SQLite ``data_version``.

    Rows live in one typed array per feature (and a found mask and raw stamp per view), grown by
    doubling, so a lookup of cached ids is one fancy index per column. Anything committed to the file
    by any connection changes ``data_version`` and empties the cache (see :meth:`OnlineFeatures._read`):
    a cached lookup returns exactly what a direct read would.
    """

    MAX_IDS = 200_000

    def __init__(self, dtypes: dict[str, Any], n_views: int) -> None:
        self.dtypes = dtypes
        self.n_views = n_views
        self.clear()

    def clear(self) -> None:
        self.pos: dict[str, int] = {}
        self._alloc(64)

    def _alloc(self, capacity: int) -> None:
        self.capacity = capacity
        self.values = {name: np.empty(capacity, dtype) for name, dtype in self.dtypes.items()}
        self.found = [np.zeros(capacity, bool) for _ in range(self.n_views)]
        self.stamps = [np.empty(capacity, object) for _ in range(self.n_views)]

    def _grow(self, need: int) -> None:
        n = len(self.pos)
        old = (self.values, self.found, self.stamps)
        capacity = self.capacity
        while capacity < need:
            capacity *= 2
        self._alloc(capacity)
        for name, arr in old[0].items():
            self.values[name][:n] = arr[:n]
        for new_list, old_list in ((self.found, old[1]), (self.stamps, old[2])):
            for new_arr, old_arr in zip(new_list, old_list, strict=True):
                new_arr[:n] = old_arr[:n]

    def gather(self, idx: np.ndarray) -> tuple[dict[str, np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Copies of the cached rows at positions ``idx``: (columns, found per view, stamps per view)."""
        return (
            {name: values[idx] for name, values in self.values.items()},
            [f[idx] for f in self.found],
            [t[idx] for t in self.stamps],
        )

    def add(self, ids: list[str], cols: dict[str, np.ndarray], found: list[Any], stamps: list[Any]) -> None:
        """Keep the rows of ``ids`` (distinct); ids cached meanwhile by another thread are skipped."""
        keep = [k for k, i in enumerate(ids) if i not in self.pos]
        if not keep:
            return
        if len(self.pos) + len(keep) > self.MAX_IDS:  # bound memory on endless id streams
            self.clear()
            keep = list(range(len(ids)))
        start = len(self.pos)
        stop = start + len(keep)
        if stop > self.capacity:
            self._grow(stop)
        take = np.asarray(keep, dtype=np.intp)
        for name, arr in self.values.items():
            arr[start:stop] = np.asarray(cols[name])[take]
        for arr, new in zip(self.found, found, strict=True):
            arr[start:stop] = np.asarray(new, dtype=bool)[take]
        for arr, new in zip(self.stamps, stamps, strict=True):
            for j, k in enumerate(keep):
                arr[start + j] = new[k]
        for j, k in enumerate(keep):
            self.pos[ids[k]] = start + j


class OnlineFeatures:
    """Online lookups for ranking (1 user x N candidate items) and pushes from the online learner.

    ``lookup`` reads the one user and the de-duplicated items once and broadcasts the user row, instead
    of asking the feature service for N (user, item) rows (N-1 redundant user reads and Feast's per-row
    response assembly). Reads go through :class:`_SqliteReader` (SQLite: one query for all views) or
    :class:`_RedisReader` (Redis: one pipeline, one HMGET per id for all its views), whose stored values
    are decoded a column at a time (:func:`_decode_column`), and through Feast's ``online_read`` for any
    other online store; the tests check the direct readers equal to ``online_read``. The benchmark
    measures this against Feast's plain ``get_online_features``.
    """

    def __init__(self, settings: Settings, store: FeatureStore | None = None) -> None:
        self.settings = settings
        self.store = store or feature_store(settings)
        self._online = self.store._get_provider().online_store
        self._views: dict[str, list[tuple[Any, list[str]]]] = {}
        self._defaults: dict[str, dict[str, Any]] = {}
        self._columns: dict[str, list[str]] = {}
        self._keys: dict[str, dict[str, Any]] = {"user": {}, "item": {}}
        config = self.store.config
        for entity in ("user", "item"):
            views: list[tuple[Any, list[str]]] = []
            defaults: dict[str, Any] = {}
            for view_name in (f"{entity}_profile_fv", f"{entity}_activity_fv"):
                view = self.store.get_feature_view(view_name)
                names = [feat.name for feat in view.features]
                if view_name.endswith("_activity_fv"):  # the contract's order, whatever order Feast keeps
                    order = USER_ACTIVITY if entity == "user" else ITEM_ACTIVITY
                    names = [n for n in order if n in names] + [n for n in names if n not in order]
                views.append((view, names))
                defaults.update({feat.name: _feast_default(feat.dtype) for feat in view.features})
            defaults.update(activity_defaults(entity))
            self._views[entity] = views
            self._defaults[entity] = defaults
            self._columns[entity] = [name for _, names in views for name in names]
        self._dtypes: dict[str, Any] = {}
        for entity in ("user", "item"):
            for name, default in self._defaults[entity].items():
                if name in USER_ACTIVITY or name in ITEM_ACTIVITY:
                    self._dtypes[name] = np.float32
                elif isinstance(default, int):
                    self._dtypes[name] = np.int64
                elif isinstance(default, float):
                    self._dtypes[name] = np.float64
                else:
                    self._dtypes[name] = object
        kind = config.online_store.type
        self._sqlite = _SqliteReader(config, self._views) if _is_sqlite(kind) else None
        self._redis = _RedisReader(self._online, config, self._views) if kind == "redis" else None
        # SQLite only: rows already decoded, until the file changes (Redis has no cheap change counter)
        self._cache = {
            entity: _DecodedCache(
                {n: self._dtypes[n] for n in self._columns[entity]}, len(self._views[entity])
            )
            for entity in ("user", "item")
        }
        self._cache_version: int | None = None
        self._cache_lock = threading.Lock()

    @property
    def columns(self) -> list[str]:
        """Columns of a lookup frame: ids, user features, item features."""
        return ["user_id", "item_id", *self._columns["user"], *self._columns["item"]]

    def _entity_keys(self, entity: str, ids: list[str]) -> list[Any]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        cache = self._keys[entity]
        out = []
        for i in ids:
            key = cache.get(i)
            if key is None:
                if len(cache) > 1_000_000:  # bound the cache on endless id streams
                    cache.clear()
                key = cache[i] = EntityKey(join_keys=[f"{entity}_id"], entity_values=[Value(string_val=i)])
            out.append(key)
        return out

    def _stored_rows(self, ids: dict[str, list[str]]) -> dict[str, list[Any]]:
        """Per entity, per view: ``_StoredRows``, or Feast's ``online_read`` answer for other stores."""
        if self._redis is not None:
            return self._redis.read(ids)
        if self._sqlite is not None:
            try:
                return self._sqlite.read(ids)
            except sqlite3.Error as exc:  # e.g. a table not created yet: Feast's own path decides
                log.debug("direct SQLite read failed (%s); using online_read", exc)
        return {
            entity: [
                self._online.online_read(
                    self.store.config, view, self._entity_keys(entity, entity_ids), list(names)
                )
                for view, names in self._views[entity]
            ]
            for entity, entity_ids in ids.items()
        }

    def _read(self, ids: dict[str, list[str]], as_of: datetime | None) -> dict[str, dict[str, np.ndarray]]:
        """Per entity: one typed column per feature with a value per id (defaults for unknown ids).

        With the SQLite reader, decoded rows are kept (:class:`_DecodedCache`) while the file's
        ``data_version`` stays the same, and only ids not seen since the last change are read.
        """
        if self._sqlite is None:
            return self._read_stored(ids, as_of)
        try:
            version = self._sqlite.data_version()
        except sqlite3.Error:
            return self._read_stored(ids, as_of)
        with self._cache_lock:
            if version != self._cache_version:
                for cache in self._cache.values():
                    cache.clear()
                self._cache_version = version
            # the cache's position of every id (None: not cached); all cached, the common case: gather now,
            # under the same lock (positions change only when the cache is emptied), age outside it
            where = {
                entity: list(map(self._cache[entity].pos.get, entity_ids))
                for entity, entity_ids in ids.items()
            }
            hit = None
            if not any(None in w for w in where.values()):
                hit = {
                    entity: self._cache[entity].gather(np.array(w, dtype=np.intp))
                    for entity, w in where.items()
                }
            else:
                missing = {
                    entity: [i for i in dict.fromkeys(entity_ids) if i not in self._cache[entity].pos]
                    for entity, entity_ids in ids.items()
                }
        if hit is not None:
            return self._aged(hit, as_of)
        missing = {entity: m for entity, m in missing.items() if m}
        if missing:
            fresh = self._read_stored(missing, None, keep=True)
            with self._cache_lock:
                if self._cache_version == version:  # a change meanwhile: these rows may be older than it
                    for entity, entity_ids in missing.items():
                        cols, found, stamps = fresh[entity]
                        self._cache[entity].add(entity_ids, cols, found, stamps)
                    fresh = {}
            if fresh:
                return self._read_stored(ids, as_of)
        with self._cache_lock:
            if self._cache_version != version:  # emptied by a concurrent change: read directly
                gathered = None
            else:
                gathered = {}
                for entity, entity_ids in ids.items():
                    cache = self._cache[entity]
                    where = list(map(cache.pos.get, entity_ids))
                    if None in where:  # another thread's add emptied the cache (MAX_IDS) meanwhile
                        gathered = None
                        break
                    gathered[entity] = cache.gather(np.array(where, dtype=np.intp))
        if gathered is None:
            return self._read_stored(ids, as_of)
        return self._aged(gathered, as_of)

    def _aged(self, gathered: dict[str, Any], as_of: datetime | None) -> dict[str, dict[str, np.ndarray]]:
        """Per entity, the gathered cached columns, aged to ``as_of`` (see :func:`_age_activity`)."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for entity, (cols, founds, stamps) in gathered.items():
            out[entity] = cols
            if as_of is not None:
                for k, (_, names) in enumerate(self._views[entity]):
                    if f"{entity}_hours_since_last" in names:
                        _age_activity(cols, entity, founds[k], stamps[k], _sqlite_ts, as_of)
        return out

    def _read_stored(
        self, ids: dict[str, list[str]], as_of: datetime | None, keep: bool = False
    ) -> dict[str, Any]:
        """:meth:`_read` straight from the store; ``keep``: per entity (columns, found, stamps) per view,
        not aged, for the cache."""
        out: dict[str, Any] = {}
        for entity, views in self._stored_rows(ids).items():
            defaults = self._defaults[entity]
            cols = {}
            founds: list[Any] = []
            stamp_lists: list[Any] = []
            out[entity] = (cols, founds, stamp_lists) if keep else cols
            for (_, names), rows in zip(self._views[entity], views, strict=True):
                if isinstance(rows, _StoredRows):
                    for name in names:
                        cols[name] = _decode_column(rows.blobs[name], defaults[name], self._dtypes[name])
                    found, stamps, to_datetime = rows.found, rows.stamps, rows.to_datetime
                else:  # online_read: (timestamp, {feature: ValueProto}) or (None, None) per id
                    for name in names:
                        default = defaults[name]
                        cols[name] = np.asarray(
                            [
                                default if vals is None else _value_to_python(vals.get(name), default)
                                for _, vals in rows
                            ],
                            dtype=self._dtypes[name],
                        )
                    found = [vals is not None for _, vals in rows]
                    stamps, to_datetime = [ts for ts, _ in rows], _identity
                founds.append(found)
                stamp_lists.append(stamps)
                if as_of is not None and f"{entity}_hours_since_last" in names:
                    _age_activity(cols, entity, found, stamps, to_datetime, as_of)
        return out

    def lookup(self, user_id: str, item_ids: list[str], as_of: datetime | None = None) -> pd.DataFrame:
        """One row per item (in order): ``user_id``, ``item_id``, user and item features; unknown ids get defaults.

        The frame of :meth:`lookup_columns` (see there for ``as_of``).
        """
        return pd.DataFrame(self.lookup_columns(user_id, item_ids, as_of), copy=False)

    def lookup_columns(
        self, user_id: str, item_ids: list[str], as_of: datetime | None = None
    ) -> dict[str, np.ndarray]:
        """:meth:`lookup`'s columns as typed numpy arrays, without building a frame (the gateway's path).

        Args:
            as_of: the request time. When given, ``*_hours_since_last`` is aged from the stored row's
                timestamp to it (stored hours + elapsed, capped), so serving matches training, and a
                window count whose window no longer reaches the entity's last event is 0 (``ctr_30d``:
                the prior), as offline; other window counts stay as of the stored row (fresh while the
                online learner pushes). When None, the stored values are returned as they are.
        """
        user_id = str(user_id)
        item_ids = list(map(str, item_ids))
        if as_of is not None and as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=UTC)
        unique = list(dict.fromkeys(item_ids))
        read = self._read({"user": [user_id], "item": unique} if unique else {"user": [user_id]}, as_of)
        items = read.get("item") or {c: np.empty(0, self._dtypes[c]) for c in self._columns["item"]}
        if len(unique) != len(item_ids):
            pos = {i: k for k, i in enumerate(unique)}
            idx = np.fromiter((pos[i] for i in item_ids), dtype=np.intp, count=len(item_ids))
            items = {name: values[idx] for name, values in items.items()}
        n = len(item_ids)
        # typed numpy columns first and the frame once: pandas per-column assignment costs more than the reads
        cols: dict[str, np.ndarray] = {
            "user_id": np.full(n, user_id, dtype=object),
            "item_id": np.asarray(item_ids, dtype=object),
        }
        for name in self._columns["user"]:
            cols[name] = np.repeat(read["user"][name], n)
        for name in self._columns["item"]:
            cols[name] = items[name]
        return cols

    def push(self, user_rows: pd.DataFrame | None = None, item_rows: pd.DataFrame | None = None) -> int:
        """Push fresh activity rows (``ActivityState.user_rows``/``item_rows`` frames) to the online store.

        Each frame needs ``<entity>_id``, ``event_timestamp`` and the activity features. Returns rows pushed.
        Stamp rows with the time of the state they hold (``ActivityState`` uses ``as_of``): both online
        stores ignore a row older than the one they hold (SQLite through
        :mod:`freshrec.features.local_store`), so a late ``materialize`` never undoes a fresher push.
        """
        from feast.data_source import PushMode

        pushed = 0
        for entity, rows, names in (("user", user_rows, USER_ACTIVITY), ("item", item_rows, ITEM_ACTIVITY)):
            if rows is None or rows.empty:
                continue
            needed = [f"{entity}_id", "event_timestamp", *names]
            missing = [c for c in needed if c not in rows.columns]
            if missing:
                raise ValueError(f"{entity} rows to push lack column(s) {missing}")
            df = rows[needed].copy()
            df[f"{entity}_id"] = df[f"{entity}_id"].astype(str)
            df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
            for name in names:
                df[name] = df[name].astype(np.float32)
            self.store.push(PUSH_SOURCES[entity], df, to=PushMode.ONLINE)
            pushed += len(df)
        return pushed
