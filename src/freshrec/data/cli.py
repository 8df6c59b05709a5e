"""``freshrec data``: ingest event files, prepare a described dataset.

Only stdlib, typer, rich and freshrec.config at module level; the data modules (pandas, pyarrow) are
imported inside the commands so that ``freshrec --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from freshrec.config import Settings

if TYPE_CHECKING:
    from freshrec.data.ingest import IngestReport

app = typer.Typer(help="Events and datasets: ingest files into the event log, prepare a described dataset.")
console = Console()


def _summary(reports: list[IngestReport], title: str) -> Table:
    table = Table(title=title)
    for col, justify in [
        ("source", "left"),
        ("received", "right"),
        ("accepted", "right"),
        ("quarantined", "right"),
        ("skipped", "right"),
        ("top reasons", "left"),
    ]:
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in reports:
        reasons = ", ".join(f"{k} ({v})" for k, v in r.top_reasons(3))
        if r.already_ingested:
            reasons = "already ingested"
        table.add_row(
            r.source,
            f"{r.received:,}",
            f"{r.accepted:,}",
            f"{r.quarantined:,}",
            f"{r.skipped:,}",
            reasons or "—",
        )
    if len(reports) > 1:
        table.add_row(
            "total",
            f"{sum(r.received for r in reports):,}",
            f"{sum(r.accepted for r in reports):,}",
            f"{sum(r.quarantined for r in reports):,}",
            f"{sum(r.skipped for r in reports):,}",
            "",
            style="bold",
        )
    return table


def _short(source: str) -> str:
    return source if source.startswith("dataset:") else Path(source).name


def _notes(reports: list[IngestReport]) -> None:
    """One line per source with a problem, in full (the table may be narrow)."""
    for r in reports:
        if r.already_ingested:
            console.print(f"{r.source}: already ingested, {r.skipped:,} rows skipped")
        elif r.quarantined:
            reasons = ", ".join(f"{k} ({v})" for k, v in r.top_reasons(5))
            console.print(f"{r.source}: {r.quarantined:,} rows quarantined: {reasons}")


@app.command("ingest")
def ingest(
    ctx: typer.Context,
    files: list[Path] = typer.Argument(
        ..., help="CSV/TSV (with header), Parquet or JSONL files of events.", exists=True
    ),
) -> None:
    """Validate event files and append them to the event log; bad rows go to quarantine with reasons.

    Re-ingesting a file adds nothing. A malformed file is reported and skipped (nothing written for it);
    the command then exits with status 1.
    """
    from freshrec.data.ingest import IngestReport, ingest_files

    settings: Settings = ctx.obj
    reports: list[IngestReport] = []
    errors: list[str] = []
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("ingesting", total=len(files))

        def on_file(path: Path, item: object) -> None:
            progress.update(task, advance=1, description=f"ingested {path.name}")

        for item in ingest_files(list(files), settings, on_file=on_file):
            if isinstance(item, IngestReport):
                reports.append(item)
            else:
                errors.append(str(item))
    if reports:
        console.print(_summary(reports, f"ingest → {settings.eventlog_dir}"))
        _notes(reports)
        if sum(r.quarantined for r in reports):
            console.print(f"quarantined rows: {settings.quarantine_dir}")
    for err in errors:
        console.print(f"[red]error:[/red] {err}")
    if errors:
        raise typer.Exit(code=1)


@app.command("prepare")
def prepare(
    ctx: typer.Context,
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        "-d",
        help="A shipped dataset name (movielens-100k, movielens-1m-tail, ...) or a YAML path.",
    ),
    datasets_dir: Path | None = typer.Option(
        None, "--datasets-dir", help="Folder holding the raw dataset files."
    ),
) -> None:
    """Load a described dataset, validate it into the event log and write the user/item profile tables."""
    from freshrec.data.prepare import prepare as run_prepare

    settings: Settings = ctx.obj
    if datasets_dir is not None:
        settings = settings.model_copy(
            update={"data": settings.data.model_copy(update={"datasets_dir": datasets_dir})}
        )
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("preparing", total=None)
        try:
            report = run_prepare(
                settings, dataset, progress=lambda msg: progress.update(task, description=msg)
            )
        except (ValueError, FileNotFoundError) as exc:
            progress.stop()
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(code=1) from exc
    console.print(_summary([report.ingest], f"prepare {report.dataset} → {settings.eventlog_dir}"))
    _notes([report.ingest])
    tables = Table(title="tables", show_header=False)
    tables.add_row("users", f"{report.users:,}", report.users_path)
    tables.add_row("items", f"{report.items:,}", report.items_path)
    tables.add_row("events", f"{report.first_event} … {report.last_event}", report.eventlog_dir)
    console.print(tables)
    console.print(f"done in {report.duration_s:.1f} s")


@app.command("describe")
def describe(
    ctx: typer.Context,
    dataset: str | None = typer.Argument(
        None, help="A shipped dataset name or a YAML path; none: list the shipped ones."
    ),
    datasets_dir: Path | None = typer.Option(
        None, "--datasets-dir", help="Folder holding the raw dataset files (default: the settings')."
    ),
    data: bool = typer.Option(
        True,
        "--data/--no-data",
        help="Load the files to size vocabularies and hash tables from the train split.",
    ),
) -> None:
    """Show a dataset description and every feature the model will get: its source, type, encoding and
    vocabulary or hash size (from the train split when the files are found), or list the shipped ones."""
    from freshrec.data.datasets import available_descriptions, load_description

    if dataset is None:
        table = Table(title="shipped dataset descriptions")
        for col in ("name", "title", "split", "event files"):
            table.add_column(col, overflow="fold")
        for name in available_descriptions():
            desc = load_description(name)
            files = ", ".join(n for n, _ in desc.events.source_files()) if desc.events else "generated"
            table.add_row(name, desc.title, desc.split, files)
        console.print(table)
        return
    settings: Settings = ctx.obj
    try:
        desc = load_description(dataset)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from exc
    console.print(f"[bold]{desc.name}[/bold] — {desc.title or desc.description}")
    if desc.events is not None:
        ev = desc.events
        if ev.splits is not None:
            files = "; ".join(f"{part}: {', '.join(names)}" for part, names in ev.splits.items())
        else:
            files = ", ".join(ev.file_names()) + (" (first found)" if len(ev.file) > 1 else "")
        console.print(
            f"events: {files}; label: {ev.label}" + (f"; dropped: {ev.drop}" if ev.drop else ""),
            highlight=False,
        )
        ts = "none (every event at 1970-01-01)" if ev.timestamp is None else ev.timestamp.column
        console.print(
            f"keys: user_id <- {ev.user_key}, item_id <- {ev.item_key}; timestamp: {ts}; event_id: {ev.event_id}",
            highlight=False,
        )
    split = desc.split + (f" on {desc.events.split_column.column}" if desc.split == "column" else "")
    if desc.split_fractions:
        split += f" {'/'.join(f'{f:g}' for f in desc.split_fractions)}"
    console.print(
        f"split: {split}; folders tried: {', '.join(desc.dir_names or [desc.name])}", highlight=False
    )
    activity = f"on (history: {desc.activity_history})" if desc.activity_enabled else "off"
    console.print(f"activity features: {activity}", highlight=False)
    dirs = datasets_dir or settings.data.datasets_dir
    spec, sized_from = _describe_spec(desc, dirs if data and desc.events is not None else None, settings)
    console.print(_features_table(desc, spec, sized_from))
    if desc.events is not None and desc.events.keep:
        console.print(
            f"[yellow]warning:[/yellow] kept columns {', '.join(desc.events.keep)} are stored in the event log "
            "but are not model inputs (describe them under events.features to use them)",
            highlight=False,
        )


def _describe_spec(desc, datasets_dir: Path | None, settings: Settings):  # type: ignore[no-untyped-def]
    """The model's feature spec: sized from the train split when the files load, else from the description."""
    from freshrec.model.spec import FeatureSpec

    buckets = settings.model.id_hash_buckets
    if datasets_dir is not None:
        from freshrec.data.datasets import load_dataset
        from freshrec.features.training_set import training_frames

        try:
            data = load_dataset(desc, datasets_dir)
            fractions = (
                settings.data.train_fraction,
                settings.data.valid_fraction,
                1.0 - settings.data.train_fraction - settings.data.valid_fraction,
            )
            train = training_frames(data, fractions)[0]
            spec = FeatureSpec.for_description(desc, buckets, frame=train)
            return spec, f"sized from the train split ({len(train):,} events)"
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[yellow]note:[/yellow] data not loaded ({exc}); sizes need the data")
    return FeatureSpec.for_description(desc, buckets), "encodings before the data (sizes come from it)"


