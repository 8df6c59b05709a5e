"""Bind settings to the pipeline factories, and compile them to YAML.

The factories (``pipelines/<name>/pipeline.py``) take plain values; this is the one place that reads a
:class:`~freshrec.config.Settings` to choose the image, the GPU placement and the shared volume.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from freshrec.config import Settings

PIPELINES: tuple[str, ...] = ("continuous_training", "drift_monitor")
PIPELINES_DIR = Path(__file__).resolve().parent


def check_name(name: str) -> str:
    """``name`` if it is a known pipeline, else a ValueError listing the known ones."""
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(PIPELINES)}")
    return name


def create(name: str, settings: Settings, *, gpu: bool | None = None) -> Callable:
    """The pipeline ``name`` built with the image, GPU and volume from ``settings.pipeline``.

    Args:
        name: one of :data:`PIPELINES`.
        settings: the settings.
        gpu: override: False forces CPU, True requires ``pipeline.gpu_accelerator_type``; None follows it.
    """
    from freshrec.pipelines.common import GpuConfig, VolumeConfig

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
        )
    volume = VolumeConfig(p.pvc_name, p.workdir_mount) if p.pvc_name else None
    module = importlib.import_module(f"freshrec.pipelines.{check_name(name)}.pipeline")
    return module.create_pipeline(image=p.image, gpu=gpu_config, volume=volume)


def package_path(name: str) -> Path:
    """Where the compiled YAML of ``name`` is checked in."""
    return PIPELINES_DIR / check_name(name) / f"{name}.yaml"


def compile_pipeline(pipeline_func: Callable, out: Path) -> Path:
    """Compile to ``out`` atomically (a reader never sees a half-written file)."""
    from kfp import compiler

    from freshrec.io import atomic_path

    with atomic_path(out, suffix=out.suffix) as tmp:
        compiler.Compiler().compile(pipeline_func, str(tmp))
    return out


def compile_all(settings: Settings, out_dir: Path | None = None, *, gpu: bool | None = None) -> list[Path]:
    """Compile every pipeline; by default into its checked-in location."""
    written = []
    for name in PIPELINES:
        out = (out_dir / f"{name}.yaml") if out_dir else package_path(name)
        written.append(compile_pipeline(create(name, settings, gpu=gpu), out))
    return written
