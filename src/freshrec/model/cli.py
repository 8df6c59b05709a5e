"""``freshrec train``, ``freshrec evaluate`` and ``freshrec models list|show|promote``.

Only stdlib, typer, rich and freshrec.config at module level: TensorFlow loads inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from freshrec.config import Settings
from freshrec.model.compress_cli import compress

app = typer.Typer(
    help="The model repository: list versions, show one, move the stable/canary labels.", no_args_is_help=True
)
console = Console()

_SHOWN = ("auc", "gauc", "logloss", "ece", "mean_prediction", "ctr", "f1", "ndcg_at_10", "n")


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.0f}" if x.is_integer() and abs(x) >= 2 else f"{x:.4f}"
    return "—" if x is None else str(x)


def _metrics_table(title: str, columns: dict[str, dict[str, float] | None]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    for metric in _SHOWN:
        table.add_row(metric, *[_fmt((m or {}).get(metric)) for m in columns.values()])
    return table


def _epoch_progress():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]training[/]"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    )


def train(
    ctx: typer.Context,
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="Dataset description name or YAML path."
    ),
    arch: str | None = typer.Option(None, "--arch", help="Architecture: dcn or lr (default from settings)."),
    parent: int | None = typer.Option(
        None,
        "--parent",
        help="Warm-start from this version (default: stable when warm start is on; 0 = cold).",
    ),
    publish: bool = typer.Option(
        False, "--publish", help="Infra-check and publish the candidate if blessed."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Override training.epochs."),
    report: Path | None = typer.Option(
        None, "--report", help="Write the run (metrics, blessing) as JSON here."
    ),
) -> None:
    """Train on a described dataset (time split), evaluate vs stable, bless, and optionally publish."""
    from freshrec.training import run_training

    settings: Settings = ctx.obj
    if arch not in (None, "dcn", "lr"):
        raise typer.BadParameter(f"--arch must be dcn or lr, not {arch!r}")
    if epochs:
        settings = settings.model_copy(
            update={"training": settings.training.model_copy(update={"epochs": epochs})}
        )
    with _epoch_progress() as bar:
        task = bar.add_task("", total=settings.training.epochs)

        def progress(epoch: int, total: int, logs: dict[str, float]) -> None:
            bar.update(task, completed=epoch, description=f"val_auc {logs.get('val_auc', float('nan')):.4f}")

        try:
            run = run_training(settings, dataset, arch, parent, publish, progress)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from exc
    console.print(
        _metrics_table(
            f"{run.dataset} · {run.architecture} · test window",
            {"candidate": run.candidate}
            | ({f"stable (v{run.production_version})": run.production} if run.production else {}),
        )
    )
    verdict = run.blessing
    colour = "green" if verdict["blessed"] else "red"
    console.print(f"[{colour}]blessed: {verdict['blessed']}[/] — " + "; ".join(verdict["reasons"]))
    if run.version is not None:
        extra = " and labelled stable" if run.labelled_stable else ""
        console.print(f"published version [bold]{run.version}[/]{extra}")
    elif publish:
        console.print("[yellow]not published[/]" + (f": {run.infra['message']}" if run.infra else ""))
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(run.to_dict(), indent=1, default=str))


def evaluate(
    ctx: typer.Context,
    version: int | None = typer.Option(None, "--version", help="Version to evaluate (default: latest)."),
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="Dataset description name or YAML path."
    ),
) -> None:
    """Evaluate a published version (and stable) on the dataset's test window, and show the blessing verdict."""
    import pandas as pd

    from freshrec.data.datasets import load_dataset, load_description
    from freshrec.evaluation import bless
    from freshrec.evaluation import evaluate as evaluate_frame
    from freshrec.features.training_set import training_frames
    from freshrec.model.export import predict_saved_model
    from freshrec.model.repository import ModelRepository

    settings: Settings = ctx.obj
    repo = ModelRepository(settings.models_dir, settings.model.name)
    version = version if version is not None else repo.latest()
    if version is None or version not in repo.versions():
        console.print(f"[red]error:[/] no servable version {version} in {repo.root}")
        raise typer.Exit(2)
    description = load_description(dataset or settings.data.dataset)
    data = load_dataset(description, settings.data.datasets_dir)
    tr = settings.data.train_fraction
    va = settings.data.valid_fraction
    train_df, _, test_df = training_frames(data, (tr, va, 1 - tr - va))
    known = {"known_users": set(train_df["user_id"]), "known_items": set(train_df["item_id"])}

    def score(v: int) -> pd.DataFrame:
        return test_df.assign(score=predict_saved_model(repo.path(v), test_df))

    candidate = evaluate_frame(score(version), **known)
    stable = repo.stable()
    production = evaluate_frame(score(stable), **known).metrics if stable not in (None, version) else None
    console.print(
        _metrics_table(
            f"{description.name} · test window",
            {f"v{version}": candidate.metrics} | ({f"stable v{stable}": production} if production else {}),
        )
    )
    slices = Table(title="slices (candidate)")
    for col in ("slice", "n", "auc", "logloss", "ece"):
        slices.add_column(col)
    for name, m in candidate.slices.items():
        slices.add_row(name, _fmt(m.get("n")), _fmt(m.get("auc")), _fmt(m.get("logloss")), _fmt(m.get("ece")))
    console.print(slices)
    verdict = bless(candidate.metrics, production, settings.blessing)
    console.print(f"blessed: {verdict.blessed} — " + "; ".join(verdict.reasons))


