"""``freshrec rollout plan|analyze|run|model-config|deploy|status|promote|abort``: the canary from the command line.

``freshrec rollout analyze`` exit codes (what the Argo ``ctr-serving-online-quality`` AnalysisTemplate Job
runs; the Job provider counts only exit 0 as success):

- 0: pass — the canary is at least as good as stable on every check;
- 1: fail — a check failed (roll back);
- 2: inconclusive — too little data (e.g. fewer than ``rollout.min_clicks`` clicks), even after
  ``--max-wait-s``. In Argo this fails the Job too, so a canary is never promoted on a guess;
- 3: bad arguments (unknown check, unparsable time, a missing companion option);
- 4: an input path does not exist (``--predictions``/``--events``: a mount that did not meet its writer);
- 5: an input exists but cannot be read (corrupt Parquet, missing columns), or Prometheus failed.

The cluster commands (``deploy``, ``status``, ``promote``, ``abort``) exit 0 on success (``deploy``: promoted),
1 when the rollout was aborted, 3 on timeout (the canary is aborted), 4 when the cluster cannot be reached or
refuses (missing kubeconfig, unreachable API server, 403, 404), each with a one-line message.
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
console = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line
EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2}
EXIT_USAGE, EXIT_MISSING, EXIT_UNREADABLE = 3, 4, 5
EXIT_TIMEOUT, EXIT_CLUSTER = 3, 4


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
    min_clicks: int = typer.Option(
        0,
        help="Wait (up to --max-wait-s) until the canary arm has this many clicks before judging "
        "(the plan's pause.until_clicks in the cluster).",
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
        raise typer.Exit(EXIT_USAGE)
    if prometheus and not (canary_hash and stable_hash):
        console.print("[red]--prometheus needs --canary-hash and --stable-hash[/red]")
        raise typer.Exit(EXIT_USAGE)
    predictions = predictions or settings.predictions_dir
    events = events or settings.eventlog_dir
    for option, path in (("--predictions", predictions), ("--events", events)):
        if not Path(path).exists():
            # A path that is not there is a broken deployment (a mount that missed its writer), not "too
            # little data": say so with its own code instead of waiting to be inconclusive.
            console.print(f"[red]{option} {path} does not exist[/red]")
            raise typer.Exit(EXIT_MISSING)
    try:
        start = pd.Timestamp(since) if since else None
    except ValueError as exc:
        console.print(f"[red]--since {since!r} is not an ISO time: {exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc
    if start is not None and start.tzinfo is None:
        start = start.tz_localize("UTC")
    deadline = time.monotonic() + max_wait_s
    while True:
        if last_minutes is not None:
            start = pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=last_minutes)
        try:
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
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            console.print(f"[red]cannot read the analysis inputs: {type(exc).__name__}: {exc}[/red]")
            raise typer.Exit(EXIT_UNREADABLE) from exc
        canary_clicks = result.counts.get("canary", {}).get("clicks", 0)
        waiting = canary_clicks < min_clicks
        settled = result.verdict == "fail" or (not waiting and result.verdict == "pass")
        if settled or time.monotonic() >= deadline:
            break
        why = f"{canary_clicks} canary clicks < {min_clicks}" if waiting else "; ".join(result.reasons)
        console.print(f"waiting ({why}); again in {interval_s:g} s")
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
        "--serving-url",
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


@app.command("model-config")
def model_config_cmd(
    version: str = typer.Option(
        ..., help="The pod's model version (its freshrec.io/model-version annotation)."
    ),
    repository: Path = typer.Option(..., help="The model repository as this pod mounts it."),
    model: str = typer.Option("ctr", help="Model name."),
    base_path: str = typer.Option(..., help="The model's base_path as TF Serving sees it."),
    out: Path = typer.Option(..., help="Where TF Serving reads its model config (--model_config_file)."),
    watch_s: float = typer.Option(0.0, help="Keep re-rendering every N seconds (the sidecar); 0: once."),
    heartbeat: Path | None = typer.Option(None, help="Touch this file on every pass (liveness)."),
) -> None:
    """Render TF Serving's model config for one Rollout pod: its version, or that version's newest online export."""
    import signal

    from freshrec.rollout.model_config import render, watch

    if not version.isdigit() or int(version) < 1:
        console.print(
            f"[red]bad model version {version!r}: the pod annotation must be a positive integer[/red]"
        )
        raise typer.Exit(EXIT_USAGE)
    served = render(repository, model, base_path, int(version), out)
    console.print(f"{model}: pod version {version}, serving v{served} ({out})")
    if watch_s <= 0:
        return
    stopped = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stopped.update(flag=True))

    def stop() -> bool:
        if heartbeat is not None:
            heartbeat.touch()
        return stopped["flag"]

    watch(repository, model, base_path, int(version), out, watch_s, stop=stop)


# --- the cluster: Argo Rollouts through the Kubernetes API --------------------------------------------------

NAMESPACE_OPT = typer.Option(
    None, "--namespace", "-n", help="Namespace of the Rollout (default rollout.namespace)."
)
ROLLOUT_OPT = typer.Option(None, "--rollout", help="Rollout name (default rollout.rollout_name).")
KUBECONFIG_OPT = typer.Option(
    None, help="kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)."
)
CONTEXT_OPT = typer.Option(None, help="kubeconfig context.")
API_SERVER_OPT = typer.Option(
    None, help="Kubernetes API URL without credentials, e.g. `kubectl proxy`'s http://127.0.0.1:8001."
)


def _driver(settings: Settings, namespace, rollout, kubeconfig, context, api_server):  # type: ignore[no-untyped-def]
    from freshrec.rollout.k8s import ArgoRolloutDriver, ClusterError, make_api_client

    rs = settings.rollout
    try:
        client = make_api_client(api_server, kubeconfig=kubeconfig, context=context)
    except ClusterError as exc:
        _cluster_exit(exc)
    return ArgoRolloutDriver(client, namespace or rs.namespace, rollout or rs.rollout_name)


def _cluster_exit(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(EXIT_CLUSTER) from None


def _cluster_call(fn):  # type: ignore[no-untyped-def]
    """Run ``fn()``; a cluster that cannot be reached or refuses becomes a one-line error and exit 4."""
    from freshrec.rollout.k8s import ClusterError, explain_api_error

    try:
        return fn()
    except ClusterError as exc:
        _cluster_exit(exc)
    except Exception as exc:
        message = explain_api_error(exc)
        if message is None:
            raise
        _cluster_exit(ClusterError(message))


def _status_line(st) -> str:  # type: ignore[no-untyped-def]
    step = f"step {st.current_step_index}/{st.steps}" if st.current_step_index is not None else "no step"
    analysis = f", analysis {st.analysis_status}" if st.analysis_status else ""
    weight = f", canary weight {st.canary_weight}%" if st.canary_weight is not None else ""
    return f"v{st.model_version} {st.phase or 'Unknown'}: {step}{weight}{analysis} {st.message}".rstrip()


@app.command("deploy")
def deploy_cmd(
    ctx: typer.Context,
    version: int = typer.Option(..., help="The model version to deploy to the Argo Rollout."),
    namespace: str | None = NAMESPACE_OPT,
    rollout: str | None = ROLLOUT_OPT,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the canary to promotion or abort."),
    timeout_s: float = typer.Option(3600.0, help="Give up (and abort the canary) after this long."),
    poll_s: float = typer.Option(10.0, help="Seconds between status polls."),
    kubeconfig: str | None = KUBECONFIG_OPT,
    context: str | None = CONTEXT_OPT,
    api_server: str | None = API_SERVER_OPT,
) -> None:
    """Set the model version on the Argo Rollout and follow it to promotion or abort.

    Exit 0 when promoted (Healthy), 1 when aborted (Degraded), 3 on timeout (the canary is aborted), 4 when the
    cluster cannot be reached or refuses.
    """
    from freshrec.rollout.k8s import RolloutTimeout

    settings: Settings = ctx.obj
    driver = _driver(settings, namespace, rollout, kubeconfig, context, api_server)
    where = f"{driver.namespace}/{driver.name}"
    if not wait:
        _cluster_call(lambda: driver.deploy(version))
        console.print(f"{where}: model version {version} set; the canary starts")
        return
    try:
        outcome, status = _cluster_call(
            lambda: driver.deploy_and_wait(
                version,
                timeout_s=timeout_s,
                poll_s=poll_s,
                on_status=lambda st: console.print(f"{where}: {_status_line(st)}", highlight=False),
            )
        )
    except RolloutTimeout as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_TIMEOUT) from exc
    console.print(f"v{version}: {outcome} (phase {status.phase}: {status.message})")
    raise typer.Exit(0 if outcome == "promoted" else 1)


@app.command("status")
def status_cmd(
    ctx: typer.Context,
    namespace: str | None = NAMESPACE_OPT,
    rollout: str | None = ROLLOUT_OPT,
    output: str = typer.Option("table", "--output", "-o", help="table | json"),
    kubeconfig: str | None = KUBECONFIG_OPT,
    context: str | None = CONTEXT_OPT,
    api_server: str | None = API_SERVER_OPT,
) -> None:
    """Show the Rollout: phase, model version, canary step and weight, the current analysis."""
    import dataclasses

    if output not in ("table", "json"):
        raise typer.BadParameter(f"unknown output {output!r} (table | json)", param_hint="--output")
    settings: Settings = ctx.obj
    driver = _driver(settings, namespace, rollout, kubeconfig, context, api_server)
    st = _cluster_call(driver.status)
    if output == "json":
        typer.echo(
            json.dumps(
                {"namespace": driver.namespace, "rollout": driver.name, **dataclasses.asdict(st)}, indent=2
            )
        )
        return
    table = Table(title=f"Rollout {driver.namespace}/{driver.name}")
    table.add_column("field")
    table.add_column("value")
    for key, value in dataclasses.asdict(st).items():
        table.add_row(key, "" if value is None else str(value))
    Console().print(table)


@app.command("promote")
def promote_cmd(
    ctx: typer.Context,
    namespace: str | None = NAMESPACE_OPT,
    rollout: str | None = ROLLOUT_OPT,
    full: bool = typer.Option(
        False, "--full/--next-step", help="Skip every remaining step, or only the pause."
    ),
    kubeconfig: str | None = KUBECONFIG_OPT,
    context: str | None = CONTEXT_OPT,
    api_server: str | None = API_SERVER_OPT,
) -> None:
    """Resume a paused canary (next step), or promote it fully."""
    settings: Settings = ctx.obj
    driver = _driver(settings, namespace, rollout, kubeconfig, context, api_server)
    _cluster_call(lambda: driver.promote(full=full))
    console.print(f"{driver.namespace}/{driver.name}: {'promoted fully' if full else 'resumed'}")


@app.command("abort")
def abort_cmd(
    ctx: typer.Context,
    namespace: str | None = NAMESPACE_OPT,
    rollout: str | None = ROLLOUT_OPT,
    kubeconfig: str | None = KUBECONFIG_OPT,
    context: str | None = CONTEXT_OPT,
    api_server: str | None = API_SERVER_OPT,
) -> None:
    """Abort the canary: all traffic back to the stable pods."""
    settings: Settings = ctx.obj
    driver = _driver(settings, namespace, rollout, kubeconfig, context, api_server)
    _cluster_call(driver.abort)
    console.print(f"{driver.namespace}/{driver.name}: aborted; the stable version serves")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
