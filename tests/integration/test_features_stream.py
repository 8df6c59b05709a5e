"""The stream feature job against a real Feast store (SQLite locally, Redis + PostgreSQL registry).

Parity: after the job has consumed an event log, its state and the rows in the online store equal the
batch point-in-time features (``compute_activity``'s tail rows / ``build_training_frame``) on the same
events; a poisoned entry is quarantined and the job goes on; kill -9 mid-stream then a restart loses and
duplicates nothing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from freshrec.features import store
from freshrec.features.activity import ITEM_ACTIVITY, USER_ACTIVITY, activity_as_of_events, compute_activity
from freshrec.features.stream import CHECKPOINT_FILE, build_stream_job, stream_state_dir
from freshrec.io import atomic_write_parquet

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def prepared(settings):
    """A small synthetic dataset prepared (profiles, event log), the Feast repo applied, nothing pushed."""
    from freshrec.data.prepare import prepare_dataset
    from freshrec.data.synthetic import generate

    ds = generate(seed=5, n_users=30, n_items=25, n_events=1200, days=45.0)
    prepare_dataset(ds, settings)
    store.apply(settings)
    events = ds.events.sort_values(["event_timestamp", "event_id"]).reset_index(drop=True)
    return settings, events


def _log_events(settings, events: pd.DataFrame, parts: int = 4) -> None:
    """Replace the event log by ``events`` in ``parts`` files (the job follows the log's tail)."""
    import shutil

    shutil.rmtree(settings.eventlog_dir, ignore_errors=True)
    for k, chunk in enumerate(np.array_split(np.arange(len(events)), parts)):
        atomic_write_parquet(
            events.iloc[chunk].reset_index(drop=True), settings.eventlog_dir / f"part-{k:03d}.parquet"
        )


def _stored(settings, entity: str, ids: list[str]) -> pd.DataFrame:
    online = store.OnlineFeatures(settings)
    if entity == "user":
        frames = [online.lookup(u, ["-"]).iloc[[0]] for u in ids]
        cols = USER_ACTIVITY
    else:
        frames = [online.lookup("-", ids)]
        cols = ITEM_ACTIVITY
    out = pd.concat(frames, ignore_index=True)
    return out[cols].reset_index(drop=True)


def _check_store_equals_batch(settings, events: pd.DataFrame) -> None:
    user_rows, item_rows = compute_activity(events)
    for entity, rows, cols in (("user", user_rows, USER_ACTIVITY), ("item", item_rows, ITEM_ACTIVITY)):
        tail = rows.groupby(f"{entity}_id", sort=True).tail(1).sort_values(f"{entity}_id")
        got = _stored(settings, entity, tail[f"{entity}_id"].tolist())
        np.testing.assert_allclose(got[cols].to_numpy(), tail[cols].to_numpy(), rtol=1e-6, atol=1e-6)


def test_stream_state_and_store_equal_batch_point_in_time_features(prepared):
    settings, events = prepared
    _log_events(settings, events)
    job = build_stream_job(settings, "eventlog")
    stats = job.run(until_idle=True)
    assert stats.accepted == len(events) and stats.duplicates == 0 and stats.quarantined == 0
    assert stats.rows_written > 0
    _check_store_equals_batch(settings, events)
    # the state answers point-in-time queries exactly as the batch training set does
    want = activity_as_of_events(events)
    ts = events["event_timestamp"]
    got_user = job.state.user_rows(events["user_id"].astype(str), ts)
    got_item = job.state.item_rows(events["item_id"].astype(str), ts)
    np.testing.assert_allclose(got_user[USER_ACTIVITY].to_numpy(), want[USER_ACTIVITY].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(got_item[ITEM_ACTIVITY].to_numpy(), want[ITEM_ACTIVITY].to_numpy(), rtol=1e-6)
    # freshness was measured and exported
    assert job.freshness_quantiles()["p99"] is not None
    text = job.textfile().read_text()
    assert "freshrec_stream_features_freshness_seconds_count" in text
    # a restarted job resumes from its checkpoint: nothing left to read, nothing counted twice
    again = build_stream_job(settings, "eventlog")
    assert again.stats.accepted == len(events)
    again.run(until_idle=True)
    assert again.stats.accepted == len(events) and again.stats.duplicates == 0


def _checkpoint_stats(settings) -> dict | None:
    path = stream_state_dir(settings) / CHECKPOINT_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"]))["stats"]
    except (OSError, ValueError, KeyError):
        return None


def test_kill_9_mid_stream_then_restart_loses_and_duplicates_nothing_and_poison_is_set_aside(
    prepared, redis_url, tmp_path
):
    """The cluster path: Redis Streams consumer group → job (a real ``freshrec features stream`` process)
    → SQLite online store. Killed with SIGKILL mid-stream, restarted, the store equals the batch features."""
    import redis
    import yaml

    from freshrec.online.sources import RedisStreamSource, publish_events

    settings, events = prepared
    stream = f"freshrec:test:stream-features:{uuid.uuid4().hex[:8]}"
    group = f"features-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(redis_url)
    bad = events.iloc[:3].copy()
    bad["event_id"] = ["bad-1", "bad-2", "bad-3"]
    bad["label"] = ["7", "", "x"]  # poisoned entries: quarantined, never retried, the job goes on
    stream_events = pd.concat([events.iloc[:400], bad, events.iloc[400:]], ignore_index=True)
    publish_events(client, stream, stream_events)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "workdir": str(settings.workdir),
                "data": {"datasets_dir": str(settings.data.datasets_dir)},
                "features": {
                    "repo_dir": str(settings.features.repo_dir),
                    "stream": {"group": group, "consumer": "features-a", "checkpoint_every_s": 0.0},
                },
                "online": {"source": "redis", "redis_url": redis_url, "stream": stream},
            }
        )
    )
    cmd = [sys.executable, "-m", "freshrec.cli", "--config", str(cfg), "features", "stream", "--until-idle"]
    try:
        proc = subprocess.Popen(
            [*cmd, "--max-batch-events", "20"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            stats = _checkpoint_stats(settings)
            if stats and stats["accepted"] >= 300:
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.02)
        else:
            proc.kill()
            pytest.fail("the stream job made no checkpoint with 300 events in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        killed = _checkpoint_stats(settings)
        assert killed is not None and 0 < killed["accepted"] < len(events)

        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "rows written" in done.stdout
        stats = _checkpoint_stats(settings)
        assert stats["accepted"] == len(events), stats
        assert stats["quarantined"] == 3
        assert stats["received"] - stats["duplicates"] == len(events) + 3
        assert RedisStreamSource(client, stream, group, "inspector").pending_count() == 0
        quarantined = pd.concat(
            [pd.read_parquet(p) for p in settings.quarantine_dir.rglob("*.parquet")], ignore_index=True
        )
        assert sorted(quarantined["event_id"]) == ["bad-1", "bad-2", "bad-3"]
        _check_store_equals_batch(settings, events)
    finally:
        client.delete(stream)


def test_redis_online_store_rows_equal_batch_and_read_back_through_feast(prepared, redis_url, postgres_dsn):
    """The cluster store: the job's bulk Redis writes are Feast's layout (Feast's own ``online_read`` reads
    them) and equal the batch features; a late event never moves a row back in event time."""
    from freshrec.features.stream import StreamFeatureJob

    settings, events = prepared
    rest = redis_url.split("://", 1)[1]
    hostport, _, db = rest.partition("/")
    project = f"freshrec_test_{uuid.uuid4().hex[:8]}"
    redis_settings = settings.model_copy(
        update={
            "features": settings.features.model_copy(
                update={
                    "environment": "redis",
                    "project": project,
                    "redis_connection": f"{hostport},db={db or 0}",
                    "postgres_url": postgres_dsn,
                }
            )
        }
    )
    try:
        store.apply(redis_settings)
        job = StreamFeatureJob(redis_settings)
        for chunk in np.array_split(np.arange(len(events)), 7):
            job.process(events.iloc[chunk])
        _check_store_equals_batch(redis_settings, events)
        via_feast = store.OnlineFeatures(redis_settings)
        via_feast._redis = None  # Feast's own online_read
        ids = events["item_id"].drop_duplicates().iloc[:10].tolist()
        pd.testing.assert_frame_equal(
            store.OnlineFeatures(redis_settings).lookup("u", ids), via_feast.lookup("u", ids)
        )
        # a late event (older than the item's newest): the row's stamp still moves forward, the value follows
        item = ids[0]
        late = events[events["item_id"] == item].iloc[[0]].copy()
        late["event_id"] = "late-1"
        before = via_feast.lookup("u", [item])["item_events_total"].iloc[0]
        job.process(late)
        after = store.OnlineFeatures(redis_settings).lookup("u", [item])["item_events_total"].iloc[0]
        assert after == before + 1
    finally:
        fs = store.feature_store(redis_settings)
        fs._get_provider().online_store.teardown(fs.config, fs.list_feature_views(), fs.list_entities())
        fs.registry.delete_project(project, commit=True)


def test_cli_without_an_applied_store_says_what_to_do(settings):
    """A user's mistake (no `features apply` yet) is a clear error and exit 1, not a traceback."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "freshrec.cli",
            "--workdir",
            str(settings.workdir),
            "features",
            "stream",
            "--until-idle",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "freshrec features apply" in " ".join(done.stdout.split())
    assert "Traceback" not in done.stdout + done.stderr


def test_cli_waits_for_the_store_then_says_what_to_do(settings, tmp_path):
    """--wait-for-store-s (a new cluster, before `feast apply`): it waits, beats, then fails clearly."""
    beat = tmp_path / "heartbeat"
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable, "-m", "freshrec.cli", "--workdir", str(settings.workdir),
            "features", "stream", "--until-idle", "--wait-for-store-s=8", f"--heartbeat={beat}",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert time.monotonic() - started >= 8
    out = " ".join(done.stdout.split())
    assert "waiting up to 8 s" in out and "freshrec features apply" in out
    assert beat.is_file()
    assert "Traceback" not in done.stdout + done.stderr
