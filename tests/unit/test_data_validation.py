"""Row validation: every bad row is quarantined with all its reasons; nothing is lost."""

from __future__ import annotations

import pandas as pd
import pytest

from freshrec.data.validation import EVENT_COLUMNS, FileFormatError, count_reasons, validate_events

NOW = pd.Timestamp("2024-06-01T12:00:00Z")
GOOD = {
    "event_id": "e-ok",
    "event_timestamp": "2024-06-01T11:00:00Z",
    "user_id": "u1",
    "item_id": "i1",
    "label": "1",
}

# (name, overrides of a good row, expected reasons joined by ";")
BAD_ROWS = [
    ("label 2", {"label": "2"}, "label_not_binary"),
    ("label -1", {"label": "-1"}, "label_not_binary"),
    ("label 0.5", {"label": "0.5"}, "label_not_binary"),
    ("label text", {"label": "yes"}, "label_not_binary"),
    ("label empty", {"label": ""}, "label_missing"),
    ("label None", {"label": None}, "label_missing"),
    ("user empty", {"user_id": ""}, "user_id_empty"),
    ("user blank", {"user_id": "   "}, "user_id_empty"),
    ("item None", {"item_id": None}, "item_id_empty"),
    ("event_id empty", {"event_id": ""}, "event_id_empty"),
    ("timestamp text", {"event_timestamp": "yesterday"}, "timestamp_unparseable"),
    ("timestamp bad date", {"event_timestamp": "2024-13-45"}, "timestamp_unparseable"),
    ("timestamp empty", {"event_timestamp": ""}, "timestamp_missing"),
    ("timestamp 1h ahead", {"event_timestamp": "2024-06-01T13:00:00Z"}, "timestamp_in_future"),
    ("timestamp year 2999", {"event_timestamp": "2999-01-01"}, "timestamp_in_future"),
    ("epoch in ms", {"event_timestamp": "1717243200000"}, "timestamp_in_future"),
    (
        "several",
        {"label": "7", "user_id": "", "event_timestamp": "nope"},
        "user_id_empty;label_not_binary;timestamp_unparseable",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "expected"), [(o, e) for _, o, e in BAD_ROWS], ids=[n for n, _, _ in BAD_ROWS]
)
def test_bad_row_is_quarantined_with_its_reasons(overrides, expected):
    bad = {**GOOD, "event_id": "e-bad", **{k: v for k, v in overrides.items() if k != "event_id"}}
    if "event_id" in overrides:
        bad["event_id"] = overrides["event_id"]
    df = pd.DataFrame([GOOD, bad])
    result = validate_events(df, now=NOW)
    assert result.received == 2
    assert len(result.accepted) == 1 and result.accepted["event_id"].tolist() == ["e-ok"]
    assert result.quarantined["reasons"].tolist() == [expected]
    # raw values are kept as strings
    assert result.quarantined["user_id"].tolist() == [str(bad["user_id"] or "")]


GOOD_VARIANTS = [
    ("label 0", {"label": "0"}, 0),
    ("label 1.0", {"label": "1.0"}, 1),
    ("label true", {"label": "true"}, 1),
    ("epoch seconds", {"event_timestamp": "1717239600"}, 1),
    ("naive ISO taken as UTC", {"event_timestamp": "2024-06-01 11:00:00"}, 1),
    ("offset ISO", {"event_timestamp": "2024-06-01T13:00:00+02:00"}, 1),
    ("within tolerance", {"event_timestamp": "2024-06-01T12:04:00Z"}, 1),
]


