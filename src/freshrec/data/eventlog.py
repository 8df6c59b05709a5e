"""The append-only event log: Parquet files partitioned by event date.

Layout under ``root``::

    date=2024-01-31/part-<uuid>.parquet   one file per append and date, never rewritten
    _manifest/<sha256>.json               one entry per ingested source (file hash or content hash)
    .lock                                  serialises writers (fcntl)

A part file appears atomically (written under ``_tmp/`` then ``os.replace``d into its partition). An append
of a source already in the manifest is skipped, and rows whose ``event_id`` is already stored in the touched
partitions are dropped, so re-ingesting a file, or retrying an append that died half-way, adds nothing twice.
Readers never see a half-written file; an interrupted multi-partition append may be visible in part until
it is retried, and the retry completes it without duplicates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from freshrec.data.validation import EVENT_COLUMNS
from freshrec.io import atomic_write_json, exclusive_lock, publish_files

log = logging.getLogger(__name__)

_PARTITION = "date="


@dataclass
class AppendResult:
    """What one :meth:`EventLog.append` did.

    Attributes:
        received: rows handed to append.
        written: rows now stored.
        duplicates: rows dropped because their ``event_id`` was repeated in the batch or already stored.
        already_ingested: the source (or identical content) was appended before; nothing was written.
        files: the part files written.
    """

    source_id: str
    received: int
    written: int
    duplicates: int
    already_ingested: bool = False
    files: list[Path] = field(default_factory=list)

    @property
    def partitions(self) -> list[str]:
        return sorted({p.parent.name for p in self.files})


def content_hash(df: pd.DataFrame) -> str:
    """A stable hash of an event frame's rows and columns (order-sensitive), used when no source id is given.

    Hashes the Arrow IPC serialisation of the frame: fast, and equal frames give equal bytes.
    """
    import pyarrow as pa

    h = hashlib.sha256(",".join(map(str, df.columns)).encode())
    if len(df):
        try:
            table = pa.Table.from_pandas(df, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed-type context columns
            table = pa.Table.from_pandas(df.astype(str), preserve_index=False)
        table = table.replace_schema_metadata(None)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        h.update(sink.getvalue())
    return h.hexdigest()


def _unique_table(df: pd.DataFrame):  # -> pa.Table | None
    """``df`` as an Arrow table with UTC timestamps, when its event ids are distinct strings; else None
    (then :meth:`EventLog.append` takes the pandas path, which also reports a column Arrow cannot hold)."""
    import pyarrow as pa

    stamps = df["event_timestamp"]
    if not len(df) or stamps.dtype != pd.DatetimeTZDtype("ns", "UTC") or stamps.hasnans:
        return None
    try:
        table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    ids = table.column("event_id")
    if ids.type != pa.string() or ids.null_count:
        return None
    if len(ids.combine_chunks().dictionary_encode().dictionary) != len(ids):
        return None
    return table


def day_strings(timestamps: pd.Series) -> np.ndarray:
    """UTC dates as ``YYYY-MM-DD`` strings (NaT -> "NaT"); numpy's conversion, far faster than strftime."""
    values = timestamps.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    days, inverse = np.unique(values.astype("datetime64[D]"), return_inverse=True)
    return days.astype(str)[inverse]  # each distinct date formatted once


def _partition_date(name: str) -> date | None:
    if not name.startswith(_PARTITION):
        return None
    try:
        return date.fromisoformat(name[len(_PARTITION) :])
    except ValueError:
        return None


def _utc(value: datetime | pd.Timestamp | str) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


