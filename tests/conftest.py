"""Shared fixtures: settings in a temporary workdir, the real datasets, local services."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = (REPO / ".." / "shared" / "datasets").resolve()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def settings(tmp_path):
    """Settings with the workdir in a temp folder and the real datasets directory."""
    from freshrec.config import load_settings

    return load_settings(
        workdir=tmp_path / "work",
        data={"datasets_dir": DATASETS},
        features={"repo_dir": REPO / "feature_repo"},
    )


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not (DATASETS / "movielens-100k" / "u.data").exists():
        pytest.fail(f"real datasets not found at {DATASETS} (expected ../shared/datasets beside the repo)")
    return DATASETS


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The local Redis (started by .ci/run). A missing service is a failure, not a skip."""
    if not _port_open("127.0.0.1", 6379):
        pytest.fail("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The local PostgreSQL (trust auth; started by .ci/run)."""
    if not _port_open("127.0.0.1", 5432):
        pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)")
    return "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port_factory():
    return free_port
