"""The one atomic-write helper: content, failure behaviour and the modes another user needs to read."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from freshrec import io


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_replace_content_and_leave_no_temporaries(tmp_path):
    target = tmp_path / "a" / "b" / "state.json"
    io.atomic_write_json(target, {"x": 1})
    io.atomic_write_json(target, {"x": 2, "when": pd.Timestamp("2024-01-01")})
    assert json.loads(target.read_text()) == {"x": 2, "when": "2024-01-01 00:00:00"}
    io.atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    io.atomic_write_parquet(pd.DataFrame({"a": [1, 2]}, index=[5, 6]), tmp_path / "t.parquet")
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert back["a"].tolist() == [1, 2] and back.index.tolist() == [0, 1]  # index dropped
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.config"
    io.atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.config"]


def test_atomic_path_suffix_for_writers_that_choose_format_by_extension(tmp_path):
    with io.atomic_path(tmp_path / "p.yaml", suffix=".yaml") as tmp:
        assert tmp.name.endswith(".tmp.yaml") and tmp.name.startswith(".")
        tmp.write_text("a: 1\n")
    assert (tmp_path / "p.yaml").read_text() == "a: 1\n"


def test_files_0644_and_directories_0755_not_tempfile_modes(tmp_path, umask022):
    f = io.atomic_write_bytes(tmp_path / "new" / "f.bin", b"x")
    assert _mode(f) == 0o644  # mkstemp would give 0600
    assert _mode(tmp_path / "new") == 0o755
    with io.atomic_path(tmp_path / "g.parquet") as tmp:
        pd.DataFrame({"a": [1]}).to_parquet(tmp)  # a third-party writer opening the path keeps the mode
    assert _mode(tmp_path / "g.parquet") == 0o644
    with io.atomic_directory(tmp_path / "v1") as d:
        (d / "sub").mkdir()
        (d / "sub" / "w").write_bytes(b"w")
    assert _mode(tmp_path / "v1") == 0o755  # mkdtemp would give 0700
    with io.staging_dir(tmp_path) as s:
        assert _mode(s) == 0o755
    assert not s.exists()


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        f = io.atomic_write_text(tmp_path / "private.txt", "x")
        with io.atomic_directory(tmp_path / "d"):
            pass
    finally:
        os.umask(old)
    assert _mode(f) == 0o600 and _mode(tmp_path / "d") == 0o700


def test_make_readable_fixes_a_tree_from_mkdtemp(tmp_path, umask022):
    src = Path(tempfile.mkdtemp(dir=tmp_path))
    fd, name = tempfile.mkstemp(dir=src)
    os.close(fd)
    (src / "variables").mkdir(mode=0o700)
    assert _mode(src) == 0o700 and _mode(Path(name)) == 0o600
    io.make_readable(src)
    assert _mode(src) == 0o755 and _mode(src / "variables") == 0o755 and _mode(Path(name)) == 0o644
    assert io.umask() == 0o022


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_another_uid_can_read_what_is_published(umask022):
    """The model server runs as its own user: it must read a published version (issue 17's finding)."""
    root = Path(tempfile.mkdtemp(prefix="freshrec-io-"))  # pytest's tmp_path is 0700: not traversable
    try:
        os.chmod(root, 0o755)
        with io.atomic_directory(root / "models" / "1") as d:
            (d / "saved_model.pb").write_bytes(b"pb")
        io.atomic_write_text(root / "models" / "models.config", "cfg")
        for path in (root / "models" / "1" / "saved_model.pb", root / "models" / "models.config"):
            out = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(path)],
                capture_output=True,
                text=True,
            )
            assert out.returncode == 0, out.stderr
    finally:
        shutil.rmtree(root)


def test_atomic_directory_refuses_to_clobber_unless_replace(tmp_path):
    target = tmp_path / "profile"
    with io.atomic_directory(target) as d:
        (d / "a").write_text("1")
    with pytest.raises(FileExistsError), io.atomic_directory(target):
        pass
    with io.atomic_directory(target, replace=True) as d:
        (d / "b").write_text("2")
    assert sorted(os.listdir(target)) == ["b"]
    assert sorted(os.listdir(tmp_path)) == ["profile"]  # the old tree and the temporary are gone
    (tmp_path / "empty").mkdir()
    with io.atomic_directory(tmp_path / "empty") as d:  # an empty directory may be filled
        (d / "c").write_text("3")
    assert os.listdir(tmp_path / "empty") == ["c"]


def test_a_failed_directory_write_publishes_nothing(tmp_path):
    with pytest.raises(ValueError), io.atomic_directory(tmp_path / "v2") as d:
        (d / "half").write_text("x")
        raise ValueError("export failed")
    assert os.listdir(tmp_path) == []


def test_publish_file_moves_into_place(tmp_path):
    src = tmp_path / "_tmp" / "part.parquet"
    src.parent.mkdir()
    src.write_bytes(b"p")
    dst = io.publish_file(src, tmp_path / "date=2024-01-01" / "part.parquet")
    assert dst.read_bytes() == b"p" and not src.exists()


def test_publish_files_syncs_every_file_before_any_rename_and_every_directory_after(tmp_path, monkeypatch):
    """Spies on the real ``fsync``/``replace`` calls (they still run) to check the durability order."""
    stage = tmp_path / "_tmp"
    stage.mkdir()
    (tmp_path / "date=2024-01-01").mkdir()
    moves = []
    for k, day in enumerate(["2024-01-01", "2024-01-02", "2024-01-02", "2024-01-03"]):
        src = stage / f"{k}.parquet"
        src.write_bytes(str(k).encode())
        moves.append((src, tmp_path / f"date={day}" / f"part-{k}.parquet"))
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(a)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    published = io.publish_files(moves)

    assert published == [dst for _, dst in moves]
    assert [p.read_bytes() for p in published] == [b"0", b"1", b"2", b"3"]
    first_rename = next(i for i, (op, _) in enumerate(events) if op == "replace")
    last_rename = max(i for i, (op, _) in enumerate(events) if op == "replace")
    synced_before = {path for op, path in events[:first_rename] if op == "fsync"}
    assert synced_before == {str(src) for src, _ in moves}
    synced_after = {path for op, path in events[last_rename:] if op == "fsync"}
    # every destination folder, and the root whose entries got the two new folders
    assert synced_after == {
        str(tmp_path / f"date={d}") for d in ("2024-01-01", "2024-01-02", "2024-01-03")
    } | {str(tmp_path)}
    assert io.publish_files([]) == []
