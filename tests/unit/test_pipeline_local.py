"""The local runner's glue: the arguments it gives a pipeline and how it reads a run back."""

from __future__ import annotations

import json
from pathlib import Path

from freshrec.config import load_settings


def test_arguments_carry_the_settings_with_absolute_paths(tmp_path, monkeypatch):
    from freshrec.pipelines.local import pipeline_arguments

    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        workdir=Path("rel-work"), data={"datasets_dir": "data"}, pipeline={"rollout_mode": "none"}
    )
    args = pipeline_arguments(
        settings, "continuous_training", epochs=2, dataset="synthetic", source_path=None
    )
    assert args["workdir"] == str(tmp_path / "rel-work")
    sent = json.loads(args["settings_json"])
    assert "workdir" not in sent
    assert sent["data"]["datasets_dir"] == str(tmp_path / "data")
    assert Path(sent["features"]["repo_dir"]).is_absolute()
    assert sent["data"]["dataset"] == "synthetic"  # the prepared dataset is the one every step describes
    assert args["epochs"] == 2 and args["rollout_mode"] == "none" and "source_path" not in args
    # What a component rebuilds from the arguments is the caller's settings.
    rebuilt = load_settings(None, **{**sent, "workdir": args["workdir"]})
    assert rebuilt.pipeline.rollout_mode == "none" and rebuilt.workdir == tmp_path / "rel-work"

    monitor = pipeline_arguments(settings, "drift_monitor", window_hours=6.0)
    assert (
        monitor["launcher"] == "record" and monitor["window_hours"] == 6.0 and "rollout_mode" not in monitor
    )


def test_collect_tasks_reads_outputs_and_artifacts(tmp_path):
    from freshrec.pipelines.local import LocalRun, collect_tasks

    run_dir = tmp_path / "freshrec-continuous-training-2026"
    for task, params, arts in (
        ("evaluate", {"blessed": True, "auc": 0.71}, {"metrics": {"auc": 0.71}}),
        ("push", {"Output": 3}, {}),
    ):
        (run_dir / task).mkdir(parents=True)
        artifacts = {
            name: {"artifacts": [{"name": name, "uri": str(run_dir / task / name), "metadata": meta}]}
            for name, meta in arts.items()
        }
        for name in arts:
            (run_dir / task / name).write_text("x")
        (run_dir / task / "executor_output.json").write_text(
            json.dumps({"parameterValues": params, "artifacts": artifacts})
        )
    tasks = collect_tasks(run_dir)
    run = LocalRun("continuous_training", run_dir, 1.0, tasks)
    assert run.output("evaluate", "blessed") is True and run.pushed_version == 3
    assert run.output("rollout", default="absent") == "absent"
    assert run.tasks["evaluate"].metadata["metrics"] == {"auc": 0.71}
    assert run.artifact_paths() == [("evaluate", "metrics", run_dir / "evaluate" / "metrics")]
    assert LocalRun("continuous_training", run_dir, 1.0, {}).pushed_version is None
