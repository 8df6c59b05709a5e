"""``freshrec models list|show|promote`` on a repository of (fake) exports."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from freshrec.cli import _register, app
from freshrec.model.references import ReferenceStore
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


def test_promoting_stable_moves_the_drift_reference_when_the_version_has_one(tmp_path):
    work = tmp_path / "work"
    repo = ModelRepository(work / "models", "ctr")
    refs = ReferenceStore(work / "references", "ctr")
    for v in (1, 2, 3):
        assert repo.publish(fake_export(tmp_path / f"e{v}"), {}) == v
    refs.write_frame(1, pd.DataFrame({"v": [1]}))
    refs.write_frame(2, pd.DataFrame({"v": [2]}))

    res = runner.invoke(app, ["-w", str(work), "models", "promote", "1"])
    assert res.exit_code == 0, res.output
    assert pd.read_parquet(refs.stable_path)["v"].tolist() == [1] and refs.stable_version() == 1
    res = runner.invoke(app, ["-w", str(work), "models", "promote", "2", "--label", "canary"])
    assert res.exit_code == 0 and refs.stable_version() == 1  # only the stable label moves it
    res = runner.invoke(app, ["-w", str(work), "models", "promote", "2"])
    assert res.exit_code == 0 and pd.read_parquet(refs.stable_path)["v"].tolist() == [2]
    # v3 has no frame (as an online learner's export): stable moves, the drift reference stays v2's
    res = runner.invoke(app, ["-w", str(work), "models", "promote", "3"])
    assert res.exit_code == 0, res.output
    assert repo.stable() == 3 and refs.stable_version() == 2 and "keeps v2's" in res.output
