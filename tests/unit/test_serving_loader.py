"""ModelManager's version policy, with the real repository layout and config, and a stand-in loader.

The loader is the manager's injection point (``loader=``): here it builds a small record instead of
loading TensorFlow, and fails for the versions marked corrupt, so the policy is tested in milliseconds.
The real loader is exercised in tests/integration/test_server_*.py.
"""

from __future__ import annotations

import json
import time

import pytest

from freshrec.model.repository import ModelRepository
from freshrec.serving.loader import ModelManager, ServingError


def make_version(models_dir, name: str, version: int, corrupt: bool = False) -> None:
    path = models_dir / name / str(version)
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"corrupt" if corrupt else b"ok")
    (path / "freshrec.json").write_text(json.dumps({"version": version}))


def fake_loader(calls: list):
    def load(name, version, path):
        calls.append((name, version))
        if (path / "saved_model.pb").read_bytes() == b"corrupt":
            raise ValueError(f"{path}: corrupt")
        return f"{name}:{version}"

    return load


@pytest.fixture
def manager(tmp_path):
    calls: list = []
    mgr = ModelManager(tmp_path, "ctr", loader=fake_loader(calls))
    mgr.calls = calls  # type: ignore[attr-defined]
    return mgr


def loaded(mgr, name="ctr"):
    return sorted(mgr.views()[name].servables)


def test_latest_only_without_config_and_swap(manager, tmp_path):
    assert manager.poll_once() is True
    assert loaded(manager) == []
    with pytest.raises(ServingError) as err:
        manager.resolve("ctr")
    assert err.value.code == "NOT_FOUND"
    make_version(tmp_path, "ctr", 1)
    make_version(tmp_path, "ctr", 2)
    manager.poll_once()
    assert loaded(manager) == [2]  # latest only
    assert manager.resolve("ctr") == "ctr:2"
    assert manager.poll_once() is False and manager.calls == [("ctr", 2)]  # nothing reloaded
    make_version(tmp_path, "ctr", 3)
    manager.poll_once()
    assert loaded(manager) == [3]
    with pytest.raises(ServingError, match=r"Specific\(ctr, 2\)"):
        manager.resolve("ctr", version=2)


def test_corrupt_new_version_keeps_previous_and_is_not_retried(manager, tmp_path):
    make_version(tmp_path, "ctr", 1)
    manager.poll_once()
    make_version(tmp_path, "ctr", 2, corrupt=True)
    manager.poll_once()
    view = manager.views()["ctr"]
    assert sorted(view.servables) == [1] and "corrupt" in view.failed[2]
    assert manager.resolve("ctr") == "ctr:1"
    manager.poll_once()
    assert manager.calls.count(("ctr", 2)) == 1  # a failed version is not reloaded every poll


def test_labels_from_config_and_refused_label_to_unloadable_version(manager, tmp_path):
    repo = ModelRepository(tmp_path, "ctr")
    for v in (1, 2, 3):
        make_version(tmp_path, "ctr", v)
    repo.set_label("stable", 1)
    manager.poll_once()
    assert loaded(manager) == [1, 3]  # labelled + newest
    assert manager.resolve("ctr", label="stable") == "ctr:1"
    with pytest.raises(ServingError) as err:
        manager.resolve("ctr", label="canary")
    assert err.value.code == "INVALID_ARGUMENT"
    repo.set_label("canary", 2)
    manager.poll_once()
    assert loaded(manager) == [1, 2, 3] and manager.resolve("ctr", label="canary") == "ctr:2"
    make_version(tmp_path, "ctr", 4, corrupt=True)
    repo.set_label("canary", 4)
    manager.poll_once()
    assert manager.resolve("ctr", label="canary") == "ctr:2"  # kept on its last loaded target
    assert manager.resolve("ctr") == "ctr:3"
    repo.set_label("stable", 3)
    repo.remove_label("canary")
    manager.poll_once()
    assert loaded(manager) == [3]  # 1 and 2 unloaded: neither labelled nor newest
    assert manager.resolve("ctr", label="stable") == "ctr:3"


def test_unreadable_config_keeps_previous_state(manager, tmp_path):
    make_version(tmp_path, "ctr", 1)
    ModelRepository(tmp_path, "ctr").set_label("stable", 1)
    manager.poll_once()
    (tmp_path / "models.config").write_text("this is { not a config")
    manager.poll_once()
    assert manager.resolve("ctr", label="stable") == "ctr:1"


def test_notify_loads_a_published_version_before_the_next_poll(tmp_path):
    """A publish notification (local mode) loads the new version at once; polling stays the contract."""
    calls: list = []
    manager = ModelManager(tmp_path, "ctr", poll_interval_s=3600.0, loader=fake_loader(calls))
    make_version(tmp_path, "ctr", 1)
    manager.poll_once()
    manager.start()
    try:
        make_version(tmp_path, "ctr", 2)
        assert manager.notify(wait=True)
        assert ("ctr", 2) in calls
        make_version(tmp_path, "ctr", 3)
        manager.notify()  # wakes the poller thread: loaded long before the hour-long interval
        deadline = time.monotonic() + 10
        while ("ctr", 3) not in calls:
            assert time.monotonic() < deadline, "the notified poller did not load version 3"
            time.sleep(0.02)
    finally:
        manager.stop()
