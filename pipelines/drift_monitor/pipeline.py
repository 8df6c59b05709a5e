"""The drift-monitor pipeline as a pure factory: drift on the recent window → alert → trigger retraining.

Meant to run on a schedule (``freshrec pipeline submit --pipeline drift_monitor --recurring CRON``).

Caching is off for every step: the drift check reads "now" windows of a moving event log, and alert and
trigger act on outside state (open alerts, the trigger's cooldown and in-flight run).
"""

from collections.abc import Callable

from freshrec.components.alert import component as alert
from freshrec.components.drift_check import component as drift_check
from freshrec.components.trigger import component as trigger
from freshrec.pipelines.common import DEFAULT_WORKDIR, ClusterPlatform, GpuConfig, TaskOptions, on_cluster

NAME = "freshrec-drift-monitor"


def create_pipeline(
    image: str,
    gpu: GpuConfig | None = None,
    platform: ClusterPlatform | None = None,
    options: TaskOptions | None = None,
    name: str = NAME,
) -> Callable:
    """Build the pipeline.

    Args:
        image: the component image (``docker/Dockerfile``).
        gpu: unused (no step needs a GPU); accepted so that every factory has the same signature.
        platform: the cluster layout's mounts, settings ConfigMap and secrets; None for local-only runs.
        options: per-task resources, retries and caching overrides.
        name: the pipeline name.
    """
    from kfp import dsl

    check_op, alert_op, trigger_op = (
        drift_check.component(image),
        alert.component(image),
        trigger.component(image),
    )
    default_workdir = platform.workdir if platform else DEFAULT_WORKDIR
    opts = options or TaskOptions()

    @dsl.pipeline(
        name=name, description="Check drift on the recent window, alert on-call, trigger retraining."
    )
    def drift_monitor(
        workdir: str = default_workdir,
        settings_json: str = "{}",
        window_hours: float = 24.0,
        reference_hours: float = 168.0,
        now: str = "",
        launcher: str = "kfp",
    ) -> None:
        """Args: workdir (shared state), settings_json (settings overrides as JSON), window_hours and
        reference_hours (the two windows), now (end of the recent window, ISO 8601; empty: the newest event),
        launcher (kfp: start a continuous-training run through the KFP API; record: only record it)."""
        state = {"workdir": workdir, "settings_json": settings_json}
        checked = check_op(**state, window_hours=window_hours, reference_hours=reference_hours, now=now)
        alerted = alert_op(**state, drift_result=checked.outputs["result"])
        triggered = trigger_op(**state, drift_result=checked.outputs["result"], launcher=launcher).after(
            alerted
        )
        for task_name, task in (("drift_check", checked), ("alert", alerted), ("trigger", triggered)):
            opts.apply(task_name, task, cache=False)
            on_cluster(task, platform)

    return drift_monitor
