"""The settings object: layering of defaults, YAML and environment; paths pinned at load time."""

from __future__ import annotations

from pathlib import Path

import pytest

from freshrec.config import load_settings


def test_relative_paths_are_pinned_to_the_starting_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(workdir=Path(".freshrec"))
    # Feast resolves relative paths against its own repo path: a relative workdir once became
    # <workdir>/tables/.freshrec/feast. Every path is absolute after loading.
    assert settings.workdir == tmp_path / ".freshrec"
    assert settings.data.datasets_dir == (tmp_path / "../shared/datasets").resolve()
    assert settings.models_dir.is_absolute() and settings.tables_dir.is_absolute()


def test_yaml_then_environment_then_overrides(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("serving:\n  rest_port: 9000\n  grpc_port: 9001\nmodel:\n  name: yaml\n")
    monkeypatch.setenv("FRESHREC_SERVING__REST_PORT", "9100")
    settings = load_settings(config, model={"name": "override"})
    assert settings.serving.rest_port == 9100  # environment beats the file
    assert settings.serving.grpc_port == 9001  # the file beats the default
    assert settings.model.name == "override"


def test_a_missing_or_malformed_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_settings(bad)
