"""`freshrec run --quick`: the whole loop end to end on MovieLens-100k, then its report in a real browser.

Real parts throughout: the dataset from ../shared/datasets, Feast (SQLite), the kfp.local pipeline,
the TF-Serving-compatible server and the gateway on loopback, the online learner, Evidently. The report
is opened in headless Chromium (Debian's `chromium`, installed by .ci/run) and screenshotted.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


def test_quick_run_completes_and_report_renders(tmp_path, datasets_dir):
    from typer.testing import CliRunner

    from freshrec.cli import _register, app

    _register()
    workdir = tmp_path / "work"
    env = {
        "FRESHREC_DATA__DATASETS_DIR": str(datasets_dir),
        # free ports: a developer's own `freshrec serve` on the defaults must not collide with the test
        "FRESHREC_SERVING__REST_PORT": str(free_port()),
        "FRESHREC_SERVING__GRPC_PORT": str(free_port()),
        "FRESHREC_SERVING__GATEWAY_PORT": str(free_port()),
        "FRESHREC_SERVING__GATEWAY_ADMIN_PORT": str(free_port()),
    }
    result = CliRunner().invoke(app, ["--workdir", str(workdir), "run", "--quick"], env=env)
    assert result.exit_code == 0, result.output[-4000:]
    reports = list((workdir / "reports").glob("*/index.html"))
    assert len(reports) == 1, result.output[-2000:]
    index = reports[0]
    assert str(index.resolve()) in result.output.replace("\n", "")

    record = json.loads((index.parent / "run.json").read_text())
    assert record["status"] == "ok"
    assert [s["name"] for s in record["stages"]] == ["prepare", "bootstrap", "serve", "replay"]
    assert all(s["status"] == "ok" for s in record["stages"])
    # every replay window has metrics for the frozen model, the online learner and what was served
    assert record["stream"], "no replay windows recorded"
    for row in record["stream"]:
        for col in ("static_auc", "online_auc", "served_auc", "static_exact_auc", "online_learner_auc"):
            assert 0.0 <= row[col] <= 1.0, (col, row)
    # served, static and online are scored on the same request-time features: what was served is the
    # online learner's last guarded export, so the two agree (the learner is at most one export ahead)
    summary = record["summary"]
    assert abs(summary["mean window AUC, served"] - summary["mean window AUC, online"]) <= 0.01, summary
    assert len(record["drift"]) == len(record["stream"])
    assert all((index.parent / d["report"]).exists() for d in record["drift"] if d["report"])
    # the pipeline pushed the bootstrap model and the online learner exported guarded versions
    sources = [v["source"] for v in record["versions"]]
    assert sources[0] == "pipeline (bootstrap)"
    passed, attempted = map(int, record["summary"]["online exports (passed guard / attempted)"].split(" / "))
    assert attempted >= 1, record["summary"]
    assert sources.count("online learner") == passed
    # drift on MovieLens' cold-start-heavy later weeks starts the retraining pipeline; its candidate is
    # either stopped by the gates or rolled out by canary, which ends promoted or rolled back
    for retrain in record["retrains"]:
        assert retrain["outcome"] == "not pushed" or retrain["outcome"].startswith(
            ("promoted", "rolled_back")
        )
    if any(r["outcome"] != "not pushed" for r in record["retrains"]):
        assert any(c["step"] == "analysis" and c["verdict"] for c in record["canary"])
    assert (index.parent / "quality.png").exists() and (index.parent / "drift.png").exists()

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--window-size=1280,2000",
            f"--screenshot={shot}",
            index.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 50_000  # a rendered page with plots, not a blank one
