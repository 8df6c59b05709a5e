"""`freshrec online` is registered, documented, and rejects a bad source before loading anything."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Each test starts the real `freshrec` command in a fresh interpreter (a few seconds on a busy machine).
pytestmark = pytest.mark.slow


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "freshrec.cli", "--workdir", str(cwd), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_online_help_lists_its_options(tmp_path):
    out = _cli("online", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for option in ("--source", "--max-events", "--until-idle", "--serving-url"):
        assert option in out.stdout


def test_online_rejects_unknown_source(tmp_path):
    out = _cli("online", "--source", "kafka", cwd=tmp_path)
    assert out.returncode != 0
    assert "eventlog or redis" in out.stdout + out.stderr
