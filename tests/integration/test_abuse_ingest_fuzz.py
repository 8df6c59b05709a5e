"""A fuzzed ingest corpus (issue 17): generated, seeded files of good and bad events through ``ingest_files``.

Each generated row carries the outcome the rules give it (accepted, or quarantined with a reason), so the
test checks, over every file and in sum: ``received == accepted + quarantined``; every good row is in the
event log once; every bad row is in the quarantine with its reason; no exception escapes. The corpus mixes
lengths (1 to 2,000 characters, over the 512 limit), encodings (non-ASCII ids, lines not UTF-8), JSON types
(numbers, booleans, lists, objects, null where strings belong), numeric strings ("007", Unix seconds as text),
duplicates inside a file and across files, and truncated files (the last line cut mid-record).
Real parts: ``ingest_files``, the Parquet event log and the quarantine, in a temporary folder.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest

from freshrec.data.eventlog import EventLog
from freshrec.data.ingest import IngestReport, ingest_files
from freshrec.data.validation import read_quarantine

pytestmark = [pytest.mark.integration]

NOW = datetime(2024, 12, 1, tzinfo=UTC)
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-_.:éüßøçñ日本語用户ид😀"


def _id(rng: random.Random, lo: int = 1, hi: int = 64) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(lo, hi)))


def _timestamp(rng: random.Random):
    seconds = rng.randint(1704067200, 1727740800)  # 2024-01-01 .. 2024-10-01
    kind = rng.randrange(4)
    if kind == 0:
        return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
    if kind == 1:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    if kind == 2:
        return seconds  # a JSON number: Unix seconds
    return str(seconds)  # a numeric string: Unix seconds too


class Corpus:
    """Generates rows with their expected outcome; ``good`` ids and ``bad`` id → reason."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.n = 0
        self.good: dict[str, dict] = {}
        self.bad: dict[str, str] = {}
        self.line_reasons: dict[str, int] = {}  # unreadable lines (no event id) by reason

    def _next_id(self) -> str:
        self.n += 1
        return f"s{self.seed}-{self.n}"

    def good_row(self) -> dict:
        rng = self.rng
        user = rng.choice(
            [_id(rng), _id(rng, 1, 3), "007", str(rng.randint(1, 10**6)), rng.randint(1, 10**6)]
        )
        row = {
            "event_id": self._next_id(),
            "event_timestamp": _timestamp(rng),
            "user_id": user,
            "item_id": rng.choice([_id(rng), _id(rng, 500, 512)]),
            "label": rng.choice([0, 1, "0", "1", " 1 ", "true", "false"]),
        }
        self.good[row["event_id"]] = row
        return row

    def bad_row(self) -> dict:
        rng = self.rng
        row = {
            "event_id": self._next_id(),
            "event_timestamp": _timestamp(rng),
            "user_id": _id(rng),
            "item_id": _id(rng),
            "label": rng.choice([0, 1]),
        }
        column, value, reason = rng.choice(
            [
                ("user_id", _id(rng, 513, 2000), "user_id_too_long"),
                ("item_id", _id(rng, 513, 2000), "item_id_too_long"),
                ("item_id", [_id(rng)], "item_id_wrong_type"),
                ("user_id", {"x": 1}, "user_id_wrong_type"),
                ("user_id", 1.5, "user_id_wrong_type"),
                ("item_id", True, "item_id_wrong_type"),
                ("event_timestamp", "not a time", "timestamp_unparseable"),
                ("event_timestamp", [1, 2], "timestamp_wrong_type"),
                ("event_timestamp", 5, "timestamp_before_min"),
                ("event_timestamp", "", "timestamp_missing"),
                ("event_timestamp", None, "timestamp_missing"),
                ("label", 7, "label_not_binary"),
                ("label", "maybe", "label_not_binary"),
                ("label", "", "label_missing"),
                ("user_id", "", "user_id_empty"),
                ("item_id", None, "item_id_empty"),
            ]
        )
        row[column] = value
        self.bad[row["event_id"]] = reason
        return row

    def unreadable(self, reason: str) -> bytes:
        self.line_reasons[reason] = self.line_reasons.get(reason, 0) + 1
        rng = self.rng
        if reason == "line_not_utf8":
            return b'{"event_id": "x' + bytes([rng.randint(0x80, 0xFF)]) + b'", "label": 1}'
        if reason == "line_not_object":
            return json.dumps(rng.choice([[1, 2], "text", 3, None])).encode()
        if reason == "line_too_deep":
            return b"[" * 5000 + b"]" * 5000
        return b'{"event_id": "half", "user_id": '  # line_invalid_json

    def file(self, path, n: int, *, truncated: bool = False, repeat: list[dict] | None = None) -> list[dict]:
        """Write a JSONL file of ``n`` rows (about 1 in 4 bad), some unreadable lines, and repeats."""
        rng = self.rng
        lines: list[bytes] = []
        rows: list[dict] = []
        for _ in range(n):
            roll = rng.random()
            if roll < 0.06:
                lines.append(
                    self.unreadable(rng.choice(["line_not_utf8", "line_not_object", "line_invalid_json"]))
                )
                continue
            row = self.bad_row() if roll < 0.3 else self.good_row()
            rows.append(row)
            lines.append(json.dumps(row).encode())
            if row["event_id"] in self.good and rng.random() < 0.03:  # sent twice in one file
                lines.append(json.dumps({**row}).encode())
                self.line_reasons["dup_in_file"] = self.line_reasons.get("dup_in_file", 0) + 1
        for row in repeat or []:  # rows of an earlier file, sent again
            lines.append(json.dumps(row).encode())
            self.line_reasons["dup_across_files"] = self.line_reasons.get("dup_across_files", 0) + 1
        if rng.random() < 0.5:
            lines.insert(rng.randrange(len(lines)), self.unreadable("line_too_deep"))
        body = b"\n".join(lines) + b"\n"
        if truncated:
            body += b'{"event_id": "cut-off", "event_timestamp": "2024-0'  # the writer died mid-record
            self.line_reasons["line_invalid_json"] = self.line_reasons.get("line_invalid_json", 0) + 1
        path.write_bytes(body)
        return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fuzzed_corpus_every_row_accepted_or_quarantined_with_its_reason(settings, tmp_path, seed):
    corpus = Corpus(seed)
    paths, first_rows = [], []
    for k in range(4):
        path = tmp_path / f"part-{k}.jsonl"
        good_before = [corpus.good[i] for i in list(corpus.good)[:5]]
        rows = corpus.file(path, 150, truncated=(k == 2), repeat=good_before if k == 3 else None)
        first_rows = first_rows or rows
        paths.append(path)

    results = ingest_files(paths, settings, now=NOW)

    assert all(isinstance(r, IngestReport) for r in results), results
    received = sum(r.received for r in results)
    accepted = sum(r.accepted for r in results)
    quarantined = sum(r.quarantined for r in results)
    assert received == accepted + quarantined
    for r in results:
        assert r.received == r.accepted + r.quarantined, r

    stored = EventLog(settings.eventlog_dir).read()
    assert sorted(stored["event_id"]) == sorted(corpus.good)  # every good row, once
    stored = stored.set_index("event_id")
    for eid, row in corpus.good.items():
        assert stored.loc[eid, "user_id"] == str(row["user_id"]).strip()  # "007" stays "007"
    q = read_quarantine(settings.quarantine_dir)
    reasons_of = {}
    for eid, reasons in zip(q["event_id"], q["reasons"], strict=True):
        reasons_of.setdefault(str(eid), []).append(reasons)
    for eid, reason in corpus.bad.items():
        assert eid in reasons_of, f"{eid} ({reason}) not quarantined"
        assert reason in reasons_of[eid][0].split(";"), (eid, reason, reasons_of[eid])
    counts: dict[str, int] = {}
    for r in results:
        for name, n in r.reasons.items():
            counts[name] = counts.get(name, 0) + n
    for reason in ("line_not_utf8", "line_not_object", "line_invalid_json", "line_too_deep"):
        assert counts.get(reason, 0) == corpus.line_reasons.get(reason, 0), (reason, counts)
    assert counts.get("event_id_duplicate", 0) == corpus.line_reasons.get("dup_in_file", 0)
    assert counts.get("event_id_seen", 0) == corpus.line_reasons.get("dup_across_files", 0)
    n_lines = len(corpus.good) + len(corpus.bad) + sum(corpus.line_reasons.values())
    assert received == n_lines
    assert quarantined == received - len(corpus.good)
