"""The event sink as the cluster runs it: ``freshrec data sink`` on a real Redis stream into a real event log.

Good entries reach the event log once (a redelivery after a crash adds nothing), bad ones the quarantine
with their reasons (or, for entries that are no event at all, the dead-letter stream), and every entry of
the sink's group is acknowledged.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _events(n: int, start: int = 0) -> pd.DataFrame:
    now = pd.Timestamp.now(tz="UTC").floor("s")
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(start, start + n)],
            "event_timestamp": [now - pd.Timedelta(seconds=n - i) for i in range(n)],
            "user_id": [f"u{i % 7}" for i in range(n)],
            "item_id": [f"i{i % 11}" for i in range(n)],
            "label": [i % 2 for i in range(n)],
        }
    )


def test_sink_appends_the_stream_to_the_event_log(settings, redis_url, tmp_path):
    import redis

    from freshrec.data.eventlog import EventLog
    from freshrec.online.sources import publish_events

    stream = f"freshrec:test-sink:{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    try:
        publish_events(client, stream, _events(300))
        now = pd.Timestamp.now(tz="UTC").isoformat()
        client.xadd(
            stream,
            {"event_id": "bad-1", "event_timestamp": now, "user_id": "u1", "item_id": "i1", "label": "7"},
        )
        # Not an event at all (no timestamp field): set aside in the dead-letter stream by the source.
        client.xadd(stream, {"event_id": "bad-2", "user_id": "u1", "item_id": "i1", "label": "1"})
        publish_events(client, stream, _events(50, start=250))  # 50 redeliveries of ids already sent
        heartbeat = tmp_path / "heartbeat"
        env = {
            "FRESHREC_WORKDIR": str(settings.workdir),
            "FRESHREC_ONLINE__REDIS_URL": redis_url,
            "FRESHREC_ONLINE__STREAM": stream,
            "PATH": str(Path(sys.executable).parent),
        }
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "freshrec"), "data", "sink", f"--heartbeat={heartbeat}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            log = EventLog(settings.eventlog_dir)
            while time.monotonic() < deadline:
                if settings.eventlog_dir.exists() and len(log.read()) >= 300 and heartbeat.exists():
                    break
                time.sleep(0.3)
            time.sleep(1.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            out = proc.communicate(timeout=30)[0].decode()
        assert proc.returncode == 0, out
        events = log.read()
        assert sorted(events["event_id"]) == sorted(f"e{i}" for i in range(300)), out
        quarantined = pd.concat(pd.read_parquet(p) for p in settings.quarantine_dir.rglob("*.parquet"))
        reasons = dict(zip(quarantined["event_id"], quarantined["reasons"], strict=True))
        assert reasons.pop("bad-1") == "label_not_binary"
        ((_, dead),) = client.xrange(f"{stream}:dead")
        assert (
            dead[b"event_id"] == b"bad-2" and dead[b"_dead_reason"] == b"entry_missing_field:event_timestamp"
        )
        # Ids sent twice in one batch are the validator's duplicates; across batches the log drops them.
        assert set(reasons) == {f"e{i}" for i in range(250, 300)}
        assert {r for r in reasons.values()} == {"event_id_duplicate"}
        assert client.xpending(stream, "freshrec-eventlog")["pending"] == 0
        assert "351 received, 300 appended" in " ".join(out.split()), out
    finally:
        client.delete(stream, f"{stream}:dead")
