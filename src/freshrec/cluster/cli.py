"""``freshrec cluster layout|render``: the cluster layout and the base manifests rendered from it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from freshrec.config import Settings

app = typer.Typer(
    help="Cluster mode: the layout and the base manifests rendered from it.", no_args_is_help=True
)
console = Console(stderr=True)
BASE = Path(__file__).resolve().parents[3] / "manifests" / "base"


@app.command("layout")
def layout_cmd(
    ctx: typer.Context,
    output: str = typer.Option("table", "--output", "-o", help="table | json"),
) -> None:
    """Show where every artefact lives (claim, subPath, path in the pods) and the workloads' settings."""
    settings: Settings = ctx.obj
    layout = settings.cluster
    if output == "json":
        typer.echo(json.dumps(layout.model_dump(mode="json"), indent=2))
        return
    if output != "table":
        raise typer.BadParameter(f"unknown output {output!r} (table | json)", param_hint="--output")
    from rich.table import Table

    table = Table(title=f"cluster layout: namespace {layout.namespace}")
    for col in ("artefact", "claim", "subPath", "path in the pods"):
        table.add_column(col)
    for name in sorted(layout.artefacts):
        claim, sub = layout.claim_of(name)
        table.add_row(name, claim, sub or "(root)", layout.artefact_path(name))
    Console().print(table)
    for key, value in sorted(layout.settings_env().items()):
        typer.echo(f"{key}={value}")


@app.command("render")
def render_cmd(
    ctx: typer.Context,
    out: Path = typer.Option(BASE, help="The manifests' base folder to write into."),
) -> None:
    """Render the base manifests from the layout (what `make compile` does; the tests compare them)."""
    from freshrec.cluster.render import write

    settings: Settings = ctx.obj
    for path in write(out, settings.cluster, settings.model.name):
        console.print(f"wrote {path}")