def _features_table(desc, spec, sized_from: str) -> Table:  # type: ignore[no-untyped-def]
    from freshrec.features.activity import ITEM_ACTIVITY, USER_ACTIVITY

    described = {
        **{n: ("users", f) for n, f in desc.user_features.items()},
        **{n: ("items", f) for n, f in desc.item_features.items()},
        **{n: ("events", f) for n, f in desc.event_features.items()},
    }
    table = Table(title=f"model inputs ({len(spec.features)}; {sized_from})")
    for col in ("feature", "from", "type", "encoding", "size", "derived from"):
        table.add_column(col, overflow="fold")
    for f in spec.features:
        p = f.params
        if f.encoding == "lookup":
            size = f"{len(p['vocabulary']):,} values + 1 OOV" if "vocabulary" in p else "vocabulary from data"
        elif f.encoding in ("hash", "multi_hash"):
            size = f"{int(p['num_bins']):,} buckets"
        elif f.encoding == "bucketize":
            size = (
                f"{len(p['boundaries']) + 1} buckets"
                if "boundaries" in p
                else f"{p.get('num_buckets', 10)} quantiles"
            )
        else:
            size = "log1p, standardised" if p.get("log1p") else "standardised"
        if f.name in ("user_id", "item_id"):
            where, kind, how = "id", "categorical", "events key"
        elif f.name in described:
            where, feat = described[f.name]
            kind, how = feat.type, feat.derivation()
        elif f.name in USER_ACTIVITY + ITEM_ACTIVITY:
            where, kind, how = "activity", "numeric", f"strictly earlier events ({desc.activity_history})"
        else:
            where, kind, how = "?", "?", ""
        table.add_row(f.name, where, kind, f.encoding, size, how)
    return table


