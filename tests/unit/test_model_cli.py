"""``freshrec models list|show|promote`` on a repository of (fake) exports."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from freshrec.cli import _register, app
from freshrec.model.repository import ModelRepository
from tests.unit.test_repository import fake_export

_register()
runner = CliRunner()


def test_models_list_show_promote(tmp_path):
    work = tmp_path / "work"
    repo = ModelRepository(work / "models", "ctr")
    repo.publish(
        fake_export(tmp_path / "a"), {"metrics": {"auc": 0.71, "logloss": 0.63}, "parent_version": None}
    )
    repo.publish(
        fake_export(tmp_path / "b"), {"metrics": {"auc": 0.73, "logloss": 0.61}, "parent_version": 1}
    )

    res = runner.invoke(app, ["-w", str(work), "models", "promote", "2", "--label", "canary"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["-w", str(work), "models", "promote", "1"])
    assert res.exit_code == 0, res.output
    assert repo.labels() == {"stable": 1, "canary": 2}

    res = runner.invoke(app, ["-w", str(work), "models", "list"])
    assert res.exit_code == 0, res.output
    assert "0.7300" in res.output and "canary" in res.output and "stable" in res.output

    res = runner.invoke(app, ["-w", str(work), "models", "show", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["parent_version"] == 1

    res = runner.invoke(app, ["-w", str(work), "models", "promote", "9"])
    assert res.exit_code == 2 and "no servable version 9" in res.output
    res = runner.invoke(app, ["-w", str(work), "models", "show", "9"])
    assert res.exit_code == 2


def test_train_rejects_an_unknown_architecture(tmp_path):
    res = runner.invoke(app, ["-w", str(tmp_path), "train", "--arch", "xgb"])
    assert res.exit_code != 0 and "dcn or lr" in res.output
