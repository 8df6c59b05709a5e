"""Ingesting files: bad files fail cleanly, bad rows go to quarantine, re-ingest is idempotent."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from freshrec.data.eventlog import EventLog
from freshrec.data.ingest import ingest_file, ingest_files, read_event_file
from freshrec.data.validation import FileFormatError, read_quarantine

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def _rows(n: int = 20, prefix: str = "e") -> list[dict]:
    return [
        {
            "event_id": f"{prefix}{i}",
            "event_timestamp": f"2024-05-{1 + i % 3:02d}T10:00:{i % 60:02d}Z",
            "user_id": f"u{i % 4}",
            "item_id": f"i{i % 7}",
            "label": str(i % 2),
        }
        for i in range(n)
    ]


def _write(path, rows, kind):
    df = pd.DataFrame(rows)
    if kind == "csv":
        df.to_csv(path, index=False)
    elif kind == "parquet":
        df.to_parquet(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _outputs(settings) -> list:
    return [
        p
        for d in (settings.eventlog_dir, settings.quarantine_dir)
        if d.exists()
        for p in d.rglob("*")
        if p.is_file()
    ]


@pytest.mark.parametrize("kind", ["csv", "parquet", "jsonl"])
def test_ingest_file_with_bad_rows_quarantines_them(settings, tmp_path, kind):
    rows = _rows(20)
    rows[3]["label"] = "5"
    rows[4]["user_id"] = ""
    rows[4]["event_timestamp"] = "not a time"
    rows[5] = dict(rows[6])  # duplicate event id
    path = _write(tmp_path / f"events.{kind}", rows, kind)

    report = ingest_file(path, settings, now=NOW)

    assert (report.received, report.accepted, report.quarantined) == (20, 17, 3)
    assert report.accepted + report.quarantined == report.received
    assert report.reasons == {
        "label_not_binary": 1,
        "user_id_empty": 1,
        "timestamp_unparseable": 1,
        "event_id_duplicate": 1,
    }
    assert EventLog(settings.eventlog_dir).count() == 17
    q = read_quarantine(settings.quarantine_dir)
    assert len(q) == 3 and set(q["source"]) == {str(path)}
    assert {"ingested_at", "reasons", "event_id", "label"} <= set(q.columns)
    bad = q.set_index("event_id").loc["e3"]
    assert bad["reasons"] == "label_not_binary" and bad["label"] == "5"  # raw value kept as a string
    assert "user_id_empty;timestamp_unparseable" in set(q["reasons"])


def test_reingest_same_file_is_idempotent(settings, tmp_path):
    path = _write(tmp_path / "a.csv", _rows(30), "csv")
    first = ingest_file(path, settings, now=NOW)
    files = EventLog(settings.eventlog_dir).files()
    second = ingest_file(path, settings, now=NOW)
    assert first.accepted == 30 and not first.already_ingested
    assert second.already_ingested and (second.accepted, second.skipped, second.received) == (0, 30, 30)
    assert EventLog(settings.eventlog_dir).files() == files and EventLog(settings.eventlog_dir).count() == 30
    # the same events in another file are quarantined as already seen, not stored twice
    copy = _write(tmp_path / "b.jsonl", _rows(30)[:10] + _rows(5, prefix="new"), "jsonl")
    third = ingest_file(copy, settings, now=NOW)
    assert (third.accepted, third.quarantined, third.reasons) == (5, 10, {"event_id_seen": 10})
    assert EventLog(settings.eventlog_dir).count() == 35


def _truncated_parquet(path):
    _write(path, _rows(50), "parquet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_columns(path):
    pd.DataFrame([{"id": 1, "when": "2024-01-01", "who": "u", "what": "i", "clicked": 1}]).to_csv(
        path, index=False
    )


def _missing_label(path):
    pd.DataFrame(_rows(3)).drop(columns=["label"]).to_csv(path, index=False)


def _jsonl_no_object(path):
    path.write_text('{"event_id": "e3", "label": \n[1, 2]\n')


def _utf16_jsonl(path):
    path.write_bytes("".join(json.dumps(r) + "\n" for r in _rows(3)).encode("utf-16"))


def _empty(path):
    path.write_bytes(b"")


def _ragged_csv(path):
    path.write_text(
        "event_id,event_timestamp,user_id,item_id,label\ne1,2024-01-01,u,i,1\ne2,2024-01-01,u,i,1,extra,more\n"
    )


def _garbage_parquet(path):
    path.write_bytes(b"PAR1 this is not parquet at all")


def _unknown_suffix(path):
    path.write_text("x")


BAD_FILES = [
    ("truncated.parquet", _truncated_parquet, r"not a valid Parquet"),
    ("garbage.parquet", _garbage_parquet, r"not a valid Parquet"),
    ("wrong.csv", _wrong_columns, r"missing required column"),
    ("nolabel.csv", _missing_label, r"missing required column\(s\) \['label'\]"),
    (
        "bad.jsonl",
        _jsonl_no_object,
        r"no JSON records \(line 1: invalid JSON.*line 2: expected a JSON object",
    ),
    ("utf16.jsonl", _utf16_jsonl, r"no JSON records \(line 1: not UTF-8"),
    ("empty.csv", _empty, r"empty file"),
    ("empty.jsonl", _empty, r"empty file"),
    ("ragged.csv", _ragged_csv, r"not a valid CSV"),
    ("events.xlsx", _unknown_suffix, r"unsupported file type"),
]


@pytest.mark.parametrize(("name", "make", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_malformed_file_fails_naming_the_file_and_writes_nothing(settings, tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(FileFormatError, match=message) as err:
        ingest_file(path, settings, now=NOW)
    assert str(path) in str(err.value) and err.value.path == str(path)
    assert _outputs(settings) == []


def test_ingest_files_goes_on_after_a_bad_file(settings, tmp_path):
    good = _write(tmp_path / "good.csv", _rows(10), "csv")
    bad = tmp_path / "bad.jsonl"
    _jsonl_no_object(bad)
    results = ingest_files([bad, good], settings, now=NOW)
    assert isinstance(results[0], FileFormatError) and results[1].accepted == 10


def test_read_event_file_keeps_raw_strings(tmp_path):
    df = read_event_file(_write(tmp_path / "x.csv", _rows(3), "csv"))
    assert df["label"].tolist() == ["0", "1", "0"]
    with pytest.raises(FileNotFoundError):
        read_event_file(tmp_path / "nope.csv")


def test_csv_with_byte_order_mark_and_tsv(settings, tmp_path):
    csv = tmp_path / "bom.csv"
    csv.write_bytes("\ufeff".encode() + pd.DataFrame(_rows(4)).to_csv(index=False).encode())
    assert ingest_file(csv, settings, now=NOW).accepted == 4
    tsv = tmp_path / "x.tsv"
    pd.DataFrame(_rows(3, prefix="t")).to_csv(tsv, sep="\t", index=False)
    assert ingest_file(tsv, settings, now=NOW).accepted == 3
