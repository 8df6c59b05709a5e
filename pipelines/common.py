"""Task options shared by the pipeline factories: GPU placement, the cluster layout's mounts and identity,
and per-task resources, retries and caching.

The factories take these as plain values (frozen dataclasses); :mod:`freshrec.pipelines.build` is the one
place that derives them from :class:`~freshrec.config.Settings` (and its cluster layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Where a cluster run mounts its artefacts (the cluster layout's workdir) and the pipelines' default workdir.
DEFAULT_WORKDIR = "/var/lib/freshrec"


@dataclass(frozen=True)
class GpuConfig:
    """Kubernetes placement of the training step on a GPU node.

    Attributes:
        accelerator_type: the accelerator resource/type, e.g. ``nvidia.com/gpu`` or ``NVIDIA_TESLA_T4``.
        limit: how many accelerators the train task asks for.
        tolerations: Kubernetes tolerations (``key``, ``operator``, ``value``, ``effect``,
            ``toleration_seconds``) for tainted GPU nodes.
        node_selector: node labels the train task must land on.
        image: the CUDA variant of the component image the train task runs (None: the CPU image).
    """

    accelerator_type: str
    limit: int = 1
    tolerations: tuple[dict[str, Any], ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    image: str | None = None


@dataclass(frozen=True)
class PvcMount:
    """One claim (and subPath) mounted at ``mount_path`` in a task."""

    claim: str
    mount_path: str
    sub_path: str = ""


@dataclass(frozen=True)
class ClusterPlatform:
    """What a stateful task needs in the cluster: its artefacts' mounts, the settings ConfigMap, secrets.

    Attributes:
        workdir: where the artefacts are mounted (the pipeline's default ``workdir`` parameter).
        mounts: the artefacts' claims, subPaths and mount paths (from the cluster layout).
        settings_configmap: ConfigMap whose keys become environment variables of the same name.
        settings_keys: the keys of that ConfigMap.
        secret_env: ``(secret, key, env var)`` triples (e.g. the PostgreSQL password as ``PGPASSWORD``).
        uid: the user and group the task's container runs as (the claims are group-writable for it).
    """

    workdir: str
    mounts: tuple[PvcMount, ...]
    settings_configmap: str
    settings_keys: tuple[str, ...]
    secret_env: tuple[tuple[str, str, str], ...] = ()
    uid: int = 1000


@dataclass(frozen=True)
class TaskOptions:
    """Resources, retries and caching of each task, by component name (``default`` for the rest).

    Attributes:
        resources: name -> {cpu_request, memory_request, cpu_limit, memory_limit} (None values unset).
        retries: name -> number of retries.
        retry_backoff_s: the first retry's delay (doubling after each).
        caching: name -> caching on/off, overriding the pipeline's own choice.
    """

    resources: dict[str, dict[str, str | None]] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    retry_backoff_s: float = 60.0
    caching: dict[str, bool] = field(default_factory=dict)

    def apply(self, name: str, task: Any, cache: bool) -> Any:
        """Set ``task``'s resources, retries and caching (``cache`` unless the options override it)."""
        res = self.resources.get(name) or self.resources.get("default") or {}
        for key, setter in (
            ("cpu_request", task.set_cpu_request),
            ("memory_request", task.set_memory_request),
            ("cpu_limit", task.set_cpu_limit),
            ("memory_limit", task.set_memory_limit),
        ):
            if res.get(key):
                setter(res[key])
        retries = self.retries.get(name, self.retries.get("default", 0))
        if retries > 0:
            task.set_retry(
                num_retries=retries, backoff_duration=f"{int(self.retry_backoff_s)}s", backoff_factor=2.0
            )
        task.set_caching_options(self.caching.get(name, cache))
        return task


_TOLERATION_KEYS = {"key", "operator", "value", "effect", "toleration_seconds"}


def place_on_gpu(task: Any, gpu: GpuConfig | None) -> Any:
    """Ask for accelerators, tolerate the GPU taints and select GPU nodes; CPU (no change) when ``gpu`` is None."""
    if gpu is None:
        return task
    from kfp import kubernetes

    task.set_accelerator_type(gpu.accelerator_type).set_accelerator_limit(gpu.limit)
    for toleration in gpu.tolerations:
        unknown = set(toleration) - _TOLERATION_KEYS
        if unknown:
            raise ValueError(
                f"toleration {toleration} has unknown keys {sorted(unknown)}; allowed: {sorted(_TOLERATION_KEYS)}"
            )
        kubernetes.add_toleration(task, **toleration)
    for label, value in sorted(gpu.node_selector.items()):
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    return task


def on_cluster(task: Any, platform: ClusterPlatform | None) -> Any:
    """Mount the artefacts, pass the settings ConfigMap and secrets, run as the image's user.

    No change when ``platform`` is None. kfp.local ignores all of it, so one compiled YAML serves both.
    """
    if platform is None:
        return task
    from kfp import kubernetes

    for m in platform.mounts:
        kubernetes.mount_pvc(task, pvc_name=m.claim, mount_path=m.mount_path, sub_path=m.sub_path)
    if platform.settings_keys:
        kubernetes.use_config_map_as_env(
            task, platform.settings_configmap, {k: k for k in platform.settings_keys}
        )
    secrets: dict[str, dict[str, str]] = {}
    for secret, key, env in platform.secret_env:
        secrets.setdefault(secret, {})[key] = env
    for secret, mapping in secrets.items():
        kubernetes.use_secret_as_env(task, secret, mapping)
    # kfp-kubernetes cannot set fsGroup: the claims are made group-writable for this gid by the pods that
    # can (the feast-apply Job mounts every claim with fsGroup), and the task runs with that group.
    kubernetes.set_security_context(
        task, run_as_user=platform.uid, run_as_group=platform.uid, run_as_non_root=True
    )
    return task
