"""``freshrec online``: run the streaming learner on the event log or a Redis stream.

``freshrec online held | release | drop``: the micro-batches that screening held (see
:mod:`freshrec.online.screening`), listed, released to be learned, or dropped with a reason.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import typer
from rich.console import Console

from freshrec.config import Settings
from freshrec.io import atomic_write_json

console = Console(stderr=True)

app = typer.Typer(
    help="Learn online from new events; list, release or drop the micro-batches screening held.",
    pretty_exceptions_show_locals=False,
)


def online(
    ctx: typer.Context,
    source: str = typer.Option(None, "--source", help="eventlog or redis (default: settings.online.source)."),
    max_events: int = typer.Option(None, "--max-events", min=1, help="Stop after this many events received."),
    until_idle: bool = typer.Option(False, "--until-idle", help="Stop when the source has nothing new."),
    idle_timeout_s: float = typer.Option(2.0, "--idle-timeout", help="How long a poll waits for new events."),
    serving_url: str = typer.Option(
        None,
        "--serving-url",
        help="Measure freshness against this serving REST URL (e.g. http://127.0.0.1:8501).",
    ),
    no_push: bool = typer.Option(False, "--no-push", help="Do not push fresh activity features to Feast."),
    report: Path = typer.Option(
        None, "--report", help="Write the run's JSON report here (default: reports dir)."
    ),
    wait_for_model_s: float = typer.Option(
        0.0,
        "--wait-for-model-s",
        help="Wait up to this long for a first model version (a new cluster has none until the pipeline pushes).",
    ),
    follow_stable: bool = typer.Option(
        False,
        "--follow-stable/--no-follow-stable",
        help="Exit (to be restarted, as a Deployment's container is) when another version is labelled "
        "stable than the one learned from, e.g. a canary promoted: exports must descend from what serves.",
    ),
    heartbeat: Path = typer.Option(
        None,
        "--heartbeat",
        help="Touch this file on every poll, idle ones too (a Deployment's liveness probe).",
    ),
) -> None:
    """Learn online from new events: screen, test-then-train, checkpoint, guarded export of new versions."""
    if ctx.invoked_subcommand is not None:
        return
    import pandas as pd

    from freshrec.model.repository import ModelRepository
    from freshrec.online.freshness import FreshnessTracker, make_metrics
    from freshrec.online.learner import build_learner
    from freshrec.online.sources import build_source

    settings: Settings = ctx.obj
    kind = source or settings.online.source
    if kind not in ("eventlog", "redis"):
        raise typer.BadParameter(f"--source must be eventlog or redis, got {kind!r}")
    if wait_for_model_s > 0:
        _wait_for_model(settings, wait_for_model_s, heartbeat)
    tracker = None
    if serving_url:
        tracker = FreshnessTracker(serving_url, settings.model.name, make_metrics())
    start_after = None
    history = None
    if kind == "eventlog":
        # Events the starting model was trained on are not learned again; they only warm the activity state.
        repo = ModelRepository(settings.models_dir, settings.model.name)
        version = repo.stable() or repo.latest()
        if version is not None:
            end = (repo.metadata(version).get("data_window") or {}).get("end")
            start_after = pd.Timestamp(end) if end else None
            if start_after is not None and start_after.tzinfo is None:
                start_after = start_after.tz_localize("UTC")
        if start_after is not None:
            from freshrec.data.eventlog import EventLog

            history = EventLog(settings.eventlog_dir).read(end=start_after + pd.Timedelta(microseconds=1))
        else:
            history = pd.DataFrame()
    learner = build_learner(
        settings,
        push_features=False if no_push else None,
        on_export=tracker.on_export if tracker else None,
        history=history,
    )
    src = build_source(settings, kind, start_after=start_after)

    stop = {"flag": False}

    def _stop(*_: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started = time.monotonic()
    first = learner.totals.received
    followed = {"at": 0.0}

    def replaced() -> bool:
        """True once another version was promoted stable (checked every 5 s, or told by a lost label write)."""
        if not follow_stable:
            return False
        if learner.superseded is None:
            now = time.monotonic()
            if now - followed["at"] < 5.0:
                return False
            followed["at"] = now
            learner.superseded = learner.superseded_by()
            if learner.superseded is None:
                return False
        console.print(
            f"v{learner.superseded} is now stable (learning from v{learner.serving_version}): restarting from it"
        )
        return True

    last_print = [0.0]

    def progress(rec: dict) -> None:
        now = time.monotonic()
        if now - last_print[0] < 1.0:
            return
        last_print[0] = now
        rate = (learner.totals.received - first) / max(now - started, 1e-9)
        auc = learner.metrics.window_auc()
        console.print(
            f"events {learner.totals.received:,}  {rate:,.0f}/s  prequential AUC {auc:.4f}  "
            f"logloss {learner.metrics.window_logloss():.4f}  versions exported {learner.totals.exports}  "
            f"guard failures {learner.totals.guard_failures}",
            highlight=False,
        )

    with console.status(f"learning online from {kind}"):
        totals = learner.run(
            src,
            max_events=max_events,
            until_idle=until_idle,
            idle_timeout_s=idle_timeout_s,
            progress=progress,
            should_stop=lambda: _beat(heartbeat) or stop["flag"] or replaced(),
        )
    elapsed = time.monotonic() - started
    out = learner.report()
    out["source"] = kind
    out["events_per_s"] = (totals.received - first) / max(elapsed, 1e-9)
    if tracker is not None:
        tracker.wait(30)
        out["freshness"] = tracker.summary()
    path = report or settings.reports_dir / f"online-{time.strftime('%Y%m%dT%H%M%S')}.json"
    atomic_write_json(path, out, indent=1)
    console.print(
        f"done: {totals.received:,} received ({totals.duplicates} replays dropped, {totals.quarantined} quarantined), "
        f"{totals.learned:,} learned, {totals.exports} versions exported, {totals.guard_failures} guard failures; "
        f"report {path}",
        highlight=False,
    )


app.callback(invoke_without_command=True)(online)


@app.command("held")
def held_cmd(
    ctx: typer.Context,
    output: str = typer.Option("table", "--output", "-o", help="table | json"),
) -> None:
    """List the micro-batches screening held (not learned until released)."""
    import json

    from freshrec.online.screening import held_store

    if output not in ("table", "json"):
        raise typer.BadParameter(f"--output must be table | json, got {output!r}")
    held = held_store(ctx.obj).list()
    if output == "json":
        typer.echo(json.dumps({"model": ctx.obj.model.name, "held": held}, indent=1, default=str))
        return
    if not held:
        console.print("no held batches")
        return
    from rich.table import Table

    table = Table("batch", "events", "first event", "released", "reasons")
    for v in held:
        table.add_row(
            v["batch_id"],
            str(v["events"]),
            str(v["first_event_time"]),
            "yes" if v["released"] else "",
            "; ".join(v["reasons"]),
        )
    Console().print(table)


def _ids(batch_ids: list[str] | None, all_: bool) -> list[str] | None:
    if bool(batch_ids) == all_:
        raise typer.BadParameter("give batch ids or --all (not both)")
    return None if all_ else list(batch_ids or [])


@app.command("release")
def release_cmd(
    ctx: typer.Context,
    batch_ids: list[str] = typer.Argument(None, help="Held batch ids (see `freshrec online held`)."),
    all_: bool = typer.Option(False, "--all", help="Release every held batch."),
) -> None:
    """Release held batches: the learner learns them at its next step and takes them as the new normal."""
    from freshrec.online.screening import held_store

    try:
        ids = held_store(ctx.obj).release(_ids(batch_ids, all_))
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0])) from None
    console.print(f"released {len(ids)} batch(es): {', '.join(ids) or 'none'}")


@app.command("drop")
def drop_cmd(
    ctx: typer.Context,
    batch_ids: list[str] = typer.Argument(None, help="Held batch ids (see `freshrec online held`)."),
    all_: bool = typer.Option(False, "--all", help="Drop every held batch."),
    reason: str = typer.Option(..., "--reason", help="Why (kept in held/dropped.jsonl)."),
) -> None:
    """Drop held batches for good (their events are never learned); the reason is kept."""
    from freshrec.online.screening import held_store

    try:
        ids = held_store(ctx.obj).drop(_ids(batch_ids, all_), reason=reason)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0])) from None
    console.print(f"dropped {len(ids)} batch(es): {', '.join(ids) or 'none'}")


def _beat(path: Path | None) -> bool:
    """Touch the heartbeat file (when one is given); always False, so it composes with a stop test."""
    if path is not None:
        path.touch()
    return False


def _wait_for_model(settings: Settings, timeout_s: float, heartbeat: Path | None) -> None:
    from freshrec.model.repository import ModelRepository

    repo = ModelRepository(settings.models_dir, settings.model.name)
    deadline = time.monotonic() + timeout_s
    if repo.latest() is None:
        console.print(
            f"no version of {settings.model.name} under {repo.root} yet: waiting up to {timeout_s:g} s"
        )
    while repo.latest() is None and time.monotonic() < deadline:
        _beat(heartbeat)
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
