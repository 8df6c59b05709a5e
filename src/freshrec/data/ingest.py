"""Files (CSV, Parquet, JSONL) and frames of events into the event log, through validation.

A file is read completely and checked before anything is written, so a malformed file raises
:class:`FileFormatError` (naming the file) and leaves no output. Rows of a readable file are accepted into
the event log or quarantined with their reasons; the report reconciles
``accepted + quarantined + skipped == received``, where ``skipped`` counts the rows of a file that was
ingested before (identified by its content hash) and is therefore not read into the log again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from freshrec.data.eventlog import EventLog, content_hash
from freshrec.data.validation import (
    EVENT_COLUMNS,
    LINE_INVALID_JSON,
    LINE_NOT_OBJECT,
    LINE_NOT_UTF8,
    LINE_TOO_DEEP,
    READ_ERROR,
    FileFormatError,
    count_reasons,
    validate_events,
    write_quarantine,
)

if TYPE_CHECKING:
    from freshrec.config import Settings

log = logging.getLogger(__name__)

SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


@dataclass
class IngestReport:
    """The outcome of ingesting one source; ``accepted + quarantined + skipped == received``."""

    source: str
    received: int
    accepted: int
    quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    already_ingested: bool = False
    written: int = 0
    duplicates: int = 0  # accepted rows the log already held (a concurrent writer); not written twice
    source_id: str = ""
    quarantine_file: str | None = None
    partitions: int = 0
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        if self.accepted + self.quarantined + self.skipped != self.received:
            raise AssertionError(
                f"{self.source}: accepted {self.accepted} + quarantined {self.quarantined} + skipped"
                f" {self.skipped} != received {self.received}"
            )

    def top_reasons(self, n: int = 5) -> list[tuple[str, int]]:
        return sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_event_file(path: Path | str) -> pd.DataFrame:
    """Read a CSV/TSV (with header), Parquet or JSONL file of events without coercing values.

    Raises:
        FileNotFoundError: no such file.
        FileFormatError: empty, unreadable or truncated file, a JSONL file without one readable object,
            missing columns. (An unreadable JSONL line is a record for quarantine, see :func:`_read_jsonl`.)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise FileFormatError(
            path, f"unsupported file type {path.suffix!r}; expected one of {sorted(SUFFIXES)}"
        )
    if path.stat().st_size == 0:
        raise FileFormatError(path, "empty file")
    if kind in {"csv", "tsv"}:
        try:
            df = pd.read_csv(
                path,
                sep="\t" if kind == "tsv" else ",",
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
            )
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise FileFormatError(path, f"not a valid {kind.upper()} file: {exc}") from exc
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            df = pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
            raise FileFormatError(path, f"not a valid Parquet file (truncated or corrupt?): {exc}") from exc
    else:
        df = _read_jsonl(path)
    missing = [c for c in EVENT_COLUMNS if c not in df.columns]
    if missing:
        raise FileFormatError(path, f"missing required column(s) {missing}; found {list(df.columns)}")
    return df


def _read_jsonl(path: Path) -> pd.DataFrame:
    """Records of a JSONL file; a line that is not a JSON object becomes a record for quarantine.

    A line that is not UTF-8, not JSON, nested too deep for the parser, or not an object gets the
    ``_read_error`` reason (``line_not_utf8``, ``line_invalid_json``, ``line_too_deep``,
    ``line_not_object``) with its text in ``_raw`` and its number in ``_line``; the other lines are read
    as usual. A file with no readable object at all is not JSONL: :class:`FileFormatError`.
    """
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    good = 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            reason, detail = "", ""
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = raw.decode("utf-8", "backslashreplace")
                reason, detail = LINE_NOT_UTF8, f"not UTF-8 ({exc.reason} at byte {exc.start})"
            if not reason:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    reason, detail = LINE_INVALID_JSON, f"invalid JSON ({exc.msg})"
                except RecursionError:
                    reason, detail = LINE_TOO_DEEP, "JSON nested too deep"
                else:
                    if isinstance(record, dict):
                        records.append(record)
                        good += 1
                        continue
                    reason, detail = LINE_NOT_OBJECT, f"expected a JSON object, got {type(record).__name__}"
            if len(problems) < 3:
                problems.append(f"line {number}: {detail}")
            records.append({READ_ERROR: reason, "_raw": line.rstrip("\r\n"), "_line": str(number)})
    if not good:
        raise FileFormatError(path, "no JSON records" + (f" ({'; '.join(problems)})" if problems else ""))
    if len(records) > good:
        log.warning(
            "%s: %d unreadable line(s) quarantined: %s", path, len(records) - good, "; ".join(problems)
        )
    return pd.DataFrame.from_records(records)


