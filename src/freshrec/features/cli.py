"""``freshrec features``: apply the Feast repo, materialize to the online store, look features up.

Only stdlib, typer, rich and freshrec.config at module level; Feast and pandas are imported inside the
commands so that ``freshrec --help`` stays fast.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from freshrec.config import Settings

app = typer.Typer(help="Feast features: apply the repo, materialize to the online store, online lookup.")
console = Console()


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _run_steps(title: str, fn):  # type: ignore[no-untyped-def]
    """Run ``fn(say)`` under a spinner whose text follows the steps ``fn`` reports."""
    with _progress() as progress:
        task = progress.add_task(title, total=None)

        def say(message: str) -> None:
            progress.update(task, description=f"{title}: {message}")

        result = fn(say)
        progress.update(task, description=f"{title}: done", completed=1, total=1)
    return result


def _quiet_feast() -> None:
    """Feast logs every registry cache refresh at INFO; keep the command's own output readable."""
    verbose = logging.getLogger().level <= logging.DEBUG
    logging.getLogger("feast").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1) from exc


@app.command("apply")
def apply_cmd(
    ctx: typer.Context,
    wait_for_data_s: float = typer.Option(
        0.0,
        "--wait-for-data-s",
        help="Wait up to this long for the profile tables (a cluster's first ingest writes them); 0: fail at once.",
    ),
) -> None:
    """Register entities, sources, feature views and the ranking_v1 service (builds activity tables if missing)."""
    from freshrec.features import store

    settings: Settings = ctx.obj
    _quiet_feast()
    if wait_for_data_s > 0:
        deadline = time.monotonic() + wait_for_data_s
        missing = store.missing_profiles(settings)
        if missing:
            console.print(f"waiting up to {wait_for_data_s:g} s for {', '.join(map(str, missing))}")
        while missing and time.monotonic() < deadline:
            time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
            missing = store.missing_profiles(settings)
    started = time.perf_counter()
    try:
        report = _run_steps("apply", lambda say: store.apply(settings, progress=say))
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    table = Table(title=f"Feast apply ({report.environment}, project {report.project})")
    table.add_column("objects")
    table.add_column("activity rows built", justify="right")
    built = ", ".join(f"{k} {v:,}" for k, v in report.activity_rows.items()) or "— (tables existed)"
    table.add_row(", ".join(report.objects), built)
    console.print(table)
    console.print(f"applied {len(report.objects)} objects in {time.perf_counter() - started:.1f} s")


@app.command("materialize")
def materialize_cmd(
    ctx: typer.Context,
    end: datetime | None = typer.Option(
        None, help="Materialize rows stamped up to this UTC time (default now)."
    ),
    full: bool = typer.Option(
        False, "--full", help="Reload everything from 1970, not only rows after the last run."
    ),
    no_rebuild: bool = typer.Option(
        False,
        "--no-rebuild",
        help="Use the activity tables as they are (do not recompute them from the event log).",
    ),
) -> None:
    """Recompute activity tables from the event log and load the latest rows into the online store."""
    from freshrec.features import store

    settings: Settings = ctx.obj
    _quiet_feast()
    if end is not None and end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    try:
        report = _run_steps(
            "materialize",
            lambda say: store.materialize(
                settings, end=end, incremental=not full, rebuild_activity=not no_rebuild, progress=say
            ),
        )
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    table = Table(
        title=f"Materialized to {settings.features.environment} online store, up to {report.end:%Y-%m-%d %H:%M:%S} UTC"
    )
    table.add_column("feature view")
    table.add_column("range")
    for name, how in report.views.items():
        table.add_row(name, how)
    console.print(table)
    if report.activity_rows:
        rows = report.activity_rows
        console.print(
            f"activity tables: {rows['user_activity']:,} user rows, {rows['item_activity']:,} item rows "
            f"from {rows['events']:,} events"
        )
    console.print(f"done in {report.seconds:.1f} s")


@app.command("lookup")
def lookup_cmd(
    ctx: typer.Context,
    user: str = typer.Argument(..., help="User id."),
    items: list[str] = typer.Argument(..., help="Candidate item ids."),
    as_of: datetime | None = typer.Option(
        None, "--as-of", help="Request time (UTC): ages hours_since_last to it. Default: stored values."
    ),
) -> None:
    """Online features for one user and N candidate items (unknown ids get the documented defaults)."""
    from freshrec.features import store

    settings: Settings = ctx.obj
    _quiet_feast()
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    try:
        online = store.OnlineFeatures(settings)
    except Exception as exc:  # Feast raises its own types for a missing registry/view
        _fail(
            ValueError(
                f"feature store not ready ({exc}); run `freshrec features apply` and `materialize` first"
            )
        )
    started = time.perf_counter()
    frame = online.lookup(user, items, as_of=as_of)
    ms = (time.perf_counter() - started) * 1000
    table = Table(title=f"user {user}: {len(items)} item(s)")
    table.add_column("feature")
    for item in items:
        table.add_column(str(item), overflow="fold")
    for col in frame.columns:
        if col == "item_id":
            continue
        values = frame[col].tolist()
        table.add_row(col, *[f"{v:.4g}" if isinstance(v, float) else str(v) for v in values])
    console.print(table)
    console.print(f"lookup took {ms:.1f} ms")


