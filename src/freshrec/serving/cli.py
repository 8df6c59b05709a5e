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
    """Serve the model repository with TF Serving's REST and gRPC APIs until Ctrl-C / SIGTERM.

    Also takes tensorflow_model_server's own flags instead (--port=8500 --rest_api_port=8501
    --model_config_file=... --enable_batching --batching_parameters_file=... --enable_model_warmup
    --monitoring_config_file=...), with the binary's meanings: a Rollout's container args run unchanged.
    """
    from freshrec.serving.server import ModelServer
    from freshrec.serving.tfs_flags import FlagError, looks_like_tfs_flags, parse_tfs_flags

    settings: Settings = ctx.obj
    if ctx.args or looks_like_tfs_flags(ctx.args):
        if rest_port is not None or grpc_port is not None or host or model_name:
            console.print(
                "[red]use either tensorflow_model_server's flags or --rest-port/--grpc-port/--host[/red]"
            )
            raise typer.Exit(2)
        try:
            flags = parse_tfs_flags(list(ctx.args))
            if flags.version:
                typer.echo("TensorFlow ModelServer: freshrec serve (TF-Serving-compatible)")
                return
            server = ModelServer.from_tfs_flags(settings, flags)
        except (FlagError, ValueError) as exc:
            typer.echo(f"Failed to start server. Error: {exc}", err=True)
            raise typer.Exit(1) from exc
        for name, value in sorted(flags.ignored.items()):
            console.print(f"--{name}={value}: accepted, no effect on this server (a tuning knob)")
    else:
        if host:
            settings.serving.host = host
        server = ModelServer(settings, rest_port=rest_port, grpc_port=grpc_port, model_name=model_name)
    with console.status("loading models ..."):
        server.start()
    loaded = {n: sorted(v.servables) for n, v in server.manager.views().items()}
    source = server.manager.config_file or server.manager.models_dir
    console.print(
        f"model server: REST {server.rest_url if server._http else '-'}  "
        f"gRPC {server.grpc_target if server._grpc else '-'}  models {loaded}  "
        f"(config {source}, versions polled every {server.manager.poll_interval_s:g}s; "
        f"batching {'on' if server.scheduler else 'off'})"
    )
    try:
        _wait_for_signal()
    finally:
        console.print("stopping: finishing in-flight requests ...")
        server.stop()


# `freshrec serve` passes unknown options through to tensorflow_model_server's flag parser (cli.py reads this).
serve.command_settings = {"context_settings": {"allow_extra_args": True, "ignore_unknown_options": True}}  # type: ignore[attr-defined]


@app.command("gateway")
def gateway(
    ctx: typer.Context,
    port: int | None = typer.Option(None, help="Gateway port (default serving.gateway_port, 8080)."),
    model_server: str | None = typer.Option(
        None, help="Model server gRPC target host:port (default serving.host:serving.grpc_port)."
    ),
) -> None:
    """Run the ranking gateway: POST /v1/rank, PUT /v1/admin/canary, GET /v1/admin/stats."""
    from freshrec.serving.gateway import Gateway

    settings: Settings = ctx.obj
    gw = Gateway(settings, port=port, model_target=model_server)
    with console.status("connecting to the feature store ..."):
        gw.lookup  # noqa: B018 - open the online store now, not on the first request
        gw.start()
    console.print(
        f"gateway: {gw.url}/v1/rank -> model server {gw.model_target}; canary {gw.canary()}; "
        f"predictions logged to {gw.predlog.directory}"
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
