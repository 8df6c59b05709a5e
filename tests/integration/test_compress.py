"""The compressed serving variant: distilled from a real published DCN-V2, blessed against it, published."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from benchmarks.bench_explain_compress import planted_frame, train_planted
from freshrec.cli import _register, app

_register()
runner = CliRunner()


@pytest.mark.slow
def test_compress_publishes_a_smaller_blessed_child_with_the_same_signature(tmp_path):
    from freshrec.config import BlessingSettings
    from freshrec.model.compress import compress_version
    from freshrec.model.export import export_model, signature_inputs
    from freshrec.model.repository import ModelRepository

    frame = planted_frame(5000, seed=2)
    train, valid, test = frame.iloc[:3500], frame.iloc[3500:4000], frame.iloc[4000:].reset_index(drop=True)
    repo = ModelRepository(tmp_path / "models", "ctr")
    parent = repo.publish(export_model(train_planted(train, epochs=4, seed=2), tmp_path / "p"), {})

    out = compress_version(
        repo, parent, train, valid, test, epochs=4, batch_size=64, policy=BlessingSettings(min_auc=0.6)
    )
    assert out.blessing["blessed"], out.blessing
    assert out.version == parent + 1
    assert out.auc_loss < 0.02, (out.parent_metrics, out.student_metrics)
    assert out.parameters["student"] < out.parameters["parent"]
    meta = repo.metadata(out.version)
    assert meta["parent_version"] == parent and meta["compressed_from"] == parent
    assert meta["blessing"]["blessed"] and meta["production_version"] == parent
    assert signature_inputs(repo.path(out.version)) == signature_inputs(repo.path(parent))

    # A student that cannot pass the policy is not published (blessed against the parent like any candidate).
    strict = BlessingSettings(max_auc_drop=-0.5)  # would need +0.5 AUC over the parent
    refused = compress_version(repo, parent, train, valid, test, epochs=1, policy=strict)
    assert not refused.blessing["blessed"] and refused.version is None
    assert repo.versions() == [parent, out.version]


def test_compress_cli_rejects_an_unknown_version(tmp_path):
    res = runner.invoke(app, ["-w", str(tmp_path), "models", "compress", "--version", "3"])
    assert res.exit_code == 2 and "no servable version 3" in " ".join(res.output.split())
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["-w", str(tmp_path), "models", "compress", "--version", "3", "-o", "xml"])
    assert res.exit_code != 0 and "table | json" in res.output