class EventLog:
    """Append-only, date-partitioned Parquet event log at ``root``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------------------------------ writing

    def _locked(self) -> AbstractContextManager[None]:
        return exclusive_lock(self.root / ".lock")

    def _manifest_path(self, source_id: str) -> Path:
        return self.root / "_manifest" / f"{hashlib.sha256(source_id.encode()).hexdigest()}.json"

    def has_source(self, source_id: str) -> bool:
        """Whether ``source_id`` was appended before."""
        return self._manifest_path(source_id).is_file()

    def manifest(self) -> list[dict]:
        """Every manifest entry (source_id, rows, written, files, ingested_at), oldest first."""
        folder = self.root / "_manifest"
        if not folder.is_dir():
            return []
        entries = [json.loads(p.read_text()) for p in folder.glob("*.json")]
        return sorted(entries, key=lambda e: e.get("ingested_at", ""))

    def append(self, df: pd.DataFrame, source_id: str | None = None) -> AppendResult:
        """Append validated events (the schema of ``validate_events(...).accepted``).

        Args:
            df: events with ``event_id``, ``event_timestamp`` (tz-aware), ``user_id``, ``item_id``, ``label``.
            source_id: identifies the source (e.g. ``"file:<sha256>"``); defaults to a hash of the rows.

        Raises:
            ValueError: missing columns or a timestamp column that is not timezone-aware datetime.
        """
        missing = [c for c in EVENT_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"event log append: missing column(s) {missing}")
        if not isinstance(df["event_timestamp"].dtype, pd.DatetimeTZDtype):
            raise ValueError("event log append: event_timestamp must be datetime64[ns, UTC] (validate first)")
        source_id = source_id or f"content:{content_hash(df)}"
        received = len(df)
        with self._locked():
            if self.has_source(source_id):
                log.info("event log: %s already ingested, skipped", source_id)
                return AppendResult(source_id, received, 0, 0, already_ingested=True)
            table = _unique_table(df)
            if table is not None:  # ids already distinct (validated rows): Arrow all the way
                files, written = self._append_table(table)
            else:
                batch = df.drop_duplicates("event_id", keep="first")
                batch = batch.assign(event_timestamp=batch["event_timestamp"].dt.tz_convert("UTC"))
                days = pd.Series(day_strings(batch["event_timestamp"]), index=batch.index)
                existing = self._id_array(self._partition_files(sorted(set(days))))
                if len(existing):
                    import pyarrow as pa
                    import pyarrow.compute as pc

                    ids = pa.array(batch["event_id"].to_numpy(dtype=object), type=pa.string())
                    keep = ~pc.is_in(ids, value_set=existing).to_numpy(zero_copy_only=False)
                    batch, days = batch.loc[keep], days.loc[keep]
                files, written = self._write_partitions(batch, days), len(batch)
            self._write_manifest(source_id, received, written, files)
        result = AppendResult(source_id, received, written, received - written, files=files)
        log.info(
            "event log: appended %d of %d rows to %d partitions",
            result.written,
            received,
            len(result.partitions),
        )
        return result

    def _append_table(self, table) -> tuple[list[Path], int]:  # table: pa.Table with distinct event ids
        """The Arrow path of :meth:`append`: drop the ids the touched partitions hold, write the rest."""
        import pyarrow as pa
        import pyarrow.compute as pc

        stamps = table.column("event_timestamp").combine_chunks()
        ns = stamps.cast(pa.int64()).to_numpy(zero_copy_only=False)
        day_numbers, inverse = np.unique(ns // 86_400_000_000_000, return_inverse=True)
        day_names = day_numbers.astype("datetime64[D]").astype(str)
        existing = self._id_array(self._partition_files(list(day_names)))
        if len(existing):
            keep = pc.invert(pc.is_in(table.column("event_id"), value_set=existing))
            table = table.filter(keep)
            inverse = inverse[keep.to_numpy(zero_copy_only=False)]
        days = pc.take(pa.array(day_names, type=pa.string()), pa.array(inverse))
        return self._write_partitions(table=table, day_array=days), table.num_rows

    def _write_partitions(
        self, batch: pd.DataFrame | None = None, days: pd.Series | None = None, *, table=None, day_array=None
    ) -> list[Path]:
        """Write every partition's file under ``_tmp/`` first, then move them all into place.

        One Arrow ``write_dataset`` call writes all dates (multi-threaded); a failure while converting or
        writing (a bad context column, a full disk) leaves no part file behind. Takes a frame and its
        dates, or an Arrow table and its dates.
        """
        import pyarrow as pa
        import pyarrow.dataset as ds

        if table is None:
            assert batch is not None and days is not None
            if batch.empty:
                return []
            table = pa.Table.from_pandas(batch.reset_index(drop=True), preserve_index=False)
            day_array = pa.array(days.to_numpy(dtype=str), type=pa.string())
        if table.num_rows == 0:
            return []
        table = table.append_column("_date", day_array)
        stage = self.root / "_tmp" / uuid.uuid4().hex
        tag = uuid.uuid4().hex
        staged: list[tuple[Path, Path]] = []
        try:
            ds.write_dataset(
                table,
                stage,
                format="parquet",
                # dates as file-name prefixes in one flat folder: a directory per date is slow to
                # create and remove on some file systems, and the files are moved into place anyway
                partitioning=ds.partitioning(pa.schema([("_date", pa.string())]), flavor="filename"),
                basename_template=f"part-{tag}-{{i}}.parquet",
                max_partitions=1_000_000,
                existing_data_behavior="error",
            )
            for tmp in sorted(stage.glob("*_part-*.parquet"), key=lambda path: path.name):
                day, name = tmp.name.split("_", 1)
                staged.append((tmp, self.root / f"{_PARTITION}{day}" / name))
            publish_files(staged)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return [target for _, target in staged]

    def _write_manifest(self, source_id: str, received: int, written: int, files: list[Path]) -> None:
        path = self._manifest_path(source_id)
        entry = {
            "source_id": source_id,
            "rows": received,
            "written": written,
            "files": [str(f.relative_to(self.root)) for f in files],
            "ingested_at": datetime.now(UTC).isoformat(),
        }
        atomic_write_json(path, entry, indent=1)

    # ------------------------------------------------------------------------------------------ reading

    def dates(self) -> list[date]:
        """The event dates with at least one part file, ascending."""
        if not self.root.is_dir():
            return []
        out = [_partition_date(p.name) for p in self.root.iterdir() if p.is_dir()]
        return sorted(d for d in out if d is not None)

    def files(self, start: datetime | str | None = None, end: datetime | str | None = None) -> list[Path]:
        """Part files whose partition may hold events in ``[start, end)``, by date then name."""
        lo = _utc(start).date() if start is not None else None
        hi = _utc(end) if end is not None else None
        out: list[Path] = []
        for day in self.dates():
            if lo is not None and day < lo:
                continue
            if hi is not None and pd.Timestamp(day, tz="UTC") >= hi:
                continue
            out.extend(sorted((self.root / f"{_PARTITION}{day.isoformat()}").glob("part-*.parquet")))
        return out

    def _partition_files(self, dates: Sequence[str | date]) -> list[Path]:
        paths: list[Path] = []
        for d in dates:
            folder = self.root / f"{_PARTITION}{d if isinstance(d, str) else d.isoformat()}"
            paths.extend(sorted(folder.glob("part-*.parquet")))
        return paths

    def _id_array(self, paths: Sequence[Path]):  # -> pa.Array (pyarrow imported lazily)
        import pyarrow as pa
        import pyarrow.dataset as ds

        if not paths:
            return pa.array([], type=pa.string())
        table = ds.dataset([str(p) for p in paths], format="parquet").to_table(columns=["event_id"])
        return table.column("event_id").combine_chunks()

    def event_ids(self, dates: Sequence[str | date] | None = None) -> set[str]:
        """Event ids stored in the given dates' partitions (all partitions when None)."""
        paths = self.files() if dates is None else self._partition_files(dates)
        return set(self._id_array(paths).to_pylist())

    def read(
        self,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Events with ``start <= event_timestamp < end`` (either bound optional), sorted by time then id.

        Only the partitions of the window's dates are opened.
        """
        return self.read_files(self.files(start, end), start=start, end=end, columns=columns)

    def read_files(
        self,
        paths: Sequence[Path],
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Events from the given part files (e.g. the new ones an online source has not seen yet)."""
        import pyarrow as pa
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        wanted = list(columns) if columns is not None else None
        if not paths:
            return _empty(wanted)
        schemas = [pq.read_schema(p) for p in paths]
        try:
            schema = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValueError(f"event log {self.root}: part files have incompatible schemas: {exc}") from exc
        dataset = ds.dataset([str(p) for p in paths], schema=schema, format="parquet")
        flt = None
        ts_type = schema.field("event_timestamp").type
        if start is not None:
            flt = ds.field("event_timestamp") >= pa.scalar(_utc(start), type=ts_type)
        if end is not None:
            cond = ds.field("event_timestamp") < pa.scalar(_utc(end), type=ts_type)
            flt = cond if flt is None else flt & cond
        read_cols = None
        if wanted is not None:
            unknown = [c for c in wanted if c not in schema.names]
            if unknown:
                raise ValueError(f"event log {self.root}: unknown column(s) {unknown}; have {schema.names}")
            read_cols = list(dict.fromkeys([*wanted, "event_timestamp", "event_id"]))
        table = dataset.to_table(columns=read_cols, filter=flt)
        # Arrow's multi-key sort is several times faster than pandas' on string ids.
        table = table.sort_by([("event_timestamp", "ascending"), ("event_id", "ascending")])
        df = table.to_pandas()
        df["event_timestamp"] = df["event_timestamp"].astype("datetime64[ns, UTC]")
        if wanted is not None:
            df = df[wanted]
        return df

    def count(self) -> int:
        """Number of stored events (from Parquet footers, no data read)."""
        import pyarrow.parquet as pq

        return int(sum(pq.ParquetFile(p).metadata.num_rows for p in self.files()))


def _empty(columns: list[str] | None) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "event_id": pd.Series(dtype=object),
            "event_timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
            "user_id": pd.Series(dtype=object),
            "item_id": pd.Series(dtype=object),
            "label": pd.Series(dtype=np.int8),
        }
    )
    if columns is None:
        return df
    return pd.DataFrame({c: df[c] if c in df.columns else pd.Series(dtype=object) for c in columns})
