"""``-o json`` on the listing commands a cluster user scripts against: ``models list``, ``alerts list``.

(``rollout status -o json`` is tested against the loopback API server in tests/integration/test_argo_driver.py.)
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from freshrec.cli import _register, app
from freshrec.model.repository import ModelRepository


def _export(path):
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"x")
    return path


def test_models_list_as_json(tmp_path):
    _register()
    work = tmp_path / "work"
    repo = ModelRepository(work / "models", "ctr")
    repo.publish(_export(tmp_path / "a"), {"metrics": {"auc": 0.71}})
    repo.publish(_export(tmp_path / "b"), {"metrics": {"auc": 0.73}, "parent_version": 1})
    repo.set_label("stable", 2)
    res = CliRunner().invoke(app, ["-w", str(work), "models", "list", "-o", "json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.stdout)
    assert listed["model"] == "ctr"
    assert [(v["version"], v["labels"], v["metrics"]["auc"]) for v in listed["versions"]] == [
        (1, [], 0.71),
        (2, ["stable"], 0.73),
    ]
    bad = CliRunner().invoke(app, ["-w", str(work), "models", "list", "-o", "yaml"])
    assert bad.exit_code == 2 and "table | json" in bad.output


def test_alerts_list_as_json(settings):
    from freshrec.monitoring.alerts import AlertManager
    from freshrec.monitoring.alerts.cli import app as alerts_app

    settings.alerts.console = False
    AlertManager(settings.alerts, settings.state_dir).fire(
        "ctr", "FreshrecDriftCheckFailing", "drift checks fail", severity="critical", cause="monitor"
    )
    res = CliRunner().invoke(alerts_app, ["list", "-o", "json"], obj=settings)
    assert res.exit_code == 0, res.output
    (alert,) = json.loads(res.stdout)["alerts"]
    assert (alert["model"], alert["name"], alert["status"]) == ("ctr", "FreshrecDriftCheckFailing", "firing")
