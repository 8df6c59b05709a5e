"""The whole continuous-training pipeline through kfp.local (SubprocessRunner, use_venv=False) on a small
synthetic stream: every component runs for real as a KFP task, and the gates decide what gets pushed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
TASKS = {"ingest", "features", "training-set", "train", "evaluate", "data-quality", "push-gate"}


def _settings(workdir: Path, **overrides):
    from freshrec.config import load_settings

    base = {
        "workdir": workdir,
        "data": {"dataset": "synthetic", "datasets_dir": str(REPO.parent / "shared" / "datasets")},
        "features": {"repo_dir": str(REPO / "feature_repo")},
        "model": {"embedding_dim": 4, "deep_units": [16], "id_hash_buckets": 1000, "cross_layers": 1},
        "training": {"batch_size": 256},
        # A 1-epoch model on 4k events is poorly calibrated; the floors here test the wiring, not the model.
        "blessing": {
            "min_auc": 0.5,
            "max_logloss": 1.0,
            "max_calibration_error": 0.5,
            "max_auc_drop": 1.0,
            "max_logloss_increase": 1.0,
        },
        # Activity counters of an 8-day stream grow past the training range by construction: not a defect.
        "drift": {"out_of_range_exempt": ["*_events_*"]},
        "pipeline": {"rollout_mode": "auto"},
        "serving": {
            "gateway_port": 1
        },  # nothing listens: the rollout cannot canary, the first version is promoted
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value}
    return load_settings(**base)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir whose event log and profile tables hold a small synthetic stream."""
    from freshrec.data.prepare import prepare_dataset
    from freshrec.data.synthetic import SyntheticConfig, generate

    work = tmp_path_factory.mktemp("ct") / "work"
    prepare_dataset(
        generate(SyntheticConfig(n_users=150, n_items=80, n_events=4000, days=8, seed=5)), _settings(work)
    )
    return work


@pytest.fixture(scope="module")
def first_run(workdir):
    from freshrec.pipelines.local import run_local

    # The Feast offline store builds this run's training set (later runs use the in-process engine).
    return run_local(_settings(workdir, features={"training_set_engine": "feast"}), epochs=1)


def _repo(workdir: Path):
    from freshrec.model.repository import ModelRepository

    return ModelRepository(workdir / "models", "ctr")


def test_pipeline_pushes_and_promotes_the_first_blessed_model(first_run, workdir):
    run = first_run
    assert TASKS | {"infra-check", "push", "rollout"} <= set(run.tasks)
    assert run.output("evaluate", "blessed") is True
    assert run.output("data-quality", "data_ok") is True
    assert run.pushed_version == 1
    assert run.output("rollout") == "promoted"
    repo = _repo(workdir)
    assert repo.versions() == [1] and repo.stable() == 1
    meta = repo.metadata(1)
    assert meta["blessing"]["blessed"] is True and meta["parent"] is None
    # The artifacts a user opens in the KFP UI exist where the run says they are.
    train = run.tasks["train"]
    assert (train.artifacts["model"] / "saved_model.pb").is_file()
    assert "val_auc" in train.metadata["metrics"]
    evaluate = run.tasks["evaluate"]
    assert (
        "confidenceMetrics" in evaluate.metadata["curves"]
        and "confusionMatrix" in evaluate.metadata["curves"]
    )
    assert evaluate.metadata["metrics"]["auc"] == pytest.approx(run.output("evaluate", "auc"))
    assert "<html" in run.tasks["data-quality"].artifacts["report"].read_text().lower()
    assert json.loads(run.tasks["data-quality"].artifacts["result"].read_text())["verdict"] in ("ok", "drift")
    assert run.run_dir.parent == workdir.resolve() / "kfp"


def test_unblessed_model_is_not_pushed(first_run, workdir):
    from freshrec.pipelines.local import run_local

    # The in-process training-set engine here (the first run used Feast): both feed the same steps.
    run = run_local(_settings(workdir, blessing={"min_auc": 0.99}), epochs=1)
    assert run.output("evaluate", "blessed") is False
    assert run.output("push-gate") is False
    assert "push" not in run.tasks and "rollout" not in run.tasks and run.pushed_version is None
    assert _repo(workdir).versions() == [1] and _repo(workdir).stable() == 1
    # Warm start: the candidate was trained from the production version.
    assert run.tasks["train"].metadata["model"]["parent_version"] == 1
    assert "min_auc" in run.tasks["evaluate"].artifacts["report"].read_text()


def test_failed_data_quality_gate_blocks_a_blessed_model(first_run, workdir):
    from freshrec.pipelines.local import run_local

    # Too few rows for a meaningful check is a data-quality verdict that must stop the push.
    run = run_local(_settings(workdir, drift={"min_rows": 10_000_000}), epochs=1)
    assert run.output("evaluate", "blessed") is True
    assert run.output("data-quality", "data_ok") is False
    assert run.output("data-quality", "verdict") == "not_enough_data"
    assert run.output("push-gate") is False and run.pushed_version is None
    assert _repo(workdir).versions() == [1]
