"""``freshrec serve`` (the local TF-Serving-compatible model server) and ``freshrec serving ...``."""

from __future__ import annotations

import signal
import threading

import typer
from rich.console import Console

from freshrec.config import Settings

app = typer.Typer(help="Serving: the ranking gateway and model-server tools.", no_args_is_help=True)
console = Console(stderr=True)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def serve(
    ctx: typer.Context,
    rest_port: int | None = typer.Option(None, help="REST port (default serving.rest_port, 8501)."),
    grpc_port: int | None = typer.Option(None, help="gRPC port (default serving.grpc_port, 8500)."),
    host: str | None = typer.Option(None, help="Bind address (default serving.host, loopback)."),
    model_name: str | None = typer.Option(
        None, help="Model served when models.config is absent (default model.name)."
    ),
) -> None:
    """Serve the model repository with TF Serving's REST and gRPC APIs until Ctrl-C / SIGTERM."""
    from freshrec.serving.server import ModelServer

    settings: Settings = ctx.obj
    if host:
        settings.serving.host = host
    server = ModelServer(settings, rest_port=rest_port, grpc_port=grpc_port, model_name=model_name)
    with console.status("loading models ..."):
        server.start()
    loaded = {n: sorted(v.servables) for n, v in server.manager.views().items()}
    console.print(
        f"model server: REST {server.rest_url}  gRPC {server.grpc_target}  models {loaded}  "
        f"(repository {server.manager.models_dir}, polled every {settings.serving.poll_interval_s}s)"
    )
    try:
        _wait_for_signal()
    finally:
        console.print("stopping: finishing in-flight requests ...")
        server.stop()


@app.command("gateway")
def gateway(
    ctx: typer.Context,
    port: int | None = typer.Option(None, help="Ranking port (default serving.gateway_port, 8080)."),
    admin_port: int | None = typer.Option(
        None, help="Admin API port (default serving.gateway_admin_port, 8081, on serving.gateway_admin_host)."
    ),
    model_server: str | None = typer.Option(
        None, help="Model server gRPC target host:port (default serving.host:serving.grpc_port)."
    ),
    replay: bool | None = typer.Option(
        None,
        "--replay/--no-replay",
        help="Accept as_of (replayed event time); default serving.gateway_replay.",
    ),
) -> None:
    """Run the ranking gateway: POST /v1/rank; admin API (canary, stats) on its own port."""
    from freshrec.serving.gateway import Gateway

    settings: Settings = ctx.obj
    gw = Gateway(settings, port=port, admin_port=admin_port, model_target=model_server, replay=replay)
    with console.status("connecting to the feature store ..."):
        gw.lookup  # noqa: B018 - open the online store now, not on the first request
        try:
            gw.start()
        except (ValueError, OSError) as exc:
            console.print(f"[red]gateway: {exc}[/red]")
            raise typer.Exit(2) from exc
    console.print(
        f"gateway: {gw.url}/v1/rank -> model server {gw.model_target}; admin {gw.admin_url} "
        f"({'token required' if gw.admin_token_required else 'no token'}); canary {gw.canary()}; "
        f"replay {'on' if gw.replay else 'off'}; predictions logged to {gw.predlog.directory}"
    )
    try:
        _wait_for_signal()
    finally:
        gw.stop()


@app.command("predictions")
def predictions(
    ctx: typer.Context,
    tail: int = typer.Option(20, help="Show the last N rows."),
) -> None:
    """Show the prediction log (last rows and counts per arm and model version)."""
    from freshrec.serving.predlog import read_predictions

    settings: Settings = ctx.obj
    frame = read_predictions(settings.predictions_dir)
    if frame.empty:
        console.print(f"no predictions logged under {settings.predictions_dir}")
        raise typer.Exit(0)
    counts = frame.groupby(["arm", "model_version"]).size().rename("rows").reset_index()
    typer.echo(counts.to_string(index=False))
    typer.echo(frame.tail(tail).to_string(index=False))
