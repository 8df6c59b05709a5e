"""Rollout: take a pushed version live, by canary when a model already serves."""

from kfp import dsl
from kfp.dsl import Markdown, Output
from kfp.dsl.python_component import PythonComponent


def rollout(
    workdir: str, settings_json: str, version: int, report: Output[Markdown], mode: str = "auto"
) -> str:
    """Roll ``version`` out and return the outcome.

    Modes: ``local`` walks the canary plan on the local gateway (``LocalCanaryController``); ``argo`` hands
    the version to the Argo Rollout in the cluster; ``promote`` labels it stable at once; ``none`` leaves
    the labels alone; ``auto`` is ``local`` when the gateway answers, else ``none``. In every mode but ``none``
    the first version of a model (no stable one yet) is labelled stable: there is nothing to canary against.

    Args:
        workdir: freshrec state directory (the model repository and its labels).
        settings_json: settings as JSON (merged over the defaults; ``rollout`` and ``serving`` are used).
        version: the version the push step published.
        report: Markdown with the outcome and the rollout timeline.
        mode: ``auto`` | ``local`` | ``argo`` | ``promote`` | ``none``.

    Returns:
        ``promoted``, ``rolled_back``, ``started`` (argo) or ``pending`` (labels untouched).
    """
    import json
    import socket
    from datetime import UTC, datetime

    from freshrec.config import load_settings
    from freshrec.model.repository import ModelRepository

    settings = load_settings(None, **{**json.loads(settings_json or "{}"), "workdir": workdir})
    modes = ("auto", "local", "argo", "promote", "none")
    if mode not in modes:
        raise ValueError(f"rollout mode {mode!r} is not one of {modes}")
    repo = ModelRepository(settings.models_dir, settings.model.name)
    stable = repo.stable()
    gateway = (settings.serving.host, settings.serving.gateway_port)
    if mode == "auto" and stable is not None:
        with socket.socket() as probe:
            probe.settimeout(1.0)
            mode = "local" if probe.connect_ex(gateway) == 0 else "none"
    timeline: list[str] = []
    if mode == "none":
        outcome = "pending"
        timeline.append(f"labels untouched: v{version} waits for a rollout (stable is v{stable})")
    elif stable is None or mode in ("promote", "auto"):
        repo.set_label("stable", version)
        outcome = "promoted"
        timeline.append(
            f"v{version} labelled stable ({'first version' if stable is None else 'promote mode'})"
        )
    elif mode == "argo":
        from freshrec.rollout.k8s import ArgoRolloutDriver, make_api_client

        driver = ArgoRolloutDriver(
            make_api_client(), settings.rollout.namespace, settings.rollout.rollout_name
        )
        status = driver.deploy(version)
        outcome = "started"
        timeline.append(
            f"Argo Rollout {settings.rollout.namespace}/{settings.rollout.rollout_name}: {status}"
        )
    else:
        from freshrec.rollout.controller import (
            HttpTrafficRouter,
            LocalCanaryController,
            PredictionLogSource,
            RepositoryPromoter,
        )
        from freshrec.rollout.plan import load_plan

        controller = LocalCanaryController(
            load_plan(settings.rollout.plan_file),
            HttpTrafficRouter(
                f"http://{settings.serving.gateway_admin_host}:{settings.serving.gateway_admin_port}",
                token=settings.serving.admin_token(),
            ),
            RepositoryPromoter(repo),
            PredictionLogSource(
                settings.predictions_dir,
                settings.eventlog_dir,
                settings.rollout.click_window_s,
                since=datetime.now(UTC),
            ),
            settings.rollout,
            report_dir=settings.reports_dir / "rollout",
        )
        done = controller.run(version)
        outcome = done.outcome
        timeline += [f"{e.action} (weight {e.weight}): {'; '.join(e.reasons)}" for e in done.timeline]
    with open(report.path, "w") as f:
        f.write(
            f"# Rollout of v{version}: {outcome}\n\n" + "\n".join(f"- {line}" for line in timeline) + "\n"
        )
    return outcome


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`rollout` in ``image``."""
    return dsl.component(rollout, base_image=image, install_kfp_package=False)
