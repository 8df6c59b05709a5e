"""Feast's local stores, made safe for the two writers of a local run (as Feast's cluster stores are).

In a local run the online learner pushes fresh activity rows and serves lookups while a pipeline's features
task runs ``apply`` and ``materialize`` in another process. Two things in Feast's local stores break then:

- **Online store** (:class:`MonotonicSqliteOnlineStore`). Feast's ``SqliteOnlineStore`` overwrites a stored
  row whatever its timestamp, so a ``materialize`` of an older snapshot that lands after a push puts stale
  values back into serving, where they stay until the entity is active again. Feast's Redis store ignores
  a row older than the one it holds; this store does the same: per entity key, rows stamped before the
  stored ``event_ts`` are dropped, inside one write transaction (``BEGIN IMMEDIATE``), so no other writer
  can slip in between the check and the write. One difference: Redis also drops a row stamped at the *same*
  instant; here the later write wins, so two pushes of one entity within the same second of event time
  (MovieLens' resolution) keep the newer state.
- **Registry** (:class:`AtomicLocalRegistryStore`). Feast's file registry truncates ``registry.db`` and
  writes it in place, so a process refreshing its registry cache at that moment reads an empty or partial
  registry ("feature view not found"). This store writes a temporary file and renames it over the old one.

``freshrec.features.store.repo_config`` uses both for the local environment (``feature_repo/
feature_store.yaml`` too). Reads, tables and teardown are Feast's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    _quote_id,
    _table_id,
)
from feast.infra.registry.file import FileRegistryStore
from feast.utils import _utc_now, to_naive_utc

from freshrec.io import atomic_write_bytes

TYPE = "freshrec.features.local_store.MonotonicSqliteOnlineStore"
REGISTRY_STORE_TYPE = "freshrec.features.local_store.AtomicLocalRegistryStore"
_KEYS_PER_QUERY = 500  # well under SQLite's bound on host parameters


class MonotonicSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Same settings as Feast's SQLite store (``path``); only the type differs."""

    type: Literal["freshrec.features.local_store.MonotonicSqliteOnlineStore"] = TYPE  # type: ignore[assignment]


class MonotonicSqliteOnlineStore(SqliteOnlineStore):
    """``SqliteOnlineStore`` whose writes never move an entity's row back in event time."""

    def online_write_batch(
        self,
        config: Any,
        table: Any,
        data: list[tuple[Any, dict[str, Any], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        if not data:
            return
        conn = self._get_conn(config)
        table_name = _table_id(config.project, table, config.registry.enable_online_feature_view_versioning)
        version = config.entity_key_serialization_version
        keys = [serialize_entity_key(row[0], entity_key_serialization_version=version) for row in data]
        # Feast's write ends with `with conn:` (commit), which also ends this transaction; on an error it
        # rolls back, and so does the handler below if the check itself fails.
        conn.execute("BEGIN IMMEDIATE")
        try:
            stored = _stored_times(conn, table_name, keys)
            keep = []
            for key, row in zip(keys, data, strict=True):
                held = stored.get(key)
                if held is None or to_naive_utc(row[2]) >= held:
                    keep.append(row)
            if progress and len(keep) < len(data):
                progress(len(data) - len(keep))
            super().online_write_batch(config, table, keep, progress)
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        if conn.in_transaction:  # nothing was left to write
            conn.commit()


def _stored_times(conn: Any, table_name: str, keys: list[bytes]) -> dict[bytes, datetime]:
    """The newest stored ``event_ts`` per entity key (keys with no row are left out)."""
    out: dict[bytes, datetime] = {}
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), _KEYS_PER_QUERY):
        part = unique[start : start + _KEYS_PER_QUERY]
        marks = ", ".join("?" * len(part))
        try:
            rows = conn.execute(
                f"SELECT entity_key, event_ts FROM {_quote_id(table_name)} WHERE entity_key IN ({marks})",
                part,
            ).fetchall()
        except Exception as exc:  # the table is created by `apply`; a missing one holds nothing yet
            if "no such table" in str(exc):
                return {}
            raise
        for key, ts in rows:
            ts = _as_datetime(ts)
            if ts is not None and (key not in out or ts > out[key]):
                out[key] = ts
    return out


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return to_naive_utc(datetime.fromisoformat(str(value)))


class AtomicLocalRegistryStore(FileRegistryStore):
    """Feast's file registry store, written to a temporary file and renamed into place."""

    def _write_registry(self, registry_proto: Any) -> None:
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        path = self._filepath
        atomic_write_bytes(path, registry_proto.SerializeToString())
