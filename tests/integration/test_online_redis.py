"""The learner as a real process on a real Redis stream: SIGKILL mid-stream, restart, exactly-once totals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from freshrec.config import ModelSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _publish_bootstrap_model(settings, events: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> int:
    """An untrained small DCN over the synthetic data's spec, published and labelled stable."""
    from freshrec.features.training_set import build_training_frame
    from freshrec.model.builder import build_model
    from freshrec.model.export import attach, export_model
    from freshrec.model.repository import ModelRepository
    from freshrec.model.spec import FeatureSpec

    frame = build_training_frame(events, users, items)
    desc = {"features": {c: "categorical" for c in ("user_gender", "user_occupation", "user_zip_prefix")}}
    desc["features"].update(
        {"user_age": "numeric", "item_genres": "multi_categorical", "item_year": "numeric"}
    )
    spec = FeatureSpec.for_description(desc, id_hash_buckets=512, frame=frame)
    ms = ModelSettings(embedding_dim=4, id_hash_buckets=512, deep_units=[16], cross_layers=1, dropout=0.0)
    model = attach(build_model(spec, ms), spec, ms)
    out = export_model(model, settings.workdir / "export-bootstrap")
    repo = ModelRepository(settings.models_dir, settings.model.name)
    version = repo.publish(out, {"source": "test"})
    repo.set_label("stable", version)
    return version


def _checkpoint_totals(state_dir: Path) -> dict | None:
    try:
        name = (state_dir / "CURRENT").read_text().strip()
        return json.loads((state_dir / name / "state.json").read_text())["totals"]
    except (OSError, ValueError, KeyError):
        return None  # between two checkpoints: the old one was just removed


def test_sigkill_mid_stream_then_restart_counts_every_event_once(settings, redis_url, tmp_path):
    import redis

    from freshrec.data.synthetic import generate
    from freshrec.online.sources import RedisStreamSource, publish_events

    ds = generate(seed=3, n_events=3000, n_users=80, n_items=60, days=5.0)
    settings.tables_dir.mkdir(parents=True, exist_ok=True)
    ds.users.to_parquet(settings.tables_dir / "users.parquet")
    ds.items.to_parquet(settings.tables_dir / "items.parquet")
    _publish_bootstrap_model(settings, ds.events.iloc[:500], ds.users, ds.items)

    stream = f"freshrec:test:{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    online = {
        "source": "redis",
        "redis_url": redis_url,
        "stream": stream,
        "group": "learners",
        "consumer": "learner-a",
        "micro_batch": 100,
        "export_every_events": 10**9,
        "export_every_s": 1e9,
        "push_features": False,
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"workdir": str(settings.workdir), "online": online}))
    events = ds.events.copy()
    # Malformed rows are quarantined, not learned and not lost.
    bad = events.iloc[:3].copy()
    bad["event_id"] = ["bad-1", "bad-2", "bad-3"]
    bad["label"] = ["7", "", "x"]
    publish_events(client, stream, pd.concat([events, bad], ignore_index=True))
    try:
        cmd = [
            sys.executable,
            "-m",
            "freshrec.cli",
            "--config",
            str(cfg),
            "online",
            "--until-idle",
            "--no-push",
        ]
        cmd += ["--idle-timeout", "3"]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        state_dir = settings.state_dir / "online" / settings.model.name
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            totals = _checkpoint_totals(state_dir)
            if totals and totals["received"] >= 1000:
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.05)
        else:
            proc.kill()
            pytest.fail("learner made no checkpoint with 1000 events in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        killed_at = _checkpoint_totals(state_dir)
        assert killed_at is not None and 0 < killed_at["received"] < len(events)
        source = RedisStreamSource(client, stream, "learners", "inspector")
        # Almost always > 0 (delivered to the dead learner, never acknowledged); 0 only if the kill landed
        # in the instant between an XACK and the next read, so it is not asserted.
        pending_at_kill = source.pending_count()

        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        totals = _checkpoint_totals(state_dir)
        assert totals is not None
        assert totals["scored"] == len(events) and totals["learned"] == len(events)
        assert totals["quarantined"] == 3
        assert totals["received"] - totals["duplicates"] == len(events) + 3
        assert source.pending_count() == 0, f"pending at kill {pending_at_kill}, not drained"
        from freshrec.data.validation import read_quarantine

        quarantined = read_quarantine(settings.quarantine_dir)
        assert sorted(quarantined["event_id"]) == ["bad-1", "bad-2", "bad-3"]
    finally:
        client.delete(stream)
