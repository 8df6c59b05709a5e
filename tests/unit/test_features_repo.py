"""The checked-in Feast repo: what the ``feast`` CLI would register, and its two YAML variants."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from freshrec.features.activity import ITEM_ACTIVITY, USER_ACTIVITY

REPO = Path(__file__).resolve().parents[2]
FEATURE_REPO = REPO / "feature_repo"


@pytest.mark.slow
def test_feast_parses_the_checked_in_repo(monkeypatch, tmp_path):
    """The repo's paths follow the settings' workdir (FRESHREC_WORKDIR), not a folder beside the repo."""
    from feast.repo_operations import parse_repo

    monkeypatch.setenv("FRESHREC_WORKDIR", str(tmp_path / "work"))
    monkeypatch.delenv("FRESHREC_CONFIG", raising=False)
    monkeypatch.chdir(REPO)  # Feast imports repo files as modules relative to the working directory
    monkeypatch.setattr(sys, "path", [str(REPO), *sys.path])
    contents = parse_repo(FEATURE_REPO)
    assert sorted(e.name for e in contents.entities if e.name != "__dummy") == ["item", "user"]
    views = {fv.name: fv for fv in contents.feature_views}
    assert sorted(views) == ["item_activity_fv", "item_profile_fv", "user_activity_fv", "user_profile_fv"]
    assert sorted(f.name for f in views["user_activity_fv"].schema) == sorted(USER_ACTIVITY)
    assert sorted(f.name for f in views["item_activity_fv"].schema) == sorted(ITEM_ACTIVITY)
    assert views["user_activity_fv"].stream_source.name == "user_activity_push"
    assert views["user_profile_fv"].batch_source.path == str(tmp_path / "work" / "tables" / "users.parquet")
    (service,) = contents.feature_services
    assert service.name == "ranking_v1"
    assert sorted(p.name for p in service.feature_view_projections) == sorted(views)
    sources = {s.name for s in contents.data_sources}
    assert {
        "user_activity_push",
        "item_activity_push",
        "user_profile_source",
        "item_profile_source",
    } <= sources
    assert {"user_activity_source", "item_activity_source"} <= sources


@pytest.mark.slow  # the first Feast import alone takes seconds
@pytest.mark.parametrize("yaml_name", ["feature_store.yaml", "feature_store.redis.yaml"])
def test_yaml_variants_load(yaml_name, monkeypatch, tmp_path):
    from feast.repo_config import load_repo_config

    monkeypatch.setenv("FRESHREC_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("FRESHREC_FEATURES__REDIS_CONNECTION", "localhost:6379")
    monkeypatch.setenv(
        "FRESHREC_FEATURES__POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/postgres"
    )
    config = load_repo_config(FEATURE_REPO, FEATURE_REPO / yaml_name)
    assert config.project == "freshrec"
    if yaml_name == "feature_store.yaml":
        assert config.online_store.type == "freshrec.features.local_store.MonotonicSqliteOnlineStore"
        assert config.registry.registry_store_type == "freshrec.features.local_store.AtomicLocalRegistryStore"
        assert config.registry.registry_type == "file"
        assert config.registry.path == str(tmp_path / "work" / "feast" / "registry.db")
    else:
        assert config.online_store.type == "redis"
        assert config.online_store.connection_string == "localhost:6379"
        assert config.registry.registry_type == "sql"
        assert config.registry.path.startswith("postgresql+psycopg://")
