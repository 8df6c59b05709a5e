"""``freshrec run``: the whole continuously-learning loop on this machine."""

from __future__ import annotations

import typer


def run(
    ctx: typer.Context,
    quick: bool = typer.Option(
        False, "--quick", help="A small run (2 to 3 minutes on 2 cores): fewer events, 2 epochs."
    ),
    dataset: str | None = typer.Option(
        None, help="Dataset name or description YAML (default: settings.data.dataset)."
    ),
    bootstrap_fraction: float = typer.Option(
        0.8, min=0.05, max=0.95, help="Share of events (by time) the bootstrap model trains on."
    ),
    max_bootstrap_events: int | None = typer.Option(
        None, min=100, help="Train the bootstrap on the latest N events before the cut."
    ),
    max_replay_events: int | None = typer.Option(
        None, min=100, help="Replay at most N events after the cut."
    ),
    window_events: int | None = typer.Option(
        None, min=100, help="Events per replay window (one drift check each)."
    ),
    speedup: float | None = typer.Option(
        None, min=1.0, help="Stream seconds per wall second (default: as fast as possible)."
    ),
    epochs: int | None = typer.Option(None, min=1, help="Training epochs for the pipelines."),
    no_retrain: bool = typer.Option(
        False, "--no-retrain", help="Monitor drift but never start the retraining pipeline."
    ),
    keep_state: bool = typer.Option(
        False, "--keep-state", help="Keep the previous run's event log and models (default: start clean)."
    ),
    export_every_events: int | None = typer.Option(
        None, min=1, help="The online learner learns the landed events and exports every N events."
    ),
    learn_on_served_features: bool | None = typer.Option(
        None,
        "--learn-on-served-features/--learn-on-exact-features",
        help="The online learner trains on the features each impression was served with (the gateway's "
        "request-time lookup) or on exact point-in-time features (default: RunOptions').",
    ),
) -> None:
    """Run the loop: ingest → features → bootstrap pipeline → serve → replay with online learning, drift, canary → report."""
    from rich.console import Console

    from freshrec.loop.runner import Loop, RunOptions

    given = {
        k: v
        for k, v in dict(
            dataset=dataset,
            max_bootstrap_events=max_bootstrap_events,
            max_replay_events=max_replay_events,
            window_events=window_events,
            speedup=speedup,
            epochs=epochs,
            export_every_events=export_every_events,
            learn_on_served_features=learn_on_served_features,
        ).items()
        if v is not None
    }
    given.update(bootstrap_fraction=bootstrap_fraction, retrain=not no_retrain, keep_state=keep_state)
    options = RunOptions.quick(**given) if quick else RunOptions(**given)
    console = Console()
    record = Loop(ctx.obj, options, console).run()
    console.rule("[bold]summary")
    for key, value in record.summary.items():
        console.print(f"  {key}: {value}")
    console.print(f"\nreport: [bold]{(ctx.obj.reports_dir / options.run_id / 'index.html').resolve()}[/bold]")
    if record.status != "ok":
        raise typer.Exit(130 if record.status == "interrupted" else 1)