@app.command("stream")
def stream_cmd(
    ctx: typer.Context,
    source: str = typer.Option(
        None,
        "--source",
        help="eventlog (follow the event log) or redis (Redis Streams). Default: online.source.",
    ),
    until_idle: bool = typer.Option(False, "--until-idle", help="Stop once the source has nothing new."),
    max_events: int | None = typer.Option(None, "--max-events", min=1, help="Stop after this many events."),
    max_batch_events: int | None = typer.Option(
        None, "--max-batch-events", min=1, help="Micro-batch size bound."
    ),
    max_batch_s: float | None = typer.Option(
        None, "--max-batch-s", min=0.0, help="Micro-batch time bound (s)."
    ),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="Serve Prometheus metrics on this port (0.0.0.0)."
    ),
    wait_for_store_s: float = typer.Option(
        0.0,
        "--wait-for-store-s",
        help="Wait up to this long for the feature views (a new cluster has none until `feast apply` ran); "
        "0: fail at once.",
    ),
    heartbeat: Path | None = typer.Option(
        None,
        "--heartbeat",
        help="Touch this file on every poll, idle ones and the wait for the store too (a liveness probe).",
    ),
) -> None:
    """Follow the event stream; keep user/item activity state; write changed rows to the online store.

    Exactly once with respect to stream positions (checkpoint under <state_dir>/features_stream); Ctrl-C or
    SIGTERM checkpoints and stops. Freshness (event in → row readable) is exported as
    freshrec_stream_features_freshness_seconds.
    """
    import signal

    from freshrec.features import stream

    settings: Settings = ctx.obj
    _quiet_feast()
    knobs = {
        k: v
        for k, v in {"max_batch_events": max_batch_events, "max_batch_s": max_batch_s}.items()
        if v is not None
    }
    if knobs:
        features = settings.features.model_copy(
            update={"stream": settings.features.stream.model_copy(update=knobs)}
        )
        settings = settings.model_copy(update={"features": features})
    if source is not None and source not in ("eventlog", "redis"):
        _fail(ValueError(f"--source must be 'eventlog' or 'redis', got {source!r}"))

    def beat() -> bool:
        if heartbeat is not None:
            heartbeat.touch()
        return False

    deadline = None  # counted from the first look that finds no feature views (not from start-up)
    try:
        while True:
            beat()
            try:
                job = stream.build_stream_job(settings, source)
                break
            except stream.StoreNotApplied as exc:
                if deadline is None and wait_for_store_s > 0:
                    deadline = time.monotonic() + wait_for_store_s
                    console.print(f"waiting up to {wait_for_store_s:g} s for the feature views: {exc}")
                if deadline is None or time.monotonic() >= deadline:
                    raise
                time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    except stream.StreamJobError as exc:
        _fail(exc)
    except Exception as exc:  # a Redis that does not answer, a registry Feast cannot read
        _fail(ValueError(f"cannot start the stream feature job: {exc}"))
    job.say = lambda line: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {line}")
    if metrics_port is not None:
        from freshrec.monitoring.prometheus import serve

        serve(job.metrics.registry, metrics_port, addr="0.0.0.0")
        console.print(f"metrics on http://0.0.0.0:{metrics_port}/metrics")
    stopping = {"now": False}

    def stop(signum, frame):  # type: ignore[no-untyped-def]
        stopping["now"] = True

    signal.signal(signal.SIGTERM, stop)
    kind = source or settings.online.source
    console.print(
        f"stream features: following {kind}, writing to the {settings.features.environment} online store "
        f"(batches ≤ {job.cfg.max_batch_events} events / {job.cfg.max_batch_s} s); resumed at "
        f"{job.stats.accepted:,} events"
    )
    try:
        job.run(until=lambda: beat() or stopping["now"], until_idle=until_idle, max_events=max_events)
    except KeyboardInterrupt:
        console.print("interrupted: checkpointed, stopping")
    except Exception as exc:  # a store or source failure: the checkpoint holds what was committed
        _fail(ValueError(f"stream feature job stopped: {exc} (restart resumes from the last checkpoint)"))
    console.print(f"done: {job.progress_line()}")
