"""``freshrec models compress --version N``: distil a version into a smaller one, bless it, publish it.

Only stdlib, typer, rich and freshrec.config at module level: TensorFlow loads inside the command.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console

from freshrec.config import Settings

console = Console()


def compress(
    ctx: typer.Context,
    version: int = typer.Option(..., "--version", help="Published DCN version to compress."),
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="Dataset description name or YAML path (train/valid/test windows)."
    ),
    epochs: int = typer.Option(6, "--epochs", min=1, max=100, help="Distillation epochs."),
    publish: bool = typer.Option(True, "--publish/--no-publish", help="Publish the student when blessed."),
    output: str = typer.Option("table", "--output", "-o", help="table | json"),
) -> None:
    """Distil a version into a smaller DCN on the same inputs; bless it against its parent; publish it."""
    from freshrec.model.repository import ModelRepository

    if output not in ("table", "json"):
        raise typer.BadParameter(f"unknown output {output!r} (table | json)", param_hint="--output")
    settings: Settings = ctx.obj
    repo = ModelRepository(settings.models_dir, settings.model.name)
    versions = repo.versions()
    if version not in versions:
        have = ", ".join(map(str, versions)) or "none"
        console.print(
            f"[red]error:[/] model {repo.name!r} has no servable version {version} in {repo.root} "
            f"(versions: {have})"
        )
        raise typer.Exit(2)
    from freshrec.data.datasets import load_dataset, load_description
    from freshrec.features.training_set import training_frames
    from freshrec.model.compress import compress_version

    try:
        description = load_description(dataset or settings.data.dataset)
        data = load_dataset(description, settings.data.datasets_dir)
        tr, va = settings.data.train_fraction, settings.data.valid_fraction
        train_df, valid_df, test_df = training_frames(data, (tr, va, 1 - tr - va))
        out = compress_version(
            repo,
            version,
            train_df,
            valid_df,
            test_df,
            policy=settings.blessing,
            publish=publish,
            epochs=epochs,
        )
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if output == "json":
        typer.echo(json.dumps(out.to_dict(), indent=1, default=float))
        return
    p, s = out.parent_metrics, out.student_metrics
    console.print(
        f"v{version} AUC {p['auc']:.4f} → student {s['auc']:.4f} (loss {out.auc_loss:+.4f}); parameters "
        f"{out.parameters['parent']:,} → {out.parameters['student']:,}"
    )
    verdict = out.blessing
    console.print(f"blessed vs parent: {verdict['blessed']} — " + "; ".join(verdict["reasons"]))
    if out.version is not None:
        console.print(f"published version [bold]{out.version}[/] (parent {version})")
    else:
        console.print("[yellow]not published[/]")