@app.command("sink")
def sink_cmd(
    ctx: typer.Context,
    group: str = typer.Option(
        "freshrec-eventlog",
        help="Consumer group of the event stream (its own: every group sees every entry).",
    ),
    consumer: str | None = typer.Option(None, help="Consumer name in the group (default: the host name)."),
    heartbeat: Path | None = typer.Option(
        None, help="Touch this file on every poll, idle ones too (a Deployment's liveness probe)."
    ),
) -> None:
    """Append the event stream (online.redis_url, online.stream) to the event log, quarantining bad entries."""
    import signal
    import socket
    import time

    from freshrec.data.sink import sink_stream
    from freshrec.online.sources import RedisStreamSource

    settings: Settings = ctx.obj
    cfg = settings.online
    source = RedisStreamSource.from_settings(cfg, group=group, consumer=consumer or socket.gethostname())
    stopped = {"flag": False}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.update(flag=True))
    last = [0.0]

    def should_stop() -> bool:
        if heartbeat is not None:
            heartbeat.touch()
        return stopped["flag"]

    def show(totals) -> None:  # type: ignore[no-untyped-def]
        if time.monotonic() - last[0] >= 5.0:
            last[0] = time.monotonic()
            console.print(
                f"stream {cfg.stream} -> {settings.eventlog_dir}: {totals.received:,} received, "
                f"{totals.appended:,} appended, {totals.duplicates:,} already there, {totals.quarantined:,} quarantined",
                highlight=False,
            )

    console.print(f"sinking {cfg.redis_url} stream {cfg.stream} (group {group}) into {settings.eventlog_dir}")
    totals = sink_stream(settings, source, should_stop=should_stop, on_batch=show)
    show(totals)
