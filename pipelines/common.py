"""Task options shared by the pipeline factories: GPU placement and the shared workdir volume."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Where a cluster run mounts the shared state volume (and the pipelines' default workdir).
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
    """

    accelerator_type: str
    limit: int = 1
    tolerations: tuple[dict[str, Any], ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VolumeConfig:
    """A PersistentVolumeClaim mounted into every task at the workdir (the cluster's shared state)."""

    pvc_name: str
    mount_path: str = DEFAULT_WORKDIR


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


def mount_workdir(task: Any, volume: VolumeConfig | None) -> Any:
    """Mount the shared state volume into ``task`` (no change when ``volume`` is None, as in local runs)."""
    if volume is None:
        return task
    from kfp import kubernetes

    kubernetes.mount_pvc(task, pvc_name=volume.pvc_name, mount_path=volume.mount_path)
    return task
