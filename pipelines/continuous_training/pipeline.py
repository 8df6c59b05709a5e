"""The continuous-training pipeline as a pure factory.

ingest → features (Feast apply + materialize) → training set (point-in-time, split by time) → train (warm
start from production) → evaluate + bless against production, and data quality + drift of the newest window
against the training window → push gate (blessed and data ok) → infra check → push → canary rollout.

Caching. Steps whose output is a function of their inputs alone keep KFP caching on: training set, data
quality, push gate, infra check. It is off for the steps that read or write state outside their inputs:
ingest (reads the moving event log), features (writes the online store), train (warm-starts from whatever
version is in production now), evaluate (compares with that production version), push (adds a version) and
rollout (moves live traffic).
"""

from collections.abc import Callable

from freshrec.components.data_quality import component as data_quality
from freshrec.components.evaluate import component as evaluate
from freshrec.components.features import component as features
from freshrec.components.infra_check import component as infra_check
from freshrec.components.ingest import component as ingest
from freshrec.components.push import component as push
from freshrec.components.push_gate import component as push_gate
from freshrec.components.rollout import component as rollout
from freshrec.components.train import component as train
from freshrec.components.training_set import component as training_set
from freshrec.pipelines.common import (
    DEFAULT_WORKDIR,
    ClusterPlatform,
    GpuConfig,
    TaskOptions,
    on_cluster,
    place_on_gpu,
)

NAME = "freshrec-continuous-training"


def create_pipeline(
    image: str,
    gpu: GpuConfig | None = None,
    platform: ClusterPlatform | None = None,
    options: TaskOptions | None = None,
    name: str = NAME,
) -> Callable:
    """Build the pipeline.

    Args:
        image: the component image (``docker/Dockerfile``: freshrec installed).
        gpu: GPU placement for the train step (and its CUDA image); None trains on CPU.
        platform: the cluster layout's mounts, settings ConfigMap and secrets for every stateful task;
            None for a pipeline that only runs locally.
        options: per-task resources, retries and caching overrides.
        name: the pipeline name.

    Returns:
        The ``@dsl.pipeline`` function (compile it, run it with kfp.local, or submit it).
    """
    from kfp import dsl

    comps = {
        "ingest": ingest.component(image),
        "features": features.component(image),
        "training_set": training_set.component(image),
        "train": train.component(gpu.image if gpu and gpu.image else image),
        "evaluate": evaluate.component(image),
        "data_quality": data_quality.component(image),
        "push_gate": push_gate.component(image),
        "infra_check": infra_check.component(image),
        "push": push.component(image),
        "rollout": rollout.component(image),
    }
    default_workdir = platform.workdir if platform else DEFAULT_WORKDIR
    opts = options or TaskOptions()

    @dsl.pipeline(
        name=name, description="Ingest, train, evaluate and bless, gate, push and canary a CTR model."
    )
    def continuous_training(
        workdir: str = default_workdir,
        settings_json: str = "{}",
        dataset: str = "",
        source_path: str = "",
        epochs: int = 0,
        rollout_mode: str = "auto",
    ) -> None:
        """Args: workdir (shared state), settings_json (settings overrides as JSON), dataset (a dataset to
        prepare; empty: the configured one, on first run), source_path (an event file to ingest), epochs
        (> 0 overrides training.epochs), rollout_mode (auto | local | argo | promote | none)."""
        state = {"workdir": workdir, "settings_json": settings_json}
        ingested = comps["ingest"](**state, dataset=dataset, source_path=source_path)
        featured = comps["features"](**state, events=ingested.outputs["events"])
        splits = comps["training_set"](**state, events=ingested.outputs["events"]).after(featured)
        trained = comps["train"](
            **state,
            train_set=splits.outputs["train_set"],
            valid_set=splits.outputs["valid_set"],
            epochs=epochs,
        )
        place_on_gpu(trained, gpu)
        evaluated = comps["evaluate"](
            **state,
            model=trained.outputs["model"],
            train_set=splits.outputs["train_set"],
            test_set=splits.outputs["test_set"],
        )
        quality = comps["data_quality"](
            **state, reference=splits.outputs["train_set"], current=splits.outputs["test_set"]
        )
        gate = comps["push_gate"](
            blessed=evaluated.outputs["blessed"],
            data_ok=quality.outputs["data_ok"],
            verdict=quality.outputs["verdict"],
        )
        with dsl.If(gate.outputs["Output"] == True, name="blessed-and-data-ok"):  # noqa: E712 (a KFP condition)
            checked = comps["infra_check"](model=trained.outputs["model"], sample=splits.outputs["test_set"])
            pushed = comps["push"](
                **state,
                model=trained.outputs["model"],
                blessing=evaluated.outputs["blessing"],
                train_set=splits.outputs["train_set"],
                infra_ok=checked.outputs["Output"],
            )
            rolled = comps["rollout"](**state, version=pushed.outputs["Output"], mode=rollout_mode)
        # Caching: only steps whose output is a function of their inputs alone (see the module docstring).
        tasks = {
            "ingest": (ingested, False, True),
            "features": (featured, False, True),
            "training_set": (splits, True, True),
            "train": (trained, False, True),
            "evaluate": (evaluated, False, True),
            "data_quality": (quality, True, True),
            "push_gate": (gate, True, False),
            "infra_check": (checked, True, False),
            "push": (pushed, False, True),
            "rollout": (rolled, False, True),
        }
        for task_name, (task, cache, stateful) in tasks.items():
            opts.apply(task_name, task, cache)
            if stateful:
                on_cluster(task, platform)

    return continuous_training
