"""Abuse probes against ingest, as a careless or hostile producer of event files would write them (issue 17).

Real parts: ``ingest_file``/``ingest_files`` on files in a temporary folder, the Parquet event log and the
quarantine they write. Tests marked ``probe`` (counted by ``benchmarks/bench_abuse.py``) each failed on the
code before issue 17 (main at 155a79e): the value was accepted into the event log, the whole file was
rejected, or a ``UnicodeDecodeError``/``RecursionError`` escaped.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from freshrec.data.eventlog import EventLog
from freshrec.data.ingest import IngestReport, ingest_file, ingest_files
from freshrec.data.validation import FileFormatError, read_quarantine

pytestmark = [pytest.mark.integration]
probe = pytest.mark.probe

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def _row(i: int, **overrides) -> dict:
    return {
        "event_id": f"e{i}",
        "event_timestamp": f"2024-05-0{1 + i % 3}T10:00:{i % 60:02d}Z",
        "user_id": f"u{i % 4}",
        "item_id": f"i{i % 7}",
        "label": i % 2,
        **overrides,
    }


def _jsonl(path, lines: list) -> object:
    """Write lines: dicts as JSON, bytes as they are, str as UTF-8."""
    with open(path, "wb") as fh:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            fh.write((line.encode() if isinstance(line, str) else line) + b"\n")
    return path


def _stored(settings) -> pd.DataFrame:
    return EventLog(settings.eventlog_dir).read()


def _quarantine(settings) -> pd.DataFrame:
    return read_quarantine(settings.quarantine_dir).set_index("event_id", drop=False)


@probe
@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_overlong_ids_are_quarantined_not_stored(settings, tmp_path, kind):
    rows = [_row(i) for i in range(6)]
    rows[1]["item_id"] = "i" * 100_000
    rows[2]["user_id"] = "u" * (20 * 1024 * 1024)
    rows[3]["event_id"] = "e" * 600
    path = tmp_path / f"long.{kind}"
    if kind == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        _jsonl(path, rows)

    report = ingest_file(path, settings, now=NOW)

    assert (report.received, report.accepted, report.quarantined) == (6, 3, 3)
    assert report.reasons == {"item_id_too_long": 1, "user_id_too_long": 1, "event_id_too_long": 1}
    stored = _stored(settings)
    assert sorted(stored["event_id"]) == ["e0", "e4", "e5"]
    assert stored["user_id"].str.len().max() < 10 and stored["item_id"].str.len().max() < 10
    q = _quarantine(settings)
    assert q.loc["e1", "reasons"] == "item_id_too_long" and len(q.loc["e1", "item_id"]) == 100_000
    assert q.loc["e2", "reasons"] == "user_id_too_long"


def test_id_length_limit_is_a_setting(tmp_path):
    from freshrec.config import load_settings

    settings = load_settings(workdir=tmp_path / "w", data={"max_id_chars": 4})
    pd.DataFrame([_row(0), _row(1, item_id="i2345")]).to_csv(tmp_path / "x.csv", index=False)
    report = ingest_file(tmp_path / "x.csv", settings, now=NOW)
    assert (report.accepted, report.reasons) == (1, {"item_id_too_long": 1})


@probe
def test_jsonl_values_of_the_wrong_type_are_quarantined_with_a_reason(settings, tmp_path):
    path = _jsonl(
        tmp_path / "types.jsonl",
        [
            _row(0),
            _row(1, user_id=["u1"]),
            _row(2, item_id={"x": 1}),
            _row(3, event_timestamp=5),  # a number as a timestamp: 1970-01-01T00:00:05
            _row(4, user_id=True),
            _row(5, item_id=1.5),
            _row(6, event_timestamp=["2024-05-01"]),
            _row(7, event_timestamp=False),
            _row(8, user_id=17, event_timestamp=1_714_557_600),  # an integer id, epoch seconds: fine
        ],
    )

    report = ingest_file(path, settings, now=NOW)

    assert (report.received, report.accepted, report.quarantined) == (9, 2, 7)
    q = _quarantine(settings)["reasons"].to_dict()
    assert q == {
        "e1": "user_id_wrong_type",
        "e2": "item_id_wrong_type",
        "e3": "timestamp_before_min",
        "e4": "user_id_wrong_type",
        "e5": "item_id_wrong_type",
        "e6": "timestamp_wrong_type",
        "e7": "timestamp_wrong_type",
    }
    stored = _stored(settings).set_index("event_id")
    assert sorted(stored.index) == ["e0", "e8"]
    assert stored.loc["e8", "user_id"] == "17"
    assert stored["event_timestamp"].min() >= pd.Timestamp("2024-01-01", tz="UTC")
    assert not stored["user_id"].str.startswith("[").any()


@probe
def test_one_malformed_jsonl_line_quarantines_that_line_only(settings, tmp_path):
    path = _jsonl(
        tmp_path / "one-bad.jsonl",
        [_row(0), _row(1), '{"event_id": "e2", "label": ', _row(3), "[1, 2]", _row(5)],
    )

    report = ingest_file(path, settings, now=NOW)

    assert (report.received, report.accepted, report.quarantined) == (6, 4, 2)
    assert report.reasons == {"line_invalid_json": 1, "line_not_object": 1}
    assert sorted(_stored(settings)["event_id"]) == ["e0", "e1", "e3", "e5"]
    q = read_quarantine(settings.quarantine_dir).sort_values("_line")
    assert q["_line"].tolist() == ["3", "5"]
    assert q["_raw"].tolist() == ['{"event_id": "e2", "label": ', "[1, 2]"]
    assert set(q["source"]) == {str(path)}


@probe
def test_non_utf8_and_deeply_nested_jsonl_lines_are_quarantined(settings, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    nested_value = json.dumps(_row(4, user_id=[[[["x"]]]]))[:-1] + ', "ctx": ' + "[" * 900 + "]" * 900 + "}"
    path = _jsonl(
        tmp_path / "mixed.jsonl",
        [
            _row(0),
            b'{"event_id": "e1", "user_id": "caf\xe9", "item_id": "i", "label": 1}',
            '{"event_id": "e2", "user_id": ' + deep + "}",
            deep,
            _row(3),
            nested_value,
        ],
    )

    report = ingest_file(path, settings, now=NOW)

    assert (report.received, report.accepted, report.quarantined) == (6, 2, 4)
    assert report.reasons == {
        "line_not_utf8": 1,
        "line_too_deep": 2,
        "user_id_wrong_type": 1,
    }
    assert sorted(_stored(settings)["event_id"]) == ["e0", "e3"]
    q = read_quarantine(settings.quarantine_dir)
    assert "caf\\xe9" in q.loc[q["reasons"] == "line_not_utf8", "_raw"].iloc[0]


@probe
def test_unreadable_files_are_file_format_errors_and_the_batch_goes_on(settings, tmp_path):
    good_rows = [_row(i) for i in range(5)]
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in good_rows).encode("utf-16"))
    deep = _jsonl(tmp_path / "deep.jsonl", ["[" * 200_000 + "]" * 200_000])
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    good = tmp_path / "good.csv"
    pd.DataFrame(good_rows).to_csv(good, index=False)

    results = ingest_files([utf16, deep, folder, tmp_path / "missing.jsonl", good], settings, now=NOW)

    errors, last = results[:4], results[4]
    assert all(isinstance(e, FileFormatError) for e in errors), errors
    assert "not UTF-8" in str(errors[0]) and "nested too deep" in str(errors[1])
    assert [e.path for e in errors] == [str(utf16), str(deep), str(folder), str(tmp_path / "missing.jsonl")]
    assert isinstance(last, IngestReport) and last.accepted == 5
    assert EventLog(settings.eventlog_dir).count() == 5


@probe
def test_cli_ingest_of_hostile_files_prints_no_traceback(tmp_path):
    """``freshrec data ingest`` in a subprocess: reasons in the output, errors as one line, exit 1."""
    import subprocess
    import sys

    mixed = _jsonl(tmp_path / "mixed.jsonl", [_row(0), b"\xff\xfe", _row(1, user_id=["u"]), "[" * 50_000])
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff" * 100)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "freshrec.cli",
            "--workdir",
            str(tmp_path / "w"),
            "data",
            "ingest",
            str(mixed),
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out and "RecursionError" not in out and "UnicodeDecodeError" not in out
    assert "bad.jsonl" in out and "not UTF-8" in out
    assert "line_not_utf8" in out and "user_id_wrong_type" in out
    assert EventLog(tmp_path / "w" / "eventlog").count() == 1