def ingest_frame(
    df: pd.DataFrame,
    settings: Settings,
    *,
    source: str = "frame",
    source_id: str | None = None,
    now: datetime | None = None,
) -> IngestReport:
    """Validate a frame of raw events, quarantine the bad rows and append the good ones to the event log.

    Args:
        df: raw events (the columns of the event schema; values may be strings).
        settings: gives the event log, quarantine folder and future-timestamp tolerance.
        source: a human-readable origin (file path, dataset name), stored with quarantined rows.
        source_id: a stable identity of the content (e.g. ``"file:<sha256>"``); an identity seen before is
            skipped, which makes re-ingest idempotent. Default: a hash of the rows.
        now: reference time for the future check (default: now).
    """
    started = time.perf_counter()
    source_id = source_id or f"content:{content_hash(df)}"
    eventlog = EventLog(settings.eventlog_dir)
    received = len(df)
    if eventlog.has_source(source_id):
        log.info("%s was ingested before (%s); skipped", source, source_id)
        return IngestReport(
            source=source,
            received=received,
            accepted=0,
            quarantined=0,
            skipped=received,
            already_ingested=True,
            source_id=source_id,
            duration_s=time.perf_counter() - started,
        )
    result = validate_events(
        df,
        now=now,
        future_tolerance_s=settings.data.future_tolerance_s,
        # only the partitions this batch touches can hold its duplicates
        seen_ids=lambda days: eventlog.event_ids(days) if days else set(),
        source=source,
        max_id_chars=settings.data.max_id_chars,
        min_event_time=settings.data.min_event_time,
    )
    qfile = write_quarantine(
        result.quarantined,
        settings.quarantine_dir,
        source=source,
        name=f"{_safe_name(source)}-{source_id.split(':')[-1][:16]}",
    )
    appended = eventlog.append(result.accepted, source_id=source_id)
    report = IngestReport(
        source=source,
        received=received,
        accepted=len(result.accepted),
        quarantined=len(result.quarantined),
        reasons=count_reasons(result.quarantined["reasons"]) if len(result.quarantined) else {},
        written=appended.written,
        duplicates=appended.duplicates,
        source_id=source_id,
        quarantine_file=str(qfile) if qfile else None,
        partitions=len(appended.partitions),
        duration_s=time.perf_counter() - started,
    )
    log.info(
        "%s: received %d, accepted %d, quarantined %d %s",
        source,
        report.received,
        report.accepted,
        report.quarantined,
        report.top_reasons(3),
    )
    return report


def _safe_name(source: str) -> str:
    stem = Path(source).name or "source"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:80]


def ingest_file(path: Path | str, settings: Settings, *, now: datetime | None = None) -> IngestReport:
    """Ingest one CSV/TSV, Parquet or JSONL file of events (see :func:`ingest_frame`).

    Raises:
        FileFormatError: the file cannot be read as events; nothing is written.
    """
    path = Path(path)
    df = read_event_file(path)
    return ingest_frame(df, settings, source=str(path), source_id=f"file:{file_sha256(path)}", now=now)


def ingest_files(
    paths: list[Path],
    settings: Settings,
    *,
    now: datetime | None = None,
    on_file: Callable[[Path, IngestReport | Exception], None] | None = None,
) -> list[IngestReport | FileFormatError]:
    """Ingest several files; a malformed one is reported (its error returned) and the others go on."""
    out: list[IngestReport | FileFormatError] = []
    for path in paths:
        try:
            item: IngestReport | FileFormatError = ingest_file(path, settings, now=now)
        except FileFormatError as exc:
            log.error("%s", exc)
            item = exc
        except OSError as exc:  # missing, unreadable (permissions), a folder: this file only
            log.error("%s: %s", path, exc)
            item = FileFormatError(path, f"cannot read: {exc.strerror or exc}")
        out.append(item)
        if on_file is not None:
            on_file(path, item)
    return out
