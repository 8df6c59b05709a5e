"""Bind settings to the pipeline factories, and compile them to YAML.

The factories (``pipelines/<name>/pipeline.py``) take plain values; this is the one place that reads a
:class:`~freshrec.config.Settings` to choose the image, the GPU placement and the shared volume.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from freshrec.config import Settings

if TYPE_CHECKING:
    from freshrec.pipelines.common import ClusterPlatform, TaskOptions

PIPELINES: tuple[str, ...] = ("continuous_training", "drift_monitor")
PIPELINES_DIR = Path(__file__).resolve().parent


def check_name(name: str) -> str:
    """``name`` if it is a known pipeline, else a ValueError listing the known ones."""
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(PIPELINES)}")
    return name


def cluster_platform(settings: Settings) -> ClusterPlatform:
    """The layout's mounts, settings ConfigMap and secrets that every stateful task of a cluster run gets."""
    from freshrec.cluster.layout import ARTEFACTS
    from freshrec.pipelines.common import ClusterPlatform, PvcMount

    layout = settings.cluster
    mounts = tuple(
        PvcMount(claim=m.claim, mount_path=m.mount_path, sub_path=m.sub_path)
        for m in layout.mounts(ARTEFACTS)
    )
    return ClusterPlatform(
        workdir=layout.workdir,
        mounts=mounts,
        settings_configmap=layout.settings_configmap,
        settings_keys=tuple(sorted(layout.settings_env())),
        secret_env=((layout.postgres_secret, "password", "PGPASSWORD"),),
        uid=layout.uid,
    )


def task_options(settings: Settings) -> TaskOptions:
    """Per-task resources, retries and caching from ``settings.pipeline``."""
    from freshrec.pipelines.common import TaskOptions

    p = settings.pipeline
    return TaskOptions(
        resources={name: r.model_dump() for name, r in p.resources.items()},
        retries=dict(p.retries),
        retry_backoff_s=p.retry_backoff_s,
        caching=dict(p.caching),
    )


def create(name: str, settings: Settings, *, gpu: bool | None = None) -> Callable:
    """The pipeline ``name`` built with the images, GPU, layout and task options from ``settings``.

    Args:
        name: one of :data:`PIPELINES`.
        settings: the settings.
        gpu: override: False forces CPU, True requires ``pipeline.gpu_accelerator_type``; None follows it.
    """
    from freshrec.pipelines.common import GpuConfig

    p = settings.pipeline
    if gpu and not p.gpu_accelerator_type:
        raise ValueError(
            "a GPU pipeline needs pipeline.gpu_accelerator_type (e.g. nvidia.com/gpu) in the settings"
        )
    gpu_config = None
    if p.gpu_accelerator_type and gpu is not False:
        gpu_config = GpuConfig(
            accelerator_type=p.gpu_accelerator_type,
            limit=p.gpu_limit,
            tolerations=tuple(p.gpu_tolerations),
            node_selector=dict(p.gpu_node_selector),
            image=p.gpu_image,
        )
    platform = cluster_platform(settings) if p.cluster_mounts else None
    module = importlib.import_module(f"freshrec.pipelines.{check_name(name)}.pipeline")
    return module.create_pipeline(
        image=p.image, gpu=gpu_config, platform=platform, options=task_options(settings)
    )


# Compiled variants checked in beside each pipeline: the default (cluster mounts, CPU training) and the
# production one (the settings of pipelines/profiles/production.yaml on top: GPU training, CUDA image).
PROFILES: tuple[str, ...] = ("default", "production")


def profile_settings(settings: Settings, profile: str) -> Settings:
    """``settings`` with the profile's YAML merged over them (``default``: unchanged)."""
    import yaml

    if profile == "default":
        return settings
    if profile not in PROFILES:
        raise ValueError(f"unknown pipeline profile {profile!r}; known: {', '.join(PROFILES)}")
    extra = yaml.safe_load((PIPELINES_DIR / "profiles" / f"{profile}.yaml").read_text()) or {}
    merged = _deep_merge(settings.model_dump(mode="json"), extra)
    return Settings.model_validate(merged)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def package_path(name: str, profile: str = "default") -> Path:
    """Where the compiled YAML of ``name`` (for ``profile``) is checked in."""
    suffix = "" if profile == "default" else f".{profile}"
    return PIPELINES_DIR / check_name(name) / f"{name}{suffix}.yaml"


def cluster_ready(package: Path) -> list[str]:
    """What a compiled package lacks to run in the cluster (empty: nothing): every stateful task must mount
    the layout's claims. ``freshrec pipeline submit`` refuses a package for which this is not empty."""
    import yaml

    docs = [d for d in yaml.safe_load_all(Path(package).read_text()) if d]
    spec = docs[0]
    platform = {}
    for doc in docs[1:]:
        platform = ((doc.get("platforms") or {}).get("kubernetes") or {}).get("deploymentSpec") or {}
    executors = platform.get("executors") or {}
    problems = []
    for comp in (spec.get("components") or {}).values():
        executor = comp.get("executorLabel")
        params = (comp.get("inputDefinitions") or {}).get("parameters") or {}
        if executor and "workdir" in params and not (executors.get(executor) or {}).get("pvcMount"):
            problems.append(f"task {executor.removeprefix('exec-')} mounts no volume at its workdir")
    return sorted(problems)


def compile_pipeline(pipeline_func: Callable, out: Path) -> Path:
    """Compile to ``out`` atomically (a reader never sees a half-written file)."""
    from kfp import compiler

    from freshrec.io import atomic_path

    with atomic_path(out, suffix=out.suffix) as tmp:
        compiler.Compiler().compile(pipeline_func, str(tmp))
    return out


def compile_all(
    settings: Settings,
    out_dir: Path | None = None,
    *,
    gpu: bool | None = None,
    profiles: tuple[str, ...] = PROFILES,
) -> list[Path]:
    """Compile every pipeline for every profile; by default into its checked-in location."""
    written = []
    for profile in profiles:
        prof = profile_settings(settings, profile)
        # Only the training pipeline differs by profile (the GPU); the drift monitor has one variant.
        for name in PIPELINES if profile == "default" else ("continuous_training",):
            path = package_path(name, profile)
            out = (out_dir / path.name) if out_dir else path
            written.append(compile_pipeline(create(name, prof, gpu=gpu), out))
    return written
