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
    profile: str = typer.Option(
        "default", "--profile", help="Checked-in variant: default (CPU training) | production (GPU training)."
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
        None, "--namespace", "-n", help="Kubeflow profile namespace (default: the cluster layout's)."
    ),
    service_account: str | None = typer.Option(
        None, help="Service account of the run's pods (default: the layout's pipeline account)."
    ),
    wait: bool = typer.Option(
        False,
        "--wait/--no-wait",
        help="Follow the run to its end, printing each task's state; exit 1 unless it succeeds.",
    ),
    timeout_s: float = typer.Option(6 * 3600.0, help="With --wait: give up waiting after this long."),
    cache: bool | None = typer.Option(
        None, "--cache/--no-cache", help="Override every task's caching option."
    ),
    param: list[str] = typer.Option([], "--param", help="Pipeline parameter KEY=VALUE (repeatable)."),
) -> None:
    """Submit a run (or a recurring run) to a Kubeflow Pipelines backend."""
    settings: Settings = ctx.obj
    from freshrec.pipelines.build import check_name, compile_pipeline, create, package_path, profile_settings
    from freshrec.pipelines.submit import make_client, run_request
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
    if wait and recurring:
        raise typer.BadParameter(
            "--wait follows one run; a recurring run has none to follow", param_hint="--wait"
        )
    try:
        if recompile:
            import tempfile

            package = Path(tempfile.mkdtemp(prefix="freshrec-kfp-")) / f"{pipeline}.yaml"
            compile_pipeline(create(pipeline, profile_settings(settings, profile)), package)
        package = package or package_path(pipeline, profile)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    req = run_request(settings)
    namespace = namespace or req.namespace
    client = make_client(host, token=token, namespace=namespace)
    try:
        result = do_submit(
            client,
            package,
            experiment=experiment or req.experiment,
            arguments=parse_params(param),
            run_name=run_name,
            recurring_cron=recurring,
            namespace=namespace,
            enable_caching=cache,
            service_account=service_account or req.service_account,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"created {result.kind} {result.id} in experiment {result.experiment_id}: {result.url}")
    if wait:
        _follow(client, result.id, timeout_s)


def _follow(client, run_id: str, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    """Print the run's state and its tasks' states as they change; exit 0 on success, 1 otherwise."""
    import time

    from freshrec.pipelines.submit import run_state, task_states
    from freshrec.pipelines.submit import wait as wait_for

    started = time.monotonic()

    def show(run) -> None:  # type: ignore[no-untyped-def]
        tasks = ", ".join(f"{k} {v.lower()}" for k, v in sorted(task_states(run).items()))
        console.print(f"[{time.monotonic() - started:7.0f}s] run {run_state(run).lower()}  {tasks}")

    try:
        run = wait_for(client, run_id, timeout_s=timeout_s, on_change=show)
    except TimeoutError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from exc
    state = run_state(run)
    console.print(f"run {run_id}: {state.lower()}")
    raise typer.Exit(0 if state == "SUCCEEDED" else 1)
