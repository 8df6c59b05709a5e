"""Run a pipeline on this machine with kfp.local (SubprocessRunner, in the current environment).

Every task runs as a subprocess of this Python; its artifacts land under ``<workdir>/kfp/<run>/<task>/``.
The settings travel into the tasks as a JSON parameter, so the tasks see exactly the caller's settings.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freshrec.config import Settings

log = logging.getLogger(__name__)


@dataclass
class TaskResult:
    """What one task of a local run produced."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class LocalRun:
    """The outcome of :func:`run_local`: where everything is, and the values the tasks returned."""

    pipeline: str
    run_dir: Path
    duration_s: float
    tasks: dict[str, TaskResult]

    def output(self, task: str, name: str = "Output", default: Any = None) -> Any:
        """A parameter a task returned (``Output`` for a single return value); ``default`` if it did not run."""
        result = self.tasks.get(task)
        return default if result is None else result.parameters.get(name, default)

    @property
    def pushed_version(self) -> int | None:
        """The version the push step published, or None when the gates stopped the run."""
        version = self.output("push")
        return None if version is None else int(version)

    def artifact_paths(self) -> list[tuple[str, str, Path]]:
        """(task, output, path) for every artifact, in task order."""
        return [(t, name, path) for t, r in self.tasks.items() for name, path in sorted(r.artifacts.items())]


def pipeline_arguments(settings: Settings, pipeline: str, **params: Any) -> dict[str, Any]:
    """The pipeline's arguments for these settings: workdir and settings JSON with absolute paths."""
    # Only what differs from the defaults: the tasks rebuild the rest the same way, and the run's
    # parameters stay readable in logs and the KFP UI.
    data = settings.model_dump(mode="json", exclude_defaults=True)
    workdir = settings.workdir.resolve()
    # Paths in the settings are relative to the caller's directory; tasks may run elsewhere.
    data.setdefault("data", {})["datasets_dir"] = str(Path(settings.data.datasets_dir).resolve())
    data.setdefault("features", {})["repo_dir"] = str(Path(settings.features.repo_dir).resolve())
    if settings.rollout.plan_file:
        data.setdefault("rollout", {})["plan_file"] = str(Path(settings.rollout.plan_file).resolve())
    data.pop("workdir", None)
    if params.get("dataset"):
        # The dataset prepared by this run is the one every step describes (feature spec, drift columns).
        data["data"]["dataset"] = str(params["dataset"])
    args: dict[str, Any] = {"workdir": str(workdir), "settings_json": json.dumps(data, sort_keys=True)}
    if pipeline == "continuous_training":
        args["rollout_mode"] = settings.pipeline.rollout_mode
    else:
        # A task cannot start a run that outlives it: locally the caller acts on the trigger's `retrain`.
        args["launcher"] = "record"
    args.update({k: v for k, v in params.items() if v is not None})
    return args


def _shadowing_docker_folder() -> bool:
    """Whether ``import docker`` would find a plain folder (this repo's ``docker/``) instead of the SDK.

    kfp.local imports the optional ``docker`` SDK and falls back to the subprocess runner only on
    ImportError. When the repository root is on ``sys.path`` (pytest's rootdir, ``python -m`` from the repo),
    the ``docker/`` folder that holds the Dockerfile imports as an empty namespace package and kfp.local
    fails with AttributeError instead.
    """
    import importlib.util
    import sys

    if "docker" in sys.modules:
        return getattr(sys.modules["docker"], "__file__", None) is None and sys.modules["docker"] is not None
    spec = importlib.util.find_spec("docker")
    return spec is not None and spec.origin in (None, "namespace")


def run_local(settings: Settings, pipeline: str = "continuous_training", **params: Any) -> LocalRun:
    """Run ``pipeline`` through kfp.local and collect its outputs.

    Args:
        settings: the settings (workdir, data, model ...); handed to every task.
        pipeline: ``continuous_training`` or ``drift_monitor``.
        **params: pipeline parameters, e.g. ``epochs=1``, ``dataset="synthetic"``, ``source_path=...``.

    Returns:
        A :class:`LocalRun` with the run directory, the duration and each task's outputs.

    Raises:
        RuntimeError: a task failed (kfp.local names it; its log was streamed to stdout).
    """
    import sys

    if _shadowing_docker_folder():
        sys.modules["docker"] = None  # type: ignore[assignment]  # makes `import docker` an ImportError
    from kfp import local

    from freshrec.pipelines.build import check_name, create

    check_name(pipeline)
    args = pipeline_arguments(settings, pipeline, **params)
    pipeline_root = Path(args["workdir"]) / "kfp"
    pipeline_root.mkdir(parents=True, exist_ok=True)
    # CPU only here: the GPU placement is for cluster runs, kfp.local ignores it anyway.
    func = create(pipeline, settings, gpu=False)
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True
    )
    before = set(pipeline_root.iterdir())
    start = time.perf_counter()
    with warnings.catch_warnings():
        # The image name has no "python" in it; the subprocess runner warns about that, harmlessly here.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        func(**args)
    duration = time.perf_counter() - start
    new = sorted(
        (p for p in pipeline_root.iterdir() if p not in before and p.is_dir()),
        key=lambda p: p.stat().st_mtime,
    )
    if not new:
        raise RuntimeError(f"kfp.local wrote no run directory under {pipeline_root}")
    run_dir = new[-1]
    return LocalRun(pipeline=pipeline, run_dir=run_dir, duration_s=duration, tasks=collect_tasks(run_dir))


def collect_tasks(run_dir: Path) -> dict[str, TaskResult]:
    """Read each task's ``executor_output.json`` (written by the KFP executor) under ``run_dir``."""
    tasks: dict[str, TaskResult] = {}
    for out_file in sorted(run_dir.rglob("executor_output.json"), key=lambda p: p.stat().st_mtime):
        task_dir = out_file.parent
        data = json.loads(out_file.read_text())
        result = TaskResult(name=task_dir.name, parameters=dict(data.get("parameterValues", {})))
        for name, value in data.get("artifacts", {}).items():
            for artifact in value.get("artifacts", []):
                result.artifacts[name] = Path(artifact["uri"])
                result.metadata[name] = dict(artifact.get("metadata", {}))
        # Outputs the executor did not list (none today) still show up if they were written.
        for child in task_dir.iterdir():
            if child.name != "executor_output.json" and child.name not in result.artifacts:
                result.artifacts[child.name] = child
        tasks[task_dir.name] = result
    return tasks
