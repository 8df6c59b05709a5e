"""Trigger: decide (with cooldown and in-flight dedupe) whether the drift result starts retraining."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output
from kfp.dsl.python_component import PythonComponent


def trigger(
    workdir: str,
    settings_json: str,
    drift_result: Input[Artifact],
    decision: Output[Markdown],
    launcher: str = "record",
) -> NamedTuple("TriggerOutputs", [("retrain", bool), ("run_id", str), ("reason", str)]):
    """Apply the trigger policy to the drift result and launch a continuous-training run if it says so.

    Args:
        workdir: freshrec state directory (the policy's in-flight marker and decision log live under it).
        settings_json: settings as JSON (merged over the defaults; ``triggers`` and ``pipeline`` are used).
        drift_result: the drift check's JSON.
        decision: Markdown with the decision and its reason.
        launcher: ``kfp`` starts the compiled continuous-training pipeline through the KFP API at
            ``pipeline.host``; ``record`` only records the launch (a local caller runs the pipeline when
            ``retrain`` is true: a task's subprocess cannot outlive the task).

    Returns:
        Whether a retraining run was launched, its id, and the reason.
    """
    import json
    import uuid
    from collections import namedtuple

    from freshrec.config import load_settings
    from freshrec.monitoring.drift import DriftResult
    from freshrec.triggers import KfpLauncher, TriggerPolicy

    settings = load_settings(None, **{**json.loads(settings_json or "{}"), "workdir": workdir})

    class RecordingLauncher:
        """A run request the caller fulfils; it is never still running when the next check comes."""

        def launch(self, reason: str) -> str:
            return f"requested-{uuid.uuid4().hex[:12]}"

        def is_running(self, run_id: str) -> bool:
            return False

    if launcher == "kfp":
        from freshrec.pipelines.build import package_path

        chosen = KfpLauncher.from_settings(
            settings.pipeline,
            package_path("continuous_training"),
            params={"workdir": workdir, "settings_json": settings_json},
        )
    elif launcher == "record":
        chosen = RecordingLauncher()
    else:
        raise ValueError(f"launcher {launcher!r} is not 'kfp' or 'record'")
    made = TriggerPolicy(settings.triggers, settings.state_dir).evaluate(
        chosen, drift=DriftResult.load(drift_result.path)
    )
    signals = [f"- {s.kind}: {s.detail}" for s in made.signals] or ["- none"]
    with open(decision.path, "w") as f:
        f.write("\n".join([f"# Trigger: {made.action}", "", made.reason, "", "Signals:", *signals]) + "\n")
    return namedtuple("TriggerOutputs", ["retrain", "run_id", "reason"])(
        made.action == "launch", made.run_id or "", made.reason
    )


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`trigger` in ``image``."""
    return dsl.component(trigger, base_image=image, install_kfp_package=False)
