"""The compiled YAML beside each pipeline matches the code (as kubeflow/pipelines' pipeline_compilation_test
does: recompile, neutralise volatile keys, compare), and the GPU placement reaches the platform spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from freshrec.config import load_settings

VOLATILE = "<volatile>"


def normalise(node: Any) -> Any:
    """Drop what changes without the pipeline changing: SDK version, image tag, install lines."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "sdkVersion":
                continue
            if key == "image":
                out[key] = VOLATILE
            elif key == "command" and isinstance(value, list):
                out[key] = [
                    VOLATILE if isinstance(v, str) and "pip install" in v else normalise(v) for v in value
                ]
            else:
                out[key] = normalise(value)
        return out
    if isinstance(node, list):
        return [normalise(v) for v in node]
    return node


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def compile_to(name: str, settings, tmp_path: Path, gpu: bool | None = None) -> list[dict[str, Any]]:
    from freshrec.pipelines.build import compile_pipeline, create

    out = compile_pipeline(create(name, settings, gpu=gpu), tmp_path / f"{name}.yaml")
    return load_docs(out)


@pytest.fixture
def default_settings(tmp_path):
    # Explicit pipeline defaults so that a FRESHREC_PIPELINE__* variable in the shell cannot change the golden.
    from freshrec.config import PipelineSettings

    return load_settings(workdir=tmp_path / "work", pipeline=PipelineSettings().model_dump())


@pytest.mark.parametrize("name", ["continuous_training", "drift_monitor"])
def test_checked_in_yaml_matches_the_code(name, default_settings, tmp_path):
    from freshrec.pipelines.build import package_path

    golden = package_path(name)
    assert golden.is_file(), f"{golden} is missing: run `make compile`"
    fresh = compile_to(name, default_settings, tmp_path)
    assert normalise(fresh) == normalise(load_docs(golden)), f"{golden} is stale: run `make compile`"


def test_normalise_ignores_only_volatile_keys():
    doc = {
        "sdkVersion": "kfp-2.17.3",
        "deploymentSpec": {"image": "a:1", "command": ["sh", "pip install kfp"]},
    }
    same = {
        "sdkVersion": "kfp-9",
        "deploymentSpec": {"image": "b:2", "command": ["sh", "pip install kfp==9"]},
    }
    changed = {
        "sdkVersion": "kfp-9",
        "deploymentSpec": {"image": "b:2", "command": ["bash", "pip install kfp"]},
    }
    assert normalise(doc) == normalise(same)
    assert normalise(doc) != normalise(changed)


def test_checked_in_continuous_training_is_cpu_and_uses_the_configured_image(default_settings):
    from freshrec.pipelines.build import package_path

    docs = load_docs(package_path("continuous_training"))
    spec = docs[0]
    assert len(docs) == 1, "the CPU default has no Kubernetes platform spec"
    executors = spec["deploymentSpec"]["executors"]
    assert {"exec-ingest", "exec-train", "exec-evaluate", "exec-push", "exec-rollout"} <= set(executors)
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == default_settings.pipeline.image
        assert "accelerator" not in container.get("resources", {})


def test_gpu_settings_reach_the_train_task_only(tmp_path):
    settings = load_settings(
        workdir=tmp_path / "work",
        pipeline={
            "image": "registry.example/freshrec:gpu",
            "gpu_accelerator_type": "nvidia.com/gpu",
            "gpu_limit": 2,
            "gpu_tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "gpu_node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        },
    )
    spec, platform = compile_to("continuous_training", settings, tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    accelerator = executors["exec-train"]["container"]["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu"
    assert str(accelerator["resourceCount"]) == "2"
    others = [
        n
        for n, e in executors.items()
        if n != "exec-train" and "accelerator" in e["container"].get("resources", {})
    ]
    assert others == []
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == {"exec-train"}
    train = k8s["exec-train"]
    assert train["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_gpu_flag_without_an_accelerator_type_is_a_clear_error(default_settings):
    from freshrec.pipelines.build import create

    with pytest.raises(ValueError, match="gpu_accelerator_type"):
        create("continuous_training", default_settings, gpu=True)


def test_a_pvc_is_mounted_at_the_workdir_of_every_stateful_task(tmp_path):
    settings = load_settings(
        workdir=tmp_path / "work", pipeline={"pvc_name": "freshrec-state", "workdir_mount": "/mnt/state"}
    )
    spec, platform = compile_to("continuous_training", settings, tmp_path)
    assert spec["root"]["inputDefinitions"]["parameters"]["workdir"]["defaultValue"] == "/mnt/state"
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task in ("exec-ingest", "exec-features", "exec-train", "exec-evaluate", "exec-push", "exec-rollout"):
        assert mounts[task]["pvcMount"][0]["mountPath"] == "/mnt/state"
        assert mounts[task]["pvcMount"][0]["constant"] == "freshrec-state"


def _tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of the pipeline, including those inside condition sub-DAGs."""
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


def test_caching_is_off_for_steps_with_outside_state(default_settings, tmp_path):
    spec = compile_to("continuous_training", default_settings, tmp_path)[0]
    tasks = _tasks(spec)
    cached = {name for name, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache")}
    for name in ("ingest", "features", "train", "evaluate", "push", "rollout"):
        assert name not in cached, f"{name} must not be cached"
    for name in ("training-set", "data-quality", "push-gate", "infra-check"):
        assert name in cached, f"{name} is deterministic in its inputs and should be cached"


def test_push_and_rollout_run_only_behind_the_gate(default_settings, tmp_path):
    spec = compile_to("continuous_training", default_settings, tmp_path)[0]
    root = spec["root"]["dag"]["tasks"]
    assert "push" not in root and "rollout" not in root
    conditions = [t for t in root.values() if "triggerPolicy" in t]
    assert len(conditions) == 1
    condition = conditions[0]["triggerPolicy"]["condition"]
    assert "push-gate" in condition and "true" in condition.lower()
    inner = spec["components"][conditions[0]["componentRef"]["name"]]["dag"]["tasks"]
    assert {"infra-check", "push", "rollout"} <= set(inner)


def test_cli_compile_writes_both_pipelines_and_run_needs_local(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from freshrec.cli import _register, app
    from freshrec.pipelines.build import package_path

    monkeypatch.delenv("FRESHREC_CONFIG", raising=False)
    _register()
    runner = CliRunner()
    result = runner.invoke(
        app, ["-w", str(tmp_path / "w"), "pipeline", "compile", "--out-dir", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    for name in ("continuous_training", "drift_monitor"):
        written = tmp_path / "out" / f"{name}.yaml"
        assert normalise(load_docs(written)) == normalise(load_docs(package_path(name)))
    result = runner.invoke(app, ["pipeline", "run"])
    assert result.exit_code != 0 and "--local" in result.output
    result = runner.invoke(app, ["pipeline", "run", "--local", "--pipeline", "nope"])
    assert result.exit_code != 0 and "unknown pipeline" in result.output
