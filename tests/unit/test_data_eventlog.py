"""The event log: date partitions, atomic and idempotent appends, time-window reads."""

from __future__ import annotations

import pandas as pd
import pytest

from freshrec.data.eventlog import EventLog
from freshrec.data.synthetic import generate


def _events(n: int = 2000, days: float = 5.0, seed: int = 3) -> pd.DataFrame:
    return generate(n_events=n, days=days, n_users=50, n_items=40, seed=seed).events


def test_append_partitions_by_date_and_reads_back_everything(tmp_path):
    ev = _events()
    log = EventLog(tmp_path / "log")
    result = log.append(ev, source_id="batch-1")
    assert (result.written, result.duplicates, result.already_ingested) == (len(ev), 0, False)
    expected_days = sorted(set(ev["event_timestamp"].dt.strftime("%Y-%m-%d")))
    assert [d.isoformat() for d in log.dates()] == expected_days
    for f in log.files():
        assert f.parent.name.startswith("date=") and f.name.startswith("part-") and f.suffix == ".parquet"
        day = pd.read_parquet(f)["event_timestamp"].dt.strftime("%Y-%m-%d").unique().tolist()
        assert day == [f.parent.name.removeprefix("date=")]
    back = log.read()
    pd.testing.assert_frame_equal(
        back, ev.sort_values(["event_timestamp", "event_id"]).reset_index(drop=True)
    )
    assert log.count() == len(ev)
    assert not list((tmp_path / "log" / "_tmp").glob("*"))


def test_reappending_same_source_or_same_rows_writes_nothing(tmp_path):
    ev = _events()
    log = EventLog(tmp_path / "log")
    log.append(ev, source_id="file:abc")
    files = log.files()
    again = log.append(ev, source_id="file:abc")
    assert again.already_ingested and again.written == 0
    # a different source with overlapping rows: the overlap is dropped by event_id
    overlap = pd.concat(
        [ev.iloc[:100], _events(300, seed=99).assign(event_id=lambda d: "new-" + d["event_id"])]
    )
    third = log.append(overlap, source_id="file:def")
    assert (third.written, third.duplicates) == (300, 100)
    assert log.count() == len(ev) + 300
    assert set(files) <= set(log.files())
    # no source id: the content hash identifies the batch
    assert log.append(ev.iloc[:10]).duplicates == 10
    assert log.append(ev.iloc[:10]).already_ingested
    assert {e["source_id"] for e in log.manifest()} >= {"file:abc", "file:def"}


def test_time_window_reads_are_half_open_and_prune_partitions(tmp_path):
    ev = _events(3000, days=10)
    log = EventLog(tmp_path / "log")
    log.append(ev)
    start, end = pd.Timestamp("2024-01-03T06:00:00Z"), pd.Timestamp("2024-01-05T00:00:00Z")
    window = log.read(start, end)
    expected = ev[(ev["event_timestamp"] >= start) & (ev["event_timestamp"] < end)]
    assert len(window) == len(expected) > 0
    assert (
        window["event_id"].tolist()
        == expected.sort_values(["event_timestamp", "event_id"])["event_id"].tolist()
    )
    assert {f.parent.name for f in log.files(start, end)} == {"date=2024-01-03", "date=2024-01-04"}
    # an event exactly at `end` is excluded, one exactly at `start` included
    edge = ev.iloc[[500]]
    t = edge["event_timestamp"].iloc[0]
    assert edge["event_id"].iloc[0] in set(log.read(t, t + pd.Timedelta(seconds=1))["event_id"])
    assert edge["event_id"].iloc[0] not in set(log.read(t - pd.Timedelta(seconds=1), t)["event_id"])
    cols = log.read(start, end, columns=["user_id", "label"])
    assert list(cols.columns) == ["user_id", "label"] and len(cols) == len(expected)
    assert log.read("2030-01-01", "2030-02-01").empty
    with pytest.raises(ValueError, match="unknown column"):
        log.read(columns=["nope"])


def test_empty_log_reads_typed_empty_frame(tmp_path):
    log = EventLog(tmp_path / "missing")
    df = log.read()
    assert df.empty and str(df["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert log.files() == [] and log.count() == 0


def test_failed_append_leaves_nothing_behind(tmp_path):
    ev = _events(500)
    bad = ev.assign(ctx=[1] * 499 + [{"not": "flat"}])  # the last partition cannot be converted to Arrow
    log = EventLog(tmp_path / "log")
    with pytest.raises(Exception, match=r"(?i)conversion|convert|struct|Could not|Expected"):
        log.append(bad, source_id="bad")
    assert log.files() == [] and not log.has_source("bad")
    assert not list((tmp_path / "log" / "_tmp").glob("*"))
    assert log.append(ev, source_id="bad").written == len(ev)


def test_append_rejects_unvalidated_frames(tmp_path):
    ev = _events(10)
    with pytest.raises(ValueError, match="datetime64"):
        EventLog(tmp_path).append(ev.assign(event_timestamp=ev["event_timestamp"].astype(str)))
    with pytest.raises(ValueError, match="missing column"):
        EventLog(tmp_path).append(ev.drop(columns=["label"]))


def test_context_columns_may_differ_between_appends(tmp_path):
    ev = _events(400)
    log = EventLog(tmp_path / "log")
    log.append(ev.iloc[:200].assign(page="home"), source_id="a")
    log.append(ev.iloc[200:], source_id="b")
    back = log.read()
    assert len(back) == 400
    assert back["page"].notna().sum() == 200 and set(back["page"].dropna()) == {"home"}
