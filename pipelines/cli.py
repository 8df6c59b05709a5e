"""``freshrec pipeline run|compile|submit``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from freshrec.config import Settings

app = typer.Typer(
    help="Kubeflow pipelines: run locally (kfp.local), compile to YAML, submit to a cluster.",
    no_args_is_help=True,
)
console = Console()

PIPELINE_HELP = "continuous_training | drift_monitor"


def parse_params(pairs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` pairs; VALUE is read as JSON when it parses (numbers, booleans), else as a string."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--param")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@app.command("run")
def run(
    ctx: typer.Context,
    local: bool = typer.Option(
        False,
        "--local",
        help="Run with kfp.local on this machine (the only way `run` works; use `submit` for a cluster).",
    ),
    pipeline: str = typer.Option("continuous_training", "--pipeline", "-p", help=PIPELINE_HELP),
    dataset: str | None = typer.Option(
        None, help="Dataset to prepare into the event log (default: the configured one, on the first run)."
    ),
    source: Path | None = typer.Option(None, help="An event file to ingest first."),
    epochs: int | None = typer.Option(None, help="Training epochs (default: training.epochs)."),
    rollout_mode: str | None = typer.Option(
        None, help="auto | local | argo | promote | none (default: pipeline.rollout_mode)."
    ),
    param: list[str] = typer.Option(
        [], "--param", help="Any other pipeline parameter, KEY=VALUE (repeatable)."
    ),
) -> None:
    """Run a pipeline locally through kfp.local and print where each artifact is."""
    settings: Settings = ctx.obj
    if not local:
        raise typer.BadParameter(
            "only local runs are supported here: add --local, or use `freshrec pipeline submit`"
        )
    from freshrec.pipelines.local import run_local

    params = parse_params(param)
    if pipeline == "continuous_training":
        params.update(
            {
                k: v
                for k, v in {
                    "dataset": dataset,
                    "source_path": str(source.resolve()) if source else None,
                    "epochs": epochs,
                    "rollout_mode": rollout_mode,
                }.items()
                if v is not None
            }
        )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        result = run_local(settings, pipeline, **params)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"run directory: {result.run_dir}")
    table = Table(title=f"{pipeline}: artifacts (paths relative to the run directory)")
    table.add_column("task")
    table.add_column("output")
    table.add_column("path", overflow="fold")
    for task, name, path in result.artifact_paths():
        table.add_row(
            task,
            name,
            str(path.relative_to(result.run_dir)) if path.is_relative_to(result.run_dir) else str(path),
        )
    console.print(table)
    values = {t: r.parameters for t, r in result.tasks.items() if r.parameters}
    console.print_json(json.dumps(values, default=str))
    if pipeline == "continuous_training":
        pushed = result.pushed_version
        console.print(
            f"pushed version: {pushed}" if pushed is not None else "no version pushed (the gates stopped it)"
        )
    console.print(f"{pipeline} finished in {result.duration_s:.1f} s")


@app.command("compile")
def compile_(
    ctx: typer.Context,
    out_dir: Path | None = typer.Option(None, help="Write here instead of beside each pipeline."),
    gpu: bool | None = typer.Option(
        None, "--gpu/--cpu", help="Force GPU (needs pipeline.gpu_accelerator_type) or CPU for training."
    ),
) -> None:
    """Compile every pipeline to YAML (beside its pipeline.py unless --out-dir)."""
    settings: Settings = ctx.obj
    from freshrec.pipelines.build import compile_all

    try:
        paths = compile_all(settings, out_dir, gpu=gpu)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    for path in paths:
        console.print(f"wrote {path}")


@app.command("submit")
def submit(
    ctx: typer.Context,
    host: str | None = typer.Option(
        None, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline (default: pipeline.host)."
    ),
    pipeline: str = typer.Option("continuous_training", "--pipeline", "-p", help=PIPELINE_HELP),
    package: Path | None = typer.Option(
        None, help="Compiled YAML (default: the checked-in one; --compile rebuilds it from the settings)."
    ),
    recompile: bool = typer.Option(
        False, "--compile", help="Compile from the current settings (image, GPU, volume) before submitting."
    ),
    experiment: str | None = typer.Option(None, help="Experiment name (default: pipeline.experiment)."),
    recurring: str | None = typer.Option(
        None, help="Create a recurring run on this 6-field cron, e.g. '0 0 * * * *'."
    ),
    run_name: str | None = typer.Option(None, help="Run display name."),
    token: str | None = typer.Option(None, help="Bearer token for the KFP API."),
    token_env: str | None = typer.Option(None, help="Read the bearer token from this environment variable."),
    namespace: str | None = typer.Option(
        None, help="Kubeflow profile namespace (default: pipeline.namespace)."
    ),
    cache: bool | None = typer.Option(
        None, "--cache/--no-cache", help="Override every task's caching option."
    ),
    param: list[str] = typer.Option([], "--param", help="Pipeline parameter KEY=VALUE (repeatable)."),
) -> None:
    """Submit a run (or a recurring run) to a Kubeflow Pipelines backend."""
    settings: Settings = ctx.obj
    from freshrec.pipelines.build import check_name, compile_pipeline, create, package_path
    from freshrec.pipelines.submit import make_client
    from freshrec.pipelines.submit import submit as do_submit

    host = host or settings.pipeline.host
    if not host:
        raise typer.BadParameter("no KFP host: pass --host or set pipeline.host", param_hint="--host")
    if token and token_env:
        raise typer.BadParameter("give --token or --token-env, not both")
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise typer.BadParameter(
                f"environment variable {token_env} is empty or unset", param_hint="--token-env"
            )
    try:
        check_name(pipeline)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--pipeline") from exc
    if recompile:
        import tempfile

        package = Path(tempfile.mkdtemp(prefix="freshrec-kfp-")) / f"{pipeline}.yaml"
        compile_pipeline(create(pipeline, settings), package)
    package = package or package_path(pipeline)
    namespace = namespace or settings.pipeline.namespace
    client = make_client(host, token=token, namespace=namespace)
    try:
        result = do_submit(
            client,
            package,
            experiment=experiment or settings.pipeline.experiment,
            arguments=parse_params(param),
            run_name=run_name,
            recurring_cron=recurring,
            namespace=namespace,
            enable_caching=cache,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"created {result.kind} {result.id} in experiment {result.experiment_id}: {result.url}")
