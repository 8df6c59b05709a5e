"""``freshrec explain --version N``: the top features of a published version on an evaluation window.

Only stdlib, typer, rich and freshrec.config at module level: TensorFlow loads inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from freshrec.config import Settings

console = Console()


def explanation_path(settings: Settings, version: int) -> Path:
    """Where a version's explanation is kept (the run report and the CLI read it from here)."""
    return settings.reports_dir / "explanations" / f"{settings.model.name}-v{int(version)}.json"


def _window(settings: Settings, dataset: str | None, frame: Path | None):
    """(evaluation window, known users, known items): a given file, else the dataset's test window."""
    import pandas as pd

    if frame is not None:
        if not frame.is_file():
            raise ValueError(f"--frame {frame} is not a file")
        if frame.suffix == ".parquet":
            return pd.read_parquet(frame), None, None
        if frame.suffix == ".csv":
            return pd.read_csv(frame), None, None
        raise ValueError(f"--frame must be a .parquet or .csv file, not {frame.name}")
    from freshrec.data.datasets import load_dataset, load_description
    from freshrec.features.training_set import training_frames

    description = load_description(dataset or settings.data.dataset)
    data = load_dataset(description, settings.data.datasets_dir)
    tr, va = settings.data.train_fraction, settings.data.valid_fraction
    train_df, _, test_df = training_frames(data, (tr, va, 1 - tr - va))
    return test_df, set(train_df["user_id"]), set(train_df["item_id"])


def explain(
    ctx: typer.Context,
    version: int = typer.Option(..., "--version", help="Published version to explain."),
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="Dataset description name or YAML path (its test window)."
    ),
    frame: Path | None = typer.Option(
        None, "--frame", help="Explain on these labelled rows instead (.parquet or .csv with the inputs)."
    ),
    top: int = typer.Option(10, "--top", min=1, help="Features shown."),
    repeats: int = typer.Option(3, "--repeats", min=1, max=20, help="Shuffles per feature."),
    max_rows: int = typer.Option(20_000, "--max-rows", min=100, help="Subsample a larger window."),
    output: str = typer.Option("table", "--output", "-o", help="table | json"),
) -> None:
    """Permutation importance on AUC of a version's raw inputs, and the window's slice metrics."""
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
    from freshrec.model.explain import explain_version

    try:
        window, users, items = _window(settings, dataset, frame)
        expl = explain_version(
            repo.path(version),
            window,
            version=version,
            known_users=users,
            known_items=items,
            repeats=repeats,
            max_rows=max_rows,
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    saved = expl.save(explanation_path(settings, version))
    if output == "json":
        typer.echo(json.dumps(expl.to_dict(), indent=1))
        return
    table = Table(
        title=f"v{version}: permutation importance on AUC ({expl.n_rows} rows, base AUC {expl.base_auc:.4f})"
    )
    for col in ("rank", "feature", "AUC drop", "±"):
        table.add_column(col, justify="right" if col != "feature" else "left")
    for i, f in enumerate(expl.top(top), 1):
        table.add_row(str(i), f.feature, f"{f.auc_drop:.4f}", f"{f.auc_drop_std:.4f}")
    console.print(table)
    if expl.slices:
        slices = Table(title="slices")
        for col in ("slice", "n", "auc", "logloss", "ece"):
            slices.add_column(col)
        for name, m in expl.slices.items():
            cells = [m.get(k) for k in ("n", "auc", "logloss", "ece")]
            slices.add_row(name, *["—" if c is None else f"{c:.4g}" for c in cells])
        console.print(slices)
    console.print(f"{expl.seconds:.1f} s; saved to {saved}")
