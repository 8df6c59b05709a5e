"""The ``freshrec`` command.

Every area of freshrec keeps its commands in its own ``cli.py`` (``freshrec/data/cli.py``,
``freshrec/model/cli.py`` ...), which imports only typer/rich at module level so that
``freshrec --help`` stays fast; heavy imports (TensorFlow, Feast, kfp) happen inside commands.
This module only assembles them.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from pathlib import Path

import typer

app = typer.Typer(
    name="freshrec",
    help="Click-through-rate recommenders that keep learning: data, features, training, drift, serving, canary, online learning.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# (sub-command group, module that defines `app`) — groups: `freshrec data ingest`, ...
GROUPS: dict[str, str] = {
    "data": "freshrec.data.cli",
    "features": "freshrec.features.cli",
    "models": "freshrec.model.cli",
    "drift": "freshrec.monitoring.drift.cli",
    "alerts": "freshrec.monitoring.alerts.cli",
    "serving": "freshrec.serving.cli",
    "rollout": "freshrec.rollout.cli",
    "pipeline": "freshrec.pipelines.cli",
    "cluster": "freshrec.cluster.cli",
}
# (top-level command, module, function) — `freshrec train`, `freshrec serve`, ...
COMMANDS: list[tuple[str, str, str]] = [
    ("run", "freshrec.loop.cli", "run"),
    ("train", "freshrec.model.cli", "train"),
    ("evaluate", "freshrec.model.cli", "evaluate"),
    ("explain", "freshrec.model.explain_cli", "explain"),
    ("serve", "freshrec.serving.cli", "serve"),
    ("online", "freshrec.online.cli", "online"),
    ("rehearse", "freshrec.cluster.rehearsal", "rehearse"),
]


@app.callback()
def _root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML settings file (else $FRESHREC_CONFIG)."
    ),
    workdir: Path | None = typer.Option(None, "--workdir", "-w", help="State directory (default .freshrec)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Load the settings once and hand them to the command through the context."""
    from freshrec.config import load_settings

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Libraries that log every registry refresh or HTTP call at INFO drown the progress lines.
    for noisy in ("feast", "evidently", "urllib3", "absl", "kfp", "litestar"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module="litestar")
    overrides = {"workdir": workdir} if workdir else {}
    ctx.obj = load_settings(config, **overrides)


_registered = False


def _register() -> None:
    """Attach every area's commands (once; tests call it too)."""
    global _registered
    if _registered:
        return
    _registered = True
    for name, module in GROUPS.items():
        try:
            sub = importlib.import_module(module).app
        except ModuleNotFoundError as exc:
            if not (exc.name and module.startswith(exc.name)):
                raise  # a missing dependency inside the module, not a missing module
            continue
        app.add_typer(sub, name=name)
    for name, module, func in COMMANDS:
        try:
            fn = getattr(importlib.import_module(module), func)
        except ModuleNotFoundError as exc:
            if not (exc.name and module.startswith(exc.name)):
                raise  # a missing dependency inside the module, not a missing module
            continue
        app.command(name, **getattr(fn, "command_settings", {}))(fn)


def main() -> None:
    # TensorFlow's C++ start-up lines (CUDA probing on a CPU machine) are noise for a CLI user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _register()
    app()


if __name__ == "__main__":
    main()
