"""``freshrec data prepare``: a described dataset into the event log and the profile tables Feast reads.

Writes, under the settings' workdir:

- the validated events into the event log (idempotent: preparing twice adds nothing);
- ``tables/users.parquet`` and ``tables/items.parquet``: one row per id with the profile features, an
  ``event_timestamp`` (the start of the data, so every event can see its profile in a point-in-time join)
  and ``created`` (the id's first event, or ``event_timestamp`` when it has none);
- quarantined rows, if any, under ``quarantine/``.

Validation stays strict: when every row, or more than ``data.max_quarantine_share`` of them, would be
quarantined (a description that does not match its files: a wrong timestamp format, label column or
delimiter), :class:`QuarantineError` names the dominant reason and an example row, the rows are
quarantined for inspection and nothing is written to the event log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from freshrec.data.datasets import Dataset, load_dataset, load_description
from freshrec.data.eventlog import content_hash
from freshrec.data.ingest import IngestReport, ingest_frame
from freshrec.data.validation import count_reasons, validate_events, write_quarantine
from freshrec.io import atomic_write_parquet

if TYPE_CHECKING:
    from freshrec.config import Settings

log = logging.getLogger(__name__)


@dataclass
class PrepareReport:
    """What ``prepare`` did: the ingest counts plus the tables written."""

    dataset: str
    ingest: IngestReport
    users: int
    items: int
    users_path: str
    items_path: str
    eventlog_dir: str
    first_event: str | None
    last_event: str | None
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def profile_table(profiles: pd.DataFrame, events: pd.DataFrame, key: str) -> pd.DataFrame:
    """Profiles with ``event_timestamp`` (start of the data) and ``created`` (first event of the id)."""
    start = events["event_timestamp"].min() if len(events) else pd.Timestamp.now(tz="UTC")
    first = (
        events.groupby(key)["event_timestamp"].min()
        if len(events)
        else pd.Series(dtype="datetime64[ns, UTC]")
    )
    out = profiles.copy()
    out["event_timestamp"] = pd.Series(start, index=out.index).astype("datetime64[ns, UTC]")
    created = out[key].map(first)
    out["created"] = created.where(created.notna(), start).astype("datetime64[ns, UTC]")
    return out


class QuarantineError(ValueError):
    """A prepare that would quarantine every row, or more than the allowed share."""

    def __init__(self, message: str, reasons: dict[str, int], example: dict[str, str]) -> None:
        super().__init__(message)
        self.reasons = reasons
        self.example = example


def _example(rows: pd.DataFrame, reason: str, width: int = 60) -> dict[str, str]:
    """The first quarantined row with ``reason``, its values shortened, bookkeeping columns left out."""
    hit = rows[rows["reasons"].astype(str).str.split(";").map(lambda rs: reason in rs)]
    row = (hit if len(hit) else rows).iloc[0]
    out = {}
    for key, value in row.items():
        if key == "reasons" or value is None or (isinstance(value, float) and pd.isna(value)):
            continue  # a column of the other kind of quarantined row (loader-rejected vs validated)
        text = str(value)
        out[str(key)] = text if len(text) <= width else text[: width - 1] + "…"
    return out


def check_quarantine_share(dataset: Dataset, settings: Settings) -> None:
    """Refuse a dataset whose rows would mostly (more than ``data.max_quarantine_share``), or all, be
    quarantined: the loader's rejected rows plus the rows event validation would quarantine.

    Raises:
        QuarantineError: naming the share, the dominant reason with its count, an example row and
            where the quarantined rows were written.
    """
    limit = settings.data.max_quarantine_share
    checked = validate_events(
        dataset.events, future_tolerance_s=settings.data.future_tolerance_s, source=dataset.name
    )
    bad = pd.concat([dataset.rejected, checked.quarantined], ignore_index=True)
    total = len(dataset.rejected) + checked.received
    name = dataset.description.name
    if total == 0:
        raise QuarantineError(f"dataset {name}: no rows at all (empty files?)", {}, {})
    share = len(bad) / total
    if len(bad) < total and share <= limit:
        return
    reasons = count_reasons(bad["reasons"])
    top, count = next(iter(reasons.items()))
    example = _example(bad, top)
    qfile = write_quarantine(
        bad, settings.quarantine_dir, source=f"dataset:{name}", name=f"dataset-{name}-refused"
    )
    what = "every row" if len(bad) == total else f"more than data.max_quarantine_share={limit:g} of the rows"
    raise QuarantineError(
        f"dataset {name}: {len(bad):,} of {total:,} rows ({share:.1%}) would be quarantined, {what}; "
        f"nothing was written to the event log. Main reason: {top} ({count:,} rows), e.g. {example}. "
        f"All reasons: {reasons}. Check the description against the files (timestamp unit or format, "
        f"label rule, keys, delimiter); the rows are in {qfile}",
        reasons,
        example,
    )


def _with_rejected(report: IngestReport, dataset: Dataset, settings: Settings) -> IngestReport:
    """Count (and quarantine) the source rows the loader could not turn into events."""
    rejected = dataset.rejected
    if rejected is None or rejected.empty:
        return report
    n = len(rejected)
    if report.already_ingested:
        return replace(report, received=report.received + n, skipped=report.skipped + n)
    qfile = write_quarantine(
        rejected,
        settings.quarantine_dir,
        source=report.source,
        name=f"{report.source.replace(':', '-')}-rejected-{report.source_id.split(':')[-1][:16]}",
    )
    reasons = dict(report.reasons)
    for reason, count in count_reasons(rejected["reasons"]).items():
        reasons[reason] = reasons.get(reason, 0) + count
    return replace(
        report,
        received=report.received + n,
        quarantined=report.quarantined + n,
        reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        quarantine_file=report.quarantine_file or (str(qfile) if qfile else None),
    )


def prepare_dataset(
    dataset: Dataset, settings: Settings, *, progress: Callable[[str], None] | None = None
) -> PrepareReport:
    """Validate and store a loaded (or generated) dataset; write the profile tables.

    Raises:
        QuarantineError: every row, or more than ``data.max_quarantine_share``, would be quarantined.
    """
    started = time.perf_counter()
    step = progress or (lambda _msg: None)
    name = dataset.description.name
    step(f"validating {len(dataset.events):,} events")
    check_quarantine_share(dataset, settings)
    step(f"writing {len(dataset.events):,} events")
    report = ingest_frame(
        dataset.events,
        settings,
        source=f"dataset:{name}",
        source_id=f"dataset:{name}:{content_hash(dataset.events)}",
    )
    report = _with_rejected(report, dataset, settings)
    step("writing profile tables")
    tables = settings.tables_dir
    users = profile_table(dataset.users, dataset.events, "user_id")
    items = profile_table(dataset.items, dataset.events, "item_id")
    users_path = atomic_write_parquet(users, tables / "users.parquet")
    items_path = atomic_write_parquet(items, tables / "items.parquet")
    ts = dataset.events["event_timestamp"]
    return PrepareReport(
        dataset=name,
        ingest=report,
        users=len(users),
        items=len(items),
        users_path=str(users_path),
        items_path=str(items_path),
        eventlog_dir=str(settings.eventlog_dir),
        first_event=ts.min().isoformat() if len(ts) else None,
        last_event=ts.max().isoformat() if len(ts) else None,
        duration_s=time.perf_counter() - started,
    )


def prepare(
    settings: Settings,
    dataset: str | Path | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> PrepareReport:
    """Load the described dataset (a name, a YAML path, or ``settings.data.dataset``) and prepare it.

    Returns:
        The report; ``report.ingest`` reconciles received/accepted/quarantined/skipped.
    """
    step = progress or (lambda _msg: None)
    desc = load_description(dataset or settings.data.dataset)
    if desc.events is None:
        # A generated dataset (no files): the synthetic generator with its default, seeded config.
        from freshrec.data.synthetic import generate

        step(f"generating {desc.name}")
        loaded = generate()
    else:
        step(f"loading {desc.name} from {settings.data.datasets_dir}")
        loaded = load_dataset(desc, settings.data.datasets_dir)
    return prepare_dataset(loaded, settings, progress=progress)
