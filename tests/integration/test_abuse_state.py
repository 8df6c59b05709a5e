"""Abuse probes against what the serving side keeps on disk (issue 17): the prediction log and file modes.

Real parts: ``PredictionLog`` on a real folder (a flush made to fail by putting a file where its folder
belongs), ``ModelRepository.publish`` of a real SavedModel, and a second UID (``setuid`` in a subprocess, as
root) reading what the first wrote. The ``probe`` tests failed on the code before issue 17: a failed flush
dropped its rows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from freshrec.serving.predlog import PredictionLog, read_predictions

pytestmark = [pytest.mark.integration]
probe = pytest.mark.probe


@probe
def test_a_failed_flush_keeps_its_rows_for_the_next_one(tmp_path):
    where = tmp_path / "pred"
    where.write_text("a file where the folder belongs: every write under it fails")
    log = PredictionLog(where, flush_rows=10**6)
    log.add("r1", "u1", ["a", "b"], 1, "stable", np.array([0.2, 0.1]))
    with pytest.raises(OSError):
        log.flush()
    log.add("r2", "u2", ["c"], 1, "stable", np.array([0.5]))
    assert log.buffered_rows == 3 and log.flush_failures == 1 and log.rows_dropped == 0
    where.unlink()
    assert log.flush() is not None
    frame = read_predictions(where)
    assert frame["request_id"].tolist() == ["r1", "r1", "r2"]  # nothing lost, in order
    assert log.buffered_rows == 0


@probe
def test_while_flushes_fail_memory_is_bounded_and_drops_are_counted(tmp_path):
    where = tmp_path / "pred"
    where.write_text("not a folder")
    log = PredictionLog(where, flush_rows=4, max_buffered_rows=10)
    for i in range(20):  # each add reaches flush_rows and tries an inline flush, which fails
        log.add(f"r{i}", "u", ["a", "b"], 1, "stable", np.array([0.2, 0.1]))
    assert log.buffered_rows <= 10
    assert log.rows_dropped == 40 - log.buffered_rows
    where.unlink()
    log.flush()
    kept = read_predictions(where)["request_id"].unique().tolist()
    assert kept == [f"r{i}" for i in range(20 - len(kept), 20)]  # the newest are kept


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read as a second UID (CI runs as root)")
def test_what_the_server_reads_is_readable_by_another_uid(settings):
    from freshrec.config import ModelSettings
    from freshrec.data.synthetic import generate
    from freshrec.features.training_set import build_training_frame
    from freshrec.model.builder import build_model
    from freshrec.model.export import attach, export_model
    from freshrec.model.repository import ModelRepository
    from freshrec.model.spec import FeatureSpec

    # The tree itself must be reachable by the other UID (pytest's tmp_path is 0700).
    root = Path(tempfile.mkdtemp(prefix="freshrec-uid-"))
    try:
        os.chmod(root, 0o755)
        ds = generate(seed=1, n_events=200, n_users=10, n_items=10, days=1.0)
        frame = build_training_frame(ds.events, ds.users, ds.items)
        spec = FeatureSpec.for_description(ds.description, id_hash_buckets=64, frame=frame)
        ms = ModelSettings(embedding_dim=2, id_hash_buckets=64, deep_units=[4], cross_layers=1, dropout=0.0)
        model = attach(build_model(spec, ms), spec, ms)
        out = export_model(model, root / "export")
        repo = ModelRepository(root / "models", "ctr")
        version = repo.publish(out, {"source": "test"})
        repo.set_label("stable", version)
        log = PredictionLog(root / "predictions")
        log.add("r1", "u1", ["a"], version, "stable", np.array([0.5]))
        log.flush()
        reader = (
            "import os, sys\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "bad = []\n"
            "for top in sys.argv[1:]:\n"
            "    for d, dirs, files in os.walk(top, onerror=lambda e: bad.append(str(e))):\n"
            "        for f in files:\n"
            "            try:\n"
            "                open(os.path.join(d, f), 'rb').read(1)\n"
            "            except OSError as e:\n"
            "                bad.append(str(e))\n"
            "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", reader, str(root / "models"), str(root / "predictions")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert (root / "models" / "ctr" / str(version) / "saved_model.pb").stat().st_mode & 0o777 == 0o644
        assert (root / "models" / "ctr" / str(version)).stat().st_mode & 0o777 == 0o755
        assert all(p.stat().st_mode & 0o777 == 0o644 for p in (root / "predictions").glob("*.parquet"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
