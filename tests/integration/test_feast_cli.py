"""``freshrec features apply|materialize|lookup`` end to end after ``prepare`` (real Feast, SQLite)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_cli_apply_materialize_lookup(settings, tmp_path):
    from freshrec.cli import _register, app
    from freshrec.data.prepare import prepare_dataset
    from freshrec.data.synthetic import generate

    ds = generate(seed=5, n_users=12, n_items=10, n_events=300, days=10.0)
    prepare_dataset(ds, settings)
    _register()
    runner = CliRunner()
    base = ["--workdir", str(settings.workdir)]

    missing = runner.invoke(app, ["--workdir", str(tmp_path / "empty"), "features", "apply"])
    assert missing.exit_code == 1 and "freshrec data prepare" in missing.output

    applied = runner.invoke(app, [*base, "features", "apply"])
    assert applied.exit_code == 0, applied.output
    assert "ranking_v1" in applied.output and "applied 13 objects" in applied.output
    assert (settings.tables_dir / "user_activity.parquet").exists()

    mat = runner.invoke(app, [*base, "features", "materialize"])
    assert mat.exit_code == 0, mat.output
    assert "item_activity_fv" in mat.output and "full from 1970" in mat.output
    assert "from 300 events" in mat.output

    user = ds.events["user_id"].iloc[-1]
    item = ds.events["item_id"].iloc[-1]
    looked = runner.invoke(app, [*base, "features", "lookup", user, item, "unknown-item"])
    assert looked.exit_code == 0, looked.output
    assert "item_events_total" in looked.output and "720" in looked.output  # the unknown item's default
    assert "lookup took" in looked.output
