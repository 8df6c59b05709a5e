"""``freshrec rollout plan|analyze|run|deploy``: the canary from the command line.

``freshrec rollout analyze`` exit codes (what the Argo ``ctr-serving-online-quality`` AnalysisTemplate Job
runs; the Job provider counts only exit 0 as success):

- 0: pass — the canary is at least as good as stable on every check;
- 1: fail — a check failed (roll back);
- 2: inconclusive — too little data (e.g. fewer than ``rollout.min_clicks`` clicks), even after
  ``--max-wait-s``. In Argo this fails the Job too, so a canary is never promoted on a guess.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from freshrec.config import Settings

app = typer.Typer(
    help="Canary rollouts: the plan, analysis, local controller, Argo Rollouts deploy.", no_args_is_help=True
)
console = Console(stderr=True)
EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2}


def _plan(settings: Settings, plan_file: Path | None):
    from freshrec.rollout.plan import load_plan

    try:
        return load_plan(plan_file or settings.rollout.plan_file)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


@app.command("plan")
def plan_cmd(
    ctx: typer.Context,
    plan_file: Path | None = typer.Option(
        None, help="Plan YAML (default rollout.plan_file, else the default plan)."
    ),
    argo_only: bool = typer.Option(False, "--argo", help="Print only the Argo Rollouts steps (YAML)."),
) -> None:
    """Print the canary plan and the same plan as Argo Rollouts canary steps."""
    import yaml

    settings: Settings = ctx.obj
    plan = _plan(settings, plan_file)
    argo = yaml.safe_dump(plan.to_argo_steps(), sort_keys=False)
    if argo_only:
        typer.echo(argo, nl=False)
        return
    typer.echo("# canary plan (local controller)")
    typer.echo(plan.to_yaml(), nl=False)
    typer.echo("# Argo Rollouts spec.strategy.canary.steps")
    typer.echo(argo, nl=False)


def _print_result(result, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
        return
    table = Table(title=f"canary analysis: {result.verdict.upper()}")
    for col in ("check", "status", "stable", "canary", "threshold", "detail"):
        table.add_column(col)
    fmt = lambda x: "" if x is None else f"{x:.4g}"  # noqa: E731
    for c in result.checks:
        color = {"pass": "green", "fail": "red", "inconclusive": "yellow"}.get(c.status, "dim")
        table.add_row(
            c.name, f"[{color}]{c.status}[/{color}]", fmt(c.stable), fmt(c.canary), fmt(c.threshold), c.detail
        )
    Console().print(table)


@app.command("analyze")
def analyze_cmd(
    ctx: typer.Context,
    predictions: Path = typer.Option(
        None, help="Prediction log folder/file (default <workdir>/predictions)."
    ),
    events: Path = typer.Option(
        None, help="Event log folder or events Parquet file (default <workdir>/eventlog)."
    ),
    checks: str = typer.Option(
        "", help="Comma-separated checks (default all): error_rate,latency_p99,score_shift,logloss,ctr."
    ),
    canary_version: int | None = typer.Option(
        None, help="Split arms by model_version (cluster mode) instead of the arm column."
    ),
    stable_version: int | None = typer.Option(
        None, help="With --canary-version: the stable version (default: any other)."
    ),
    gateway: str | None = typer.Option(
        None, help="Gateway admin URL for per-arm request stats (GET /v1/admin/stats)."
    ),
    prometheus: str | None = typer.Option(
        None, help="Prometheus URL for per-arm request stats of the TF Serving pods."
    ),
    canary_hash: str | None = typer.Option(
        None, help="With --prometheus: the canary pods' rollouts-pod-template-hash."
    ),
    stable_hash: str | None = typer.Option(
        None, help="With --prometheus: the stable pods' rollouts-pod-template-hash."
    ),
    since: str | None = typer.Option(
        None, help="Only predictions served at or after this ISO time (UTC if naive)."
    ),
    last_minutes: float | None = typer.Option(
        None, help="Only predictions served in the last N minutes (re-evaluated at each analysis)."
    ),
    window_s: float | None = typer.Option(
        None, help="Click attribution window (default rollout.click_window_s)."
    ),
    max_wait_s: float = typer.Option(0.0, help="Re-analyse while inconclusive, up to this many seconds."),
    interval_s: float = typer.Option(30.0, help="Seconds between analyses while waiting."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    out: Path | None = typer.Option(None, help="Also write the result JSON here."),
) -> None:
    """Compare canary with stable; exit 0 pass, 1 fail, 2 inconclusive (too few clicks)."""
    import pandas as pd

    from freshrec.io import atomic_write_json
    from freshrec.rollout.analysis import analyze, prometheus_arm_stats
    from freshrec.rollout.controller import HttpTrafficRouter, load_joined
    from freshrec.rollout.plan import ALL_CHECKS

    settings: Settings = ctx.obj
    rs = settings.rollout
    chosen = tuple(c.strip() for c in checks.split(",") if c.strip()) or ALL_CHECKS
    unknown = set(chosen) - set(ALL_CHECKS)
    if unknown:
        console.print(f"[red]unknown check(s) {sorted(unknown)}; known: {', '.join(ALL_CHECKS)}[/red]")
        raise typer.Exit(EXIT_CODES["inconclusive"])
    if prometheus and not (canary_hash and stable_hash):
        console.print("[red]--prometheus needs --canary-hash and --stable-hash[/red]")
        raise typer.Exit(EXIT_CODES["inconclusive"])
    predictions = predictions or settings.predictions_dir
    events = events or settings.eventlog_dir
    try:
        start = pd.Timestamp(since) if since else None
    except ValueError as exc:
        console.print(f"[red]--since {since!r} is not an ISO time: {exc}[/red]")
        raise typer.Exit(EXIT_CODES["inconclusive"]) from exc
    if start is not None and start.tzinfo is None:
        start = start.tz_localize("UTC")
    deadline = time.monotonic() + max_wait_s
    while True:
        if last_minutes is not None:
            start = pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=last_minutes)
        joined = load_joined(predictions, events, window_s or rs.click_window_s, start)
        stats = None
        if gateway:
            stats = HttpTrafficRouter(gateway, token=settings.serving.admin_token()).stats()
        elif prometheus:
            stats = prometheus_arm_stats(
                prometheus,
                canary_hash=canary_hash,
                stable_hash=stable_hash,
                namespace=rs.namespace,
                model=settings.model.name,
            )
        result = analyze(
            joined, stats, rs, chosen, canary_version=canary_version, stable_version=stable_version
        )
        if result.verdict != "inconclusive" or time.monotonic() >= deadline:
            break
        console.print(f"inconclusive ({'; '.join(result.reasons)}); again in {interval_s:g} s")
        time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))
    _print_result(result, as_json)
    if out:
        atomic_write_json(out, result.to_dict())
    raise typer.Exit(EXIT_CODES[result.verdict])


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    version: int = typer.Option(..., help="The model version to roll out (must be in the repository)."),
    gateway: str | None = typer.Option(
        None,
        help="Gateway admin URL (default http://serving.gateway_admin_host:serving.gateway_admin_port).",
    ),
    plan_file: Path | None = typer.Option(
        None, help="Plan YAML (default rollout.plan_file, else the default plan)."
    ),
    model_server_url: str | None = typer.Option(
        None,
        "--model-server",
        help="Model server REST URL, to wait for the canary to load (default serving.host:rest_port).",
    ),
) -> None:
    """Roll a model version out through the running gateway by the canary plan; promote or roll back.

    Exit 0 when promoted, 1 when rolled back. The timeline is saved under <workdir>/reports/rollout/.
    """
    from freshrec.rollout.controller import RolloutError, local_controller

    settings: Settings = ctx.obj
    plan = _plan(settings, plan_file)

    def show(entry) -> None:
        verdict = f" {entry.verdict}" if entry.verdict else ""
        console.print(
            f"[{entry.elapsed_s:8.1f}s] step {entry.step} {entry.action} weight={entry.weight}{verdict} {'; '.join(entry.reasons)}"
        )

    controller = local_controller(
        settings, plan, gateway_url=gateway, model_server_url=model_server_url, progress=show
    )
    try:
        report = controller.run(version)
    except RolloutError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"v{version}: {report.outcome}; timeline {report.path}")
    raise typer.Exit(0 if report.outcome == "promoted" else 1)


@app.command("deploy")
def deploy_cmd(
    ctx: typer.Context,
    version: int = typer.Option(..., help="The model version to deploy to the Argo Rollout."),
    timeout_s: float = typer.Option(3600.0, help="Give up (and abort the canary) after this long."),
    poll_s: float = typer.Option(10.0, help="Seconds between status polls."),
    kubeconfig: str | None = typer.Option(
        None, help="kubeconfig file (default: in-cluster, else ~/.kube/config)."
    ),
    context: str | None = typer.Option(None, help="kubeconfig context."),
    api_server: str | None = typer.Option(
        None, help="Kubernetes API URL without credentials, e.g. `kubectl proxy`'s http://127.0.0.1:8001."
    ),
    no_wait: bool = typer.Option(False, help="Only set the version; do not follow the rollout."),
) -> None:
    """Cluster mode: set the model version on the Argo Rollout and follow it to promotion or abort.

    Exit 0 when promoted (Healthy), 1 when aborted (Degraded), 3 on timeout (the canary is aborted).
    """
    from freshrec.rollout.k8s import ArgoRolloutDriver, RolloutTimeout, make_api_client

    settings: Settings = ctx.obj
    rs = settings.rollout
    driver = ArgoRolloutDriver(
        make_api_client(api_server, kubeconfig=kubeconfig, context=context), rs.namespace, rs.rollout_name
    )
    if no_wait:
        driver.deploy(version)
        return
    try:
        outcome, status = driver.deploy_and_wait(version, timeout_s=timeout_s, poll_s=poll_s)
    except RolloutTimeout as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from exc
    console.print(f"v{version}: {outcome} (phase {status.phase}: {status.message})")
    raise typer.Exit(0 if outcome == "promoted" else 1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
