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


@pytest.mark.parametrize(
    ("name", "profile"),
    [("continuous_training", "default"), ("drift_monitor", "default"), ("continuous_training", "production")],
)
def test_checked_in_yaml_matches_the_code(name, profile, default_settings, tmp_path):
    from freshrec.pipelines.build import compile_pipeline, create, package_path, profile_settings

    golden = package_path(name, profile)
    assert golden.is_file(), f"{golden} is missing: run `make compile`"
    out = compile_pipeline(create(name, profile_settings(default_settings, profile)), tmp_path / golden.name)
    assert normalise(load_docs(out)) == normalise(load_docs(golden)), f"{golden} is stale: run `make compile`"


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
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert not any("nodeSelector" in e or "tolerations" in e for e in platform.values()), "CPU default"
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
    assert [n for n, e in k8s.items() if "nodeSelector" in e or "tolerations" in e] == ["exec-train"]
    train = k8s["exec-train"]
    assert train["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_gpu_flag_without_an_accelerator_type_is_a_clear_error(default_settings):
    from freshrec.pipelines.build import create

    with pytest.raises(ValueError, match="gpu_accelerator_type"):
        create("continuous_training", default_settings, gpu=True)


def test_the_layout_mounts_every_artefact_at_its_workdir_path_in_every_stateful_task(tmp_path):
    """Mounts follow settings.cluster: a changed claim, subPath or workdir reaches every stateful task."""
    settings = load_settings(
        workdir=tmp_path / "work",
        cluster={
            "workdir": "/mnt/state",
            "claims": {"data": {"name": "lake", "size": "1Gi"}, "models": {"name": "repo", "size": "1Gi"}},
            "artefacts": {
                **{k: v.model_dump() for k, v in load_settings().cluster.artefacts.items()},
                "predictions": {"claim": "models", "sub_path": "served/predictions"},
            },
        },
    )
    spec, platform = compile_to("continuous_training", settings, tmp_path)
    assert spec["root"]["inputDefinitions"]["parameters"]["workdir"]["defaultValue"] == "/mnt/state"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task in ("exec-ingest", "exec-features", "exec-train", "exec-evaluate", "exec-push", "exec-rollout"):
        mounts = {m["mountPath"]: (m["constant"], m.get("subPath", "")) for m in executors[task]["pvcMount"]}
        assert mounts["/mnt/state/eventlog"] == ("lake", "eventlog"), task
        assert mounts["/mnt/state/predictions"] == ("repo", "served/predictions"), task
        assert mounts["/mnt/state/models"] == ("repo", ""), task
        env = {e["envVar"] for c in executors[task]["configMapAsEnv"] for e in c["keyToEnv"]}
        assert {"FRESHREC_WORKDIR", "FRESHREC_FEATURES__POSTGRES_URL"} <= env, task
        assert executors[task]["secretAsEnv"][0]["keyToEnv"] == [
            {"secretKey": "password", "envVar": "PGPASSWORD"}
        ]
    # Steps that only read their inputs get no claim.
    assert "exec-push-gate" not in executors and "exec-infra-check" not in executors


def test_submit_refuses_a_package_without_the_mounts(tmp_path):
    from freshrec.pipelines.build import cluster_ready, package_path
    from freshrec.pipelines.submit import submit

    settings = load_settings(workdir=tmp_path / "work", pipeline={"cluster_mounts": False})
    bare = tmp_path / "bare.yaml"
    from freshrec.pipelines.build import compile_pipeline, create

    compile_pipeline(create("continuous_training", settings), bare)
    assert "task ingest mounts no volume at its workdir" in cluster_ready(bare)
    assert cluster_ready(package_path("continuous_training")) == []
    assert cluster_ready(package_path("continuous_training", "production")) == []
    with pytest.raises(ValueError, match="not compiled for the cluster"):
        submit(object(), bare, experiment="x")


def test_task_resources_retries_and_caching_follow_the_settings(tmp_path):
    settings = load_settings(
        workdir=tmp_path / "work",
        pipeline={
            "resources": {"default": {"cpu_request": "250m"}, "train": {"memory_limit": "3Gi"}},
            "retries": {"default": 0, "features": 4},
            "caching": {"training_set": False},
        },
    )
    spec = compile_to("continuous_training", settings, tmp_path)[0]
    executors = spec["deploymentSpec"]["executors"]
    assert executors["exec-ingest"]["container"]["resources"]["resourceCpuRequest"] == "250m"
    assert executors["exec-train"]["container"]["resources"]["resourceMemoryLimit"] == "3Gi"
    tasks = _tasks(spec)
    assert tasks["features"]["retryPolicy"]["maxRetryCount"] == 4
    assert "retryPolicy" not in tasks["push"]
    assert not tasks["training-set"].get("cachingOptions", {}).get("enableCache")


def test_production_profile_trains_on_a_gpu_with_the_cuda_image():
    from freshrec.pipelines.build import package_path

    spec, platform = load_docs(package_path("continuous_training", "production"))
    executors = spec["deploymentSpec"]["executors"]
    train = executors["exec-train"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    images = {n: e["container"]["image"] for n, e in executors.items()}
    assert images.pop("exec-train").startswith("ghcr.io/freshrec/freshrec-cuda:")
    assert set(images.values()) == {"ghcr.io/freshrec/freshrec:0.1.0"}
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert k8s["tolerations"][0]["key"] == "nvidia.com/gpu" and k8s["nodeSelector"]["labels"]


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
    for name, profile in (
        ("continuous_training", "default"),
        ("drift_monitor", "default"),
        ("continuous_training", "production"),
    ):
        written = tmp_path / "out" / package_path(name, profile).name
        assert normalise(load_docs(written)) == normalise(load_docs(package_path(name, profile)))
    result = runner.invoke(app, ["pipeline", "run"])
    assert result.exit_code != 0 and "--local" in result.output
    result = runner.invoke(app, ["pipeline", "run", "--local", "--pipeline", "nope"])
    assert result.exit_code != 0 and "unknown pipeline" in result.output
