"""The event-log source (positions, time order, new files, restart) and the dedup set."""

from __future__ import annotations

import numpy as np
import pandas as pd

from freshrec.online.sources import EventLogSource, SeenIds


def _events(prefix: str, start: str, n: int, step_s: int = 60) -> pd.DataFrame:
    ts = pd.date_range(start, periods=n, freq=f"{step_s}s", tz="UTC")
    return pd.DataFrame(
        {
            "event_id": [f"{prefix}{i}" for i in range(n)],
            "event_timestamp": ts,
            "user_id": [f"u{i % 7}" for i in range(n)],
            "item_id": [f"i{i % 5}" for i in range(n)],
            "label": np.int8(np.arange(n) % 2),
        }
    )


def _write(root, rel: str, df: pd.DataFrame) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    df.sample(frac=1.0, random_state=0).to_parquet(path)  # unsorted on disk: the source sorts


def test_eventlog_source_time_order_positions_and_restart(tmp_path):
    root, state = tmp_path / "log", tmp_path / "state" / "pos.json"
    _write(root, "date=2024-01-01/a.parquet", _events("a", "2024-01-01 00:00", 30))
    _write(root, "date=2024-01-01/b.parquet", _events("b", "2024-01-01 00:00:30", 30))
    (root / "date=2024-01-01" / ".c.parquet.tmp").write_bytes(b"half written")  # ignored
    src = EventLogSource(root, state)
    b1 = src.poll(25, 0)
    assert len(b1) == 25 and b1.events["event_timestamp"].is_monotonic_increasing
    assert set(b1.events["event_id"].str[0]) == {"a", "b"}  # interleaved by event time
    assert sum(b1.positions.values()) == 25
    src.commit(b1.positions)
    b2 = src.poll(25, 0)  # handed out, never committed: a restart must redeliver it
    assert not set(b1.events["event_id"]) & set(b2.events["event_id"])

    again = EventLogSource(root, state)
    r = again.poll(100, 0)
    assert len(r) == 35 and set(b2.events["event_id"]) <= set(r.events["event_id"])
    assert not set(b1.events["event_id"]) & set(r.events["event_id"])
    assert len(again.poll(10, 0.05)) == 0  # idle: empty batch after the timeout
    # A new partition appears while the source runs: it is followed.
    _write(root, "date=2024-01-02/d.parquet", _events("d", "2024-01-02 00:00", 10))
    d = again.poll(100, 0)
    assert sorted(d.events["event_id"]) == sorted(f"d{i}" for i in range(10))
    assert (d.entered_at > 0).all()
    again.commit(r.positions)
    again.commit(d.positions)
    assert again.lag() == 0
    assert len(EventLogSource(root, state).poll(100, 0)) == 0


def test_seen_ids_bounded_fifo_and_in_batch_repeats():
    seen = SeenIds(capacity=3, ids=["a", "b"])
    assert list(seen.mask_new(["a", "c", "c", "d"])) == [False, True, False, True]
    seen.add(["c", "d"])
    assert len(seen) == 3 and "a" not in seen and "d" in seen
    assert seen.to_list() == ["b", "c", "d"]


def test_eventlog_source_follows_a_real_event_log_and_skips_the_trained_window(tmp_path):
    from freshrec.data.eventlog import EventLog

    log = EventLog(tmp_path / "log")
    log.append(_events("a", "2024-01-01 23:00", 120), source_id="first")  # spans two date partitions
    src = EventLogSource(
        tmp_path / "log", tmp_path / "pos.json", start_after=pd.Timestamp("2024-01-01 23:29:59Z")
    )
    got = src.poll(1000, 0)
    assert len(got) == 90 and got.events["event_timestamp"].min() >= pd.Timestamp("2024-01-01 23:30Z")
    log.append(_events("b", "2024-01-03 00:00", 5), source_id="second")
    assert sorted(src.poll(1000, 0).events["event_id"]) == [f"b{i}" for i in range(5)]
