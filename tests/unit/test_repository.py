"""Model repository: atomic publish, servable versions only, labels through TF Serving's config proto."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from freshrec.model.repository import LabelMoved, ModelRepository, RepositoryError, read_model_config


def fake_export(path: Path, tag: str = "x") -> Path:
    """A directory that looks like a SavedModel export (the repository does not parse the graph)."""
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"pb-" + tag.encode())
    (path / "variables" / "variables.index").write_bytes(b"idx")
    return path


def _publish_in_process(models_dir: str, src: str, queue, barrier) -> None:
    repo = ModelRepository(models_dir, "ctr")
    barrier.wait(30)  # all publish at the same moment
    queue.put(repo.publish(src, {"who": src}))


def _label_in_process(models_dir: str, label: str, n: int, barrier) -> None:
    """Flip ``label`` between v1 and v2 ``n`` times; exit with how often a write of ours did not stick."""
    repo = ModelRepository(models_dir, "ctr")
    barrier.wait(30)
    lost = 0
    for k in range(n):
        want = 1 + k % 2
        repo.set_label(label, want)
        lost += repo.labels().get(label) != want  # only the other process writes, and not this label
    raise SystemExit(min(lost, 100))


def test_publish_assigns_increasing_versions_and_writes_metadata(tmp_path):
    repo = ModelRepository(tmp_path / "models", "ctr")
    assert repo.versions() == [] and repo.latest() is None
    v1 = repo.publish(fake_export(tmp_path / "a"), {"metrics": {"auc": 0.7}, "parent_version": None})
    v2 = repo.publish(fake_export(tmp_path / "b"), {"metrics": {"auc": 0.71}, "parent_version": v1})
    assert (v1, v2) == (1, 2)
    assert repo.versions() == [1, 2]
    meta = repo.metadata(2)
    assert meta["parent_version"] == 1 and meta["version"] == 2 and meta["name"] == "ctr"
    assert "created_at" in meta
    assert (repo.path(1) / "saved_model.pb").read_bytes() == b"pb-x"
    assert not [p for p in repo.root.iterdir() if p.name.startswith(".")], "staging/reservations left behind"


def test_half_written_versions_are_invisible(tmp_path):
    repo = ModelRepository(tmp_path / "models", "ctr")
    repo.publish(fake_export(tmp_path / "a"), {})
    fake_export(repo.root / ".staging-abc")  # an interrupted publish
    (repo.root / "7").mkdir()  # a bare directory without SavedModel or marker
    fake_export(repo.root / "8")  # a SavedModel without freshrec.json
    fake_export(repo.root / "9")
    (repo.root / "9" / "freshrec.json").write_text("{truncated")  # corrupt marker
    assert repo.versions() == [1]
    with pytest.raises(RepositoryError, match="no servable version 8"):
        repo.metadata(8)
    # The next publish skips every number already on disk, servable or not.
    assert repo.publish(fake_export(tmp_path / "b"), {}) == 10


def test_publish_rejects_a_directory_without_saved_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"saved_model\.pb"):
        ModelRepository(tmp_path / "models").publish(tmp_path / "empty", {})


def test_concurrent_publishes_from_threads_get_distinct_versions(tmp_path):
    repo = ModelRepository(tmp_path / "models", "ctr")
    sources = [fake_export(tmp_path / f"s{k}", tag=str(k)) for k in range(8)]
    barrier = threading.Barrier(len(sources))

    def publish(src: Path) -> int:
        barrier.wait(30)
        return repo.publish(src, {"src": src.name})

    with ThreadPoolExecutor(len(sources)) as pool:
        versions = list(pool.map(publish, sources))
    assert sorted(versions) == list(range(1, 9))
    assert {repo.metadata(v)["src"] for v in versions} == {s.name for s in sources}


def test_concurrent_publishes_from_processes_get_distinct_versions(tmp_path):
    models = tmp_path / "models"
    sources = [fake_export(tmp_path / f"p{k}", tag=str(k)) for k in range(4)]
    # fork: the children need only the file system (no TF), and start without re-importing anything
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    barrier = ctx.Barrier(len(sources))
    procs = [
        ctx.Process(target=_publish_in_process, args=(str(models), str(s), queue, barrier)) for s in sources
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    got = sorted(queue.get(timeout=5) for _ in procs)
    assert got == [1, 2, 3, 4]
    repo = ModelRepository(models, "ctr")
    assert repo.versions() == [1, 2, 3, 4]
    assert (repo.path(got[0]) / "saved_model.pb").read_bytes() != (
        repo.path(got[1]) / "saved_model.pb"
    ).read_bytes()


def test_labels_round_trip_through_model_server_config(tmp_path):
    models = tmp_path / "models"
    repo = ModelRepository(models, "ctr")
    other = ModelRepository(models, "other")
    for k in range(3):
        repo.publish(fake_export(tmp_path / f"a{k}"), {})
    other.publish(fake_export(tmp_path / "o"), {})
    assert repo.labels() == {} and repo.stable() is None
    repo.set_label("stable", 1)
    repo.set_label("canary", 3)
    other.set_label("stable", 1)
    assert repo.labels() == {"stable": 1, "canary": 3}
    assert ModelRepository(models, "ctr").stable() == 1

    config = read_model_config(repo.config_path)
    entries = {c.name: c for c in config.model_config_list.config}
    assert set(entries) == {"ctr", "other"}
    ctr = entries["ctr"]
    assert dict(ctr.version_labels) == {"stable": 1, "canary": 3}
    assert list(ctr.model_version_policy.specific.versions) == [1, 3]
    assert ctr.base_path == "ctr" and ctr.model_platform == "tensorflow"

    repo.remove_label("canary")
    config = read_model_config(repo.config_path)
    ctr = next(c for c in config.model_config_list.config if c.name == "ctr")
    assert dict(ctr.version_labels) == {"stable": 1}
    assert list(ctr.model_version_policy.specific.versions) == [1]
    assert other.labels() == {"stable": 1}


def test_label_errors(tmp_path):
    repo = ModelRepository(tmp_path / "models", "ctr")
    repo.publish(fake_export(tmp_path / "a"), {})
    with pytest.raises(RepositoryError, match="no servable version 5"):
        repo.set_label("stable", 5)
    with pytest.raises(ValueError, match="unknown label"):
        repo.set_label("prod", 1)
    repo.set_label("stable", 1)
    with pytest.raises(RepositoryError, match="labelled"):
        repo.delete(1)
    repo.config_path.write_text("this is { not a proto")
    with pytest.raises(RepositoryError, match="not a valid ModelServerConfig"):
        repo.labels()


def test_a_label_compare_and_set_loses_to_a_move_made_meanwhile(tmp_path):
    """The online learner labels its export stable only from the version it read: a promotion landed while
    it exported (the rollout task moving stable to a batch version) wins, and the learner is told."""
    repo = ModelRepository(tmp_path / "models", "ctr")
    for k in range(3):
        repo.publish(fake_export(tmp_path / f"a{k}"), {})
    repo.set_label("stable", 1)
    seen = repo.stable()
    repo.set_label("stable", 2)  # the promotion, between the learner's read and its write
    with pytest.raises(LabelMoved, match="at v2, not v1") as caught:
        repo.set_label("stable", 3, expect=seen)
    assert caught.value.current == 2 and repo.stable() == 2
    repo.set_label("stable", 3, expect=2)
    assert repo.stable() == 3
    repo.set_label("canary", 1, expect=None)  # None: only if unlabelled
    with pytest.raises(LabelMoved):
        repo.set_label("canary", 2, expect=None)


def test_concurrent_label_writers_from_processes_lose_no_update(tmp_path):
    """Two processes move two labels of one model at once (the rollout task the canary, the learner stable):
    without the repository's lock one read-modify-write puts back the other's old value."""
    models = tmp_path / "models"
    for k in range(2):
        ModelRepository(models, "ctr").publish(fake_export(tmp_path / f"a{k}"), {})
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_label_in_process, args=(str(models), label, 200, barrier))
        for label in ("stable", "canary")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]  # no write lost
    assert ModelRepository(models, "ctr").labels() == {"stable": 2, "canary": 2}


def test_update_metadata_is_merged(tmp_path):
    repo = ModelRepository(tmp_path / "models", "ctr")
    v = repo.publish(fake_export(tmp_path / "a"), {"metrics": {"auc": 0.7}})
    repo.update_metadata(v, blessing={"blessed": True})
    meta = json.loads((repo.path(v) / "freshrec.json").read_text())
    assert meta["metrics"] == {"auc": 0.7} and meta["blessing"] == {"blessed": True}


@pytest.mark.parametrize("move", [False, True])
def test_a_published_version_is_readable_by_other_users(tmp_path, move):
    """TF Serving runs as its own user: an export made 0700/0600 (mkdtemp, mkstemp) is published 0755/0644."""
    import os
    import stat
    import tempfile

    old = os.umask(0o022)
    try:
        src = fake_export(Path(tempfile.mkdtemp(dir=tmp_path)))
        os.chmod(src / "saved_model.pb", 0o600)
        os.chmod(src / "variables", 0o700)
        repo = ModelRepository(tmp_path / "models", "ctr")
        version = repo.publish(src, {}, move=move)
        repo.set_label("stable", version)
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    vdir = repo.path(version)
    assert mode(vdir) == 0o755 and mode(vdir / "variables") == 0o755
    assert mode(vdir / "saved_model.pb") == 0o644 and mode(vdir / "freshrec.json") == 0o644
    assert mode(repo.config_path) == 0o644


def test_a_copied_repository_serves_its_own_versions(tmp_path):
    """models.config names base paths relative to itself: a copy (or another mount) reads the copy."""
    import shutil

    from freshrec.serving.loader import parse_model_config

    repo = ModelRepository(tmp_path / "a", "ctr")
    repo.publish(fake_export(tmp_path / "e"), {})
    repo.set_label("stable", 1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    (entry,) = parse_model_config(tmp_path / "b" / "models.config", tmp_path / "b")
    assert entry.base_path == tmp_path / "b" / "ctr"
    assert ModelRepository(tmp_path / "b", "ctr").stable() == 1
