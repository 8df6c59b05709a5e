"""Rollout: take a pushed version live, by canary when a model already serves."""

from kfp import dsl
from kfp.dsl import Markdown, Output
from kfp.dsl.python_component import PythonComponent


def rollout(
    workdir: str, settings_json: str, version: int, report: Output[Markdown], mode: str = "auto"
) -> str:
    """Roll ``version`` out and return the outcome.

    Modes: ``local`` walks the canary plan on the local gateway (``LocalCanaryController``); ``argo`` sets the
    version on the Argo Rollout in the cluster and follows it until it is promoted or aborted (an abort fails
    the task, with the Rollout's message); ``promote`` labels it stable at once; ``none`` leaves the labels
    alone; ``auto`` is ``argo`` when ``settings.environment`` is ``cluster``, else ``local`` when the gateway
    answers, else ``none``. Outside argo mode the first version of a model (no stable one yet) is labelled
    stable: there is nothing to canary against. Whenever a version becomes stable, its training frame becomes
    the drift monitor's reference (``references/<model>/stable.parquet``).

    Args:
        workdir: freshrec state directory (the model repository and its labels).
        settings_json: settings as JSON (merged over the defaults; ``rollout``, ``serving``, ``pipeline``).
        version: the version the push step published.
        report: Markdown with the outcome and the rollout timeline.
        mode: ``auto`` | ``local`` | ``argo`` | ``promote`` | ``none``.

    Returns:
        ``promoted``, ``rolled_back`` or ``pending`` (labels untouched).

    Raises:
        RuntimeError: argo mode and the Rollout was aborted (the stable version keeps serving).
    """
    import json
    import socket

    from freshrec.config import load_settings
    from freshrec.model.references import ReferenceStore
    from freshrec.model.repository import ModelRepository

    settings = load_settings(None, **{**json.loads(settings_json or "{}"), "workdir": workdir})
    modes = ("auto", "local", "argo", "promote", "none")
    if mode not in modes:
        raise ValueError(f"rollout mode {mode!r} is not one of {modes}")
    repo = ModelRepository(settings.models_dir, settings.model.name)
    references = ReferenceStore(settings.references_dir, settings.model.name)
    stable = repo.stable()
    gateway = (settings.serving.host, settings.serving.gateway_port)
    if mode == "auto":
        if settings.environment == "cluster":
            mode = "argo"
        elif stable is not None:
            with socket.socket() as probe:
                probe.settimeout(1.0)
                mode = "local" if probe.connect_ex(gateway) == 0 else "none"
    timeline: list[str] = []

    def make_stable(why: str) -> None:
        repo.set_label("stable", version)
        reference = references.promote(version)
        timeline.append(f"v{version} labelled stable ({why}); drift reference: {reference or 'none written'}")

    failure = None
    if mode == "none":
        outcome = "pending"
        timeline.append(f"labels untouched: v{version} waits for a rollout (stable is v{stable})")
    elif mode == "argo":
        from freshrec.rollout.k8s import ArgoRolloutDriver, RolloutTimeout, make_api_client

        rs = settings.rollout
        driver = ArgoRolloutDriver(make_api_client(), rs.namespace, rs.rollout_name)
        where = f"Argo Rollout {rs.namespace}/{rs.rollout_name}"
        timeline.append(f"{where}: model version {version} set")

        def seen(st) -> None:  # type: ignore[no-untyped-def]
            line = f"{st.phase}: step {st.current_step_index}/{st.steps}, analysis {st.analysis_status} {st.message}"
            timeline.append(line.rstrip())
            print(f"{where}: {line}", flush=True)

        try:
            done, status = driver.deploy_and_wait(
                version,
                timeout_s=settings.pipeline.rollout_timeout_s,
                poll_s=settings.pipeline.rollout_poll_s,
                on_status=seen,
            )
        except RolloutTimeout as exc:
            done, status, failure = "aborted", None, f"{exc} (the canary was aborted)"
        if done == "promoted":
            outcome = "promoted"
            make_stable("promoted by Argo Rollouts")
        else:
            outcome = "rolled_back"
            failure = failure or f"{where} aborted v{version}: {status.message if status else ''}".rstrip(
                ": "
            )
            timeline.append(failure)
    elif stable is None or mode == "promote":
        outcome = "promoted"
        make_stable("first version" if stable is None else "promote mode")
    else:
        # The same wiring as `freshrec rollout run` (it waits for the model server to load the canary).
        from freshrec.rollout.controller import local_controller

        controller = local_controller(settings)
        done = controller.run(version)
        outcome = done.outcome
        timeline += [f"{e.action} (weight {e.weight}): {'; '.join(e.reasons)}" for e in done.timeline]
        if outcome == "promoted":
            references.promote(version)
    with open(report.path, "w") as f:
        f.write(
            f"# Rollout of v{version}: {outcome}\n\n" + "\n".join(f"- {line}" for line in timeline) + "\n"
        )
    if failure:
        raise RuntimeError(failure)
    return outcome


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`rollout` in ``image``."""
    return dsl.component(rollout, base_image=image, install_kfp_package=False)
