"""The per-pod TF Serving model config: a pod's version, or the newest online export descending from it.

Versions are real repository folders (``ModelRepository.publish`` of a minimal SavedModel layout with
``freshrec.json``); the rendered text is parsed with TF Serving's own ``ModelServerConfig`` proto.
"""

from __future__ import annotations

import threading

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2
from typer.testing import CliRunner

from freshrec.model.repository import ModelRepository
from freshrec.rollout.cli import app
from freshrec.rollout.model_config import served_version


def _export(path):
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"x")
    return path


def _publish(repo, tmp_path, name, **meta):
    return repo.publish(_export(tmp_path / name), meta)


def test_a_pod_serves_its_version_or_its_online_descendants(tmp_path):
    repo = ModelRepository(tmp_path / "models", "ctr")
    v1 = _publish(repo, tmp_path, "a", source="continuous_training")
    v2 = _publish(repo, tmp_path, "b", source="online", parent_version=v1)
    v3 = _publish(repo, tmp_path, "c", source="continuous_training")  # a batch candidate (the canary)
    v4 = _publish(repo, tmp_path, "d", source="online", parent_version=v2)
    base = repo.root
    assert served_version(base, v1) == v4  # stable pods follow the learner's exports of their version
    assert served_version(base, v3) == v3  # the canary keeps exactly the candidate under analysis
    (base / str(v4) / "freshrec.json").write_text("{half")  # a torn write is never served
    assert served_version(base, v1) == v2
    assert served_version(tmp_path / "nowhere", 5) == 5


def test_the_command_writes_a_config_tf_serving_parses(tmp_path):
    repo = ModelRepository(tmp_path / "models", "ctr")
    v1 = _publish(repo, tmp_path, "a")
    out = tmp_path / "models.config"
    args = [
        "model-config",
        f"--repository={tmp_path / 'models'}",
        "--base-path=/models/ctr",
        f"--out={out}",
        f"--version={v1}",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = text_format.Parse(out.read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path) == ("ctr", "/models/ctr")
    assert list(model.model_version_policy.specific.versions) == [v1]
    bad = CliRunner().invoke(app, [*args[:-1], "--version=latest"])
    assert bad.exit_code == 3 and "positive integer" in bad.output


def test_the_sidecar_picks_up_an_online_export(tmp_path):
    from freshrec.rollout.model_config import watch

    repo = ModelRepository(tmp_path / "models", "ctr")
    v1 = _publish(repo, tmp_path, "a")
    out = tmp_path / "models.config"
    stop = threading.Event()
    thread = threading.Thread(
        target=watch,
        args=(tmp_path / "models", "ctr", "/models/ctr", v1, out, 0.05, stop.is_set),
        daemon=True,
    )
    thread.start()
    try:
        v2 = _publish(repo, tmp_path, "b", source="online", parent_version=v1)
        for _ in range(200):
            if out.is_file() and f"versions: {v2}" in out.read_text():
                break
            stop.wait(0.02)
        assert f"versions: {v2}" in out.read_text()
        assert oct(out.stat().st_mode & 0o777) == "0o644"  # readable by TF Serving's own user
    finally:
        stop.set()
        thread.join(5)