@pytest.mark.parametrize(
    ("overrides", "label"), [(o, lab) for _, o, lab in GOOD_VARIANTS], ids=[n for n, _, _ in GOOD_VARIANTS]
)
def test_good_variants_are_accepted_and_typed(overrides, label):
    result = validate_events(pd.DataFrame([{**GOOD, **overrides}]), now=NOW)
    assert len(result.quarantined) == 0, result.quarantined.to_dict("records")
    acc = result.accepted
    assert list(acc.columns[:5]) == list(EVENT_COLUMNS)
    assert str(acc["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert acc["label"].dtype == "int8" and acc["label"].iloc[0] == label
    assert acc["event_timestamp"].iloc[0] <= NOW + pd.Timedelta(minutes=5)


def test_future_tolerance_is_configurable():
    row = {**GOOD, "event_timestamp": "2024-06-01T12:04:00Z"}
    assert len(validate_events(pd.DataFrame([row]), now=NOW, future_tolerance_s=60).quarantined) == 1
    assert len(validate_events(pd.DataFrame([row]), now=NOW, future_tolerance_s=300).quarantined) == 0


def test_duplicates_in_batch_keep_first_valid_and_against_seen_ids():
    rows = [
        {**GOOD, "event_id": "a", "label": "9"},  # invalid first occurrence
        {**GOOD, "event_id": "a"},  # the first valid one is kept
        {**GOOD, "event_id": "a", "user_id": "u2"},
        {**GOOD, "event_id": "b"},
        {**GOOD, "event_id": "old"},
    ]
    result = validate_events(pd.DataFrame(rows), now=NOW, seen_ids={"old"})
    assert result.accepted["event_id"].tolist() == ["a", "b"]
    assert result.accepted["user_id"].tolist() == ["u1", "u1"]
    assert result.quarantined["reasons"].tolist() == [
        "label_not_binary;event_id_duplicate",
        "event_id_duplicate",
        "event_id_seen",
    ]
    assert result.reasons == {"label_not_binary": 1, "event_id_duplicate": 2, "event_id_seen": 1}


def test_typed_input_and_extra_columns_are_kept():
    df = pd.DataFrame(
        {
            "event_id": ["x1", "x2"],
            "event_timestamp": pd.to_datetime([1_700_000_000, 1_700_000_100], unit="s", utc=True),
            "user_id": [7, 8],
            "item_id": [1.0, 2.0],
            "label": [True, False],
            "page": ["home", "search"],
        }
    )
    result = validate_events(df, now=NOW)
    acc = result.accepted
    assert acc["user_id"].tolist() == ["7", "8"] and acc["item_id"].tolist() == ["1", "2"]
    assert acc["label"].tolist() == [1, 0] and acc["page"].tolist() == ["home", "search"]


def test_counts_reconcile_on_a_mixed_batch():
    rows = [dict(GOOD, event_id=f"g{i}") for i in range(50)]
    rows += [dict(GOOD, event_id=f"b{i}", label=str(i + 2)) for i in range(30)]
    rows += [dict(GOOD, event_id="g0")] * 5
    result = validate_events(pd.DataFrame(rows), now=NOW)
    assert (result.received, len(result.accepted), len(result.quarantined)) == (85, 50, 35)
    assert count_reasons(result.quarantined["reasons"]) == {"label_not_binary": 30, "event_id_duplicate": 5}


def test_empty_batch_and_missing_columns():
    empty = pd.DataFrame(columns=list(EVENT_COLUMNS))
    result = validate_events(empty, now=NOW)
    assert result.received == 0 and result.accepted.empty and result.quarantined.empty
    with pytest.raises(FileFormatError, match=r"my\.csv.*missing required column.*label"):
        validate_events(pd.DataFrame([{k: v for k, v in GOOD.items() if k != "label"}]), source="my.csv")


def test_the_whitespace_list_is_what_python_strips():
    import sys

    from freshrec.data.validation import PY_WHITESPACE

    assert set(PY_WHITESPACE) == {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}


def _strings(rows: list[dict]) -> pd.DataFrame:
    """A batch as CSV gives it: every cell a str (the vectorised paths)."""
    return pd.DataFrame([{**GOOD, **r} for r in rows], dtype=object)


def test_unicode_whitespace_lengths_and_digits_follow_python_string_rules():
    rows = [
        {"event_id": "e1", "user_id": "\u3000u1\u2028", "item_id": "\x1ci1\x85"},  # stripped like str.strip
        {"event_id": "e2", "user_id": "\u00a0\x1f"},  # blank once stripped
        {"event_id": "e3", "item_id": "é" * 513},  # 513 characters (1026 bytes): too long
        {"event_id": "e4", "item_id": "😀" * 512},  # 512 characters (2048 bytes): fine
        {"event_id": "e5", "event_timestamp": "١٧١٧٢٤٣٢٠٠"},  # Arabic-Indic digits: not Unix seconds
        {"event_id": "e6", "event_timestamp": " 1717243200 "},  # Unix seconds as text, padded
        {"event_id": "e7", "label": "\u3000TRUE\t"},
        {"event_id": "\u2003e8\u2003"},
    ]
    res = validate_events(_strings(rows), now=NOW)
    acc = res.accepted.set_index("event_id")
    assert sorted(acc.index) == ["e1", "e4", "e6", "e7", "e8"]
    assert (acc.loc["e1", "user_id"], acc.loc["e1", "item_id"]) == ("u1", "i1")
    assert acc.loc["e6", "event_timestamp"] == pd.Timestamp(1717243200, unit="s", tz="UTC")
    assert acc.loc["e7", "label"] == 1
    reasons = dict(zip(res.quarantined["event_id"], res.quarantined["reasons"], strict=True))
    assert reasons == {
        "e2": "user_id_empty",
        "e3": "item_id_too_long",
        "e5": "timestamp_unparseable",
    }


def test_ids_with_lone_surrogates_are_compared_exactly():
    """JSON can carry "\\ud800" escapes; such ids are not folded together (pd.factorize would)."""
    rows = [{"event_id": "\ud800"}, {"event_id": "a\ud800b"}, {"event_id": "\ud800"}, {"event_id": "x"}]
    res = validate_events(_strings(rows), now=NOW, seen_ids={"x"})
    assert list(res.accepted["event_id"]) == ["\ud800", "a\ud800b"]
    assert list(res.quarantined["reasons"]) == ["event_id_duplicate", "event_id_seen"]


def test_a_naive_timestamp_is_utc_whatever_the_rows_before_it_carry():
    """pandas (2.3), parsing a column at once, gives a naive cell the offset of an aware cell before it."""
    rows = [
        {"event_id": "a1", "event_timestamp": "2024-05-01T10:00:00+02:00"},
        {"event_id": "n1", "event_timestamp": "2024-05-01T10:00:00.5"},  # a plain form
        {"event_id": "a2", "event_timestamp": "2024-05-01T10:00:00.1234567890+02:00"},  # 10 digits: pandas
        {"event_id": "n2", "event_timestamp": "2024-05-01T10:00"},  # no seconds: pandas
        {"event_id": "n3", "event_timestamp": "2024-05-01 10:00:00.1234567890"},
    ]
    acc = validate_events(_strings(rows), now=NOW).accepted.set_index("event_id")["event_timestamp"]
    assert acc["a1"] == pd.Timestamp("2024-05-01T08:00:00Z")
    assert acc["n1"] == pd.Timestamp("2024-05-01T10:00:00.5Z")
    assert acc["a2"] == pd.Timestamp("2024-05-01T08:00:00.123456789Z")
    assert acc["n2"] == pd.Timestamp("2024-05-01T10:00:00Z")
    assert acc["n3"] == pd.Timestamp("2024-05-01T10:00:00.123456789Z")


def test_plain_iso_timestamps_match_pandas_cell_by_cell():
    """The direct computation of the plain forms against ``pd.to_datetime`` of each cell alone."""
    import random

    rng = random.Random(3)
    cells = []
    for _ in range(3000):
        y = rng.choice([1677, 1678, 1900, 1970, 2000, 2024, 2100, 2261, 2262])
        date = f"{y:04d}-{rng.randint(0, 13):02d}-{rng.randint(0, 32):02d}"
        time = f"{rng.randint(0, 25):02d}:{rng.choice([0, 59, 60]):02d}:{rng.choice([0, 59, 60]):02d}"
        frac = rng.choice(["", ".5", ".123456789", ".0000001"])
        tz = rng.choice(["", "Z", "+00:00", "-05:30", "+23:59", "+24:00", "+00:60"])
        cells.append(date if rng.random() < 0.2 else f"{date}{rng.choice('T ')}{time}{frac}{tz}")
    from freshrec.data.validation import parse_timestamps

    got, _ = parse_timestamps(pd.Series(cells, dtype=object))
    want = [pd.to_datetime(pd.Series([c]), format="ISO8601", utc=True, errors="coerce")[0] for c in cells]
    assert [None if pd.isna(g) else g for g in got] == [None if pd.isna(w) else w for w in want]
    assert got.notna().sum() > 300  # the corpus has valid cells too


def test_plain_iso_timestamps_of_one_length_match_pandas_cell_by_cell():
    """A column of one writer's format (every cell the same length): read as one grid of bytes."""
    import random

    from freshrec.data.validation import parse_timestamps

    rng = random.Random(4)
    for form in (
        "{}-{}-{}T{}:{}:{}+{}:{}",
        "{}-{}-{} {}:{}:{}-{}:{}",
        "{}-{}-{}T{}:{}:{}Z",
        "{}-{}-{} {}:{}:{}",
    ):
        cells = []
        for _ in range(1500):
            fields = [
                f"{rng.choice([1677, 1678, 1970, 2024, 2100, 2261, 2262]):04d}",
                *(f"{rng.randint(lo, hi):02d}" for lo, hi in ((0, 13), (0, 32), (0, 25), (0, 60), (0, 60))),
                f"{rng.randint(0, 25):02d}",
                f"{rng.choice([0, 30, 59, 60]):02d}",
            ]
            cells.append(form.format(*fields[: form.count("{}")]))
        got, _ = parse_timestamps(pd.Series(cells, dtype=object))
        want = [pd.to_datetime(pd.Series([c]), format="ISO8601", utc=True, errors="coerce")[0] for c in cells]
        assert [None if pd.isna(g) else g for g in got] == [None if pd.isna(w) else w for w in want], form
        assert got.notna().sum() > 100