app.command("compress")(compress)


@app.command("list")
def list_versions(
    ctx: typer.Context,
    output: str = typer.Option("table", "--output", "-o", help="table | json"),
) -> None:
    """Servable versions with their labels, metrics and parents."""
    from freshrec.model.repository import ModelRepository

    if output not in ("table", "json"):
        raise typer.BadParameter(f"unknown output {output!r} (table | json)", param_hint="--output")
    settings: Settings = ctx.obj
    repo = ModelRepository(settings.models_dir, settings.model.name)
    labels: dict[int, list[str]] = {}
    for label, v in repo.labels().items():
        labels.setdefault(v, []).append(label)
    if output == "json":
        rows = [{"version": v, "labels": labels.get(v, []), **repo.metadata(v)} for v in repo.versions()]
        typer.echo(json.dumps({"model": repo.name, "versions": rows}, indent=2, default=str))
        return
    table = Table(title=f"model {repo.name!r} in {repo.root}")
    for col in ("version", "labels", "auc", "logloss", "blessed", "parent", "created_at"):
        table.add_column(col)
    for v in repo.versions():
        meta = repo.metadata(v)
        metrics = meta.get("metrics") or {}
        table.add_row(
            str(v),
            ",".join(labels.get(v, [])),
            _fmt(metrics.get("auc")),
            _fmt(metrics.get("logloss")),
            _fmt((meta.get("blessing") or {}).get("blessed")),
            _fmt(meta.get("parent_version")),
            str(meta.get("created_at", "")),
        )
    console.print(table)


@app.command("show")
def show(ctx: typer.Context, version: int = typer.Argument(..., help="Version number.")) -> None:
    """Print a version's freshrec.json."""
    from freshrec.model.repository import ModelRepository, RepositoryError

    settings: Settings = ctx.obj
    try:
        meta = ModelRepository(settings.models_dir, settings.model.name).metadata(version)
    except RepositoryError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    console.print_json(json.dumps(meta, default=str))


@app.command("promote")
def promote(
    ctx: typer.Context,
    version: int = typer.Argument(..., help="Version number."),
    label: str = typer.Option("stable", "--label", help="stable or canary."),
) -> None:
    """Point a label (stable/canary) at a version in models.config."""
    from freshrec.model.repository import ModelRepository, RepositoryError

    settings: Settings = ctx.obj
    repo = ModelRepository(settings.models_dir, settings.model.name)
    try:
        repo.set_label(label, version)
    except (RepositoryError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"{label} → version {version} ({repo.config_path})")
    if label == "stable":
        from freshrec.model.references import ReferenceStore

        references = ReferenceStore(settings.references_dir, settings.model.name)
        reference = references.promote(version)
        kept = references.stable_version()
        console.print(
            f"drift reference → {reference}"
            if reference
            else f"[yellow]v{version} has no drift reference[/]; the drift monitor keeps "
            + (f"v{kept}'s" if kept is not None else "none (it fails until a stable version has one)")
        )
