"""Event schema, row validation and quarantine.

Every row handed to :func:`validate_events` comes back either accepted (typed to the event schema) or
quarantined with *all* the reasons it failed, joined by ``;``. ``accepted + quarantined == received`` is
checked on every call, so no row can be lost silently.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from freshrec.io import atomic_write_parquet

log = logging.getLogger(__name__)

EVENT_COLUMNS: tuple[str, ...] = ("event_id", "event_timestamp", "user_id", "item_id", "label")
ID_COLUMNS: tuple[str, ...] = ("event_id", "user_id", "item_id")

# Reason codes, stable strings: reports, tests and dashboards count them by name.
EVENT_ID_EMPTY = "event_id_empty"
USER_ID_EMPTY = "user_id_empty"
ITEM_ID_EMPTY = "item_id_empty"
LABEL_MISSING = "label_missing"
LABEL_NOT_BINARY = "label_not_binary"
TIMESTAMP_MISSING = "timestamp_missing"
TIMESTAMP_UNPARSEABLE = "timestamp_unparseable"
TIMESTAMP_IN_FUTURE = "timestamp_in_future"
EVENT_ID_DUPLICATE = "event_id_duplicate"  # repeated inside the batch (the first valid one is kept)
EVENT_ID_SEEN = "event_id_seen"  # already in the event log
TIMESTAMP_WRONG_TYPE = "timestamp_wrong_type"  # a list, object or boolean (JSON) where a time belongs
TIMESTAMP_BEFORE_MIN = "timestamp_before_min"  # before ``min_event_time`` (e.g. a stray number -> 1970)
# "<id column>_too_long" and "<id column>_wrong_type" (a list, object, boolean or fraction as an id)
TOO_LONG = "_too_long"
WRONG_TYPE = "_wrong_type"
# a JSONL line that is not an event object (set by the reader; the line is kept in ``_raw``)
LINE_NOT_UTF8 = "line_not_utf8"
LINE_INVALID_JSON = "line_invalid_json"
LINE_TOO_DEEP = "line_too_deep"
LINE_NOT_OBJECT = "line_not_object"
# Columns a reader may add: ``_read_error`` (a reason code above) marks a record it could not read,
# ``_raw``/``_line`` keep that record's text and line number. They never reach the accepted rows.
READ_ERROR = "_read_error"
READER_COLUMNS: tuple[str, ...] = (READ_ERROR, "_raw", "_line")

MAX_ID_CHARS = 512
MIN_EVENT_TIME = pd.Timestamp("1990-01-01", tz="UTC")

# The characters Python's ``str.strip()`` removes (``str.isspace``; a unit test checks this list against
# every code point). The vectorised paths below find the cells that need Python at all with Arrow and
# leave every decision to the same Python/pandas rules as before, so a fast path never changes an outcome.
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_NUMERIC_TEXT = r"-?\d+(\.\d+)?"  # Unix seconds as text (Python's \d: any Unicode decimal digit)
_ASCII_NUMERIC_TEXT = r"^-?[0-9]+(\.[0-9]+)?$"  # the same for ASCII cells (RE2)


def _arrow_strings(values: np.ndarray):  # -> pa.StringArray | None (pyarrow imported lazily)
    """An object array of ``str`` as an Arrow string array; None where Arrow cannot hold one (a lone
    surrogate from a JSON escape, more than 2 GiB of text): the caller then takes the pure-Python path."""
    import pyarrow as pa

    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowException, UnicodeError, TypeError, ValueError):
        return None


# UTF-8 bytes that can begin / end a character of PY_WHITESPACE (a superset: Python decides those cells)
_WS_FIRST = np.zeros(256, dtype=bool)
_WS_FIRST[[ord(c) for c in PY_WHITESPACE if ord(c) < 0x80] + [0xC2, 0xE1, 0xE2, 0xE3]] = True
_WS_LAST = np.zeros(256, dtype=bool)
_WS_LAST[[ord(c) for c in PY_WHITESPACE if ord(c) < 0x80]] = True
_WS_LAST[[c.encode()[-1] for c in PY_WHITESPACE if ord(c) >= 0x80]] = True


def _string_bytes(arr) -> tuple[np.ndarray, np.ndarray]:
    """(offsets as int64, UTF-8 data) of an Arrow string array, without copying the data."""
    _, offsets_buf, data_buf = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    return offsets, data if len(data) else np.zeros(1, np.uint8)


def _edge_space(arr) -> np.ndarray:
    """Cells whose first or last byte may belong to a whitespace character (``str.strip`` may change
    them); a superset of those cells, never missing one."""
    offsets, data = _string_bytes(arr)
    start, end = offsets[:-1], offsets[1:]
    nonempty = end > start
    last = len(data) - 1
    first_b = data[np.minimum(start, last)]
    last_b = data[np.clip(end - 1, 0, last)]
    return nonempty & (_WS_FIRST[first_b] | _WS_LAST[last_b])


def _all_str(values: pd.Series | np.ndarray) -> bool:
    return pd.api.types.infer_dtype(values, skipna=False) == "string"


def _string_codes(values: pd.Series) -> tuple[np.ndarray, list[str]] | None:
    """One integer per distinct string (Arrow compares the UTF-8 bytes) and the distinct strings; None
    unless every cell is a ``str`` Arrow can hold. (Not ``pd.factorize``: it folds strings holding lone
    surrogates into one.)"""
    if not (len(values) and _all_str(values)):
        return None
    arr = _arrow_strings(values.to_numpy(dtype=object))
    if arr is None:
        return None
    encoded = arr.dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist()


class FileFormatError(ValueError):
    """A file that cannot be read as events at all (bad CSV/Parquet/JSONL, wrong or missing columns)."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class ValidationResult:
    """Outcome of one validation call.

    Attributes:
        accepted: rows in the event schema (``event_id``/``user_id``/``item_id`` str,
            ``event_timestamp`` datetime64[ns, UTC], ``label`` int8) plus any extra columns.
        quarantined: the rejected rows, every value as a string, with a ``reasons`` column.
        received: number of input rows.
    """

    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    received: int
    reasons: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.accepted) + len(self.quarantined) != self.received:
            raise AssertionError(
                f"validation lost rows: accepted {len(self.accepted)} + quarantined {len(self.quarantined)}"
                f" != received {self.received}"
            )


def id_strings(values: pd.Series) -> pd.Series:
    """Ids as stripped strings; missing values become "". Integral floats lose their ".0"."""
    return _id_strings(values)[0]


def _id_strings(values: pd.Series) -> tuple[pd.Series, Any]:
    """:func:`id_strings` and, where it has one, the result as an Arrow string array (else None)."""
    if pd.api.types.is_float_dtype(values):
        as_int = values.dropna()
        if (as_int == np.floor(as_int)).all():
            out = values.map(lambda v: "" if pd.isna(v) else str(int(v)))
            return out.astype(object), None
    if pd.api.types.is_integer_dtype(values):
        return values.astype(str).astype(object), None
    if values.dtype == object and _all_str(values):  # every cell a str (a CSV column): nothing missing
        return _stripped(values, all_str=True)
    filled = values.astype(object).where(values.notna(), "")
    if pd.api.types.infer_dtype(filled, skipna=False) != "string":
        filled = filled.map(safe_str)  # mixed cells (numbers from JSON): their str form
    return _stripped(filled)


def safe_str(value: object) -> str:
    """``str(value)``, also for a value nested too deep to print (a JSON list 900 levels deep)."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except RecursionError:
        return f"<{type(value).__name__} nested too deep to show>"


def wrong_type(values: pd.Series, *, allow_numbers: bool) -> pd.Series:
    """Cells whose Python type does not belong in a scalar column: lists, dicts, booleans (from JSON or
    Parquet), and for ids (``allow_numbers=False``) fractions too. Missing values are not wrong types.
    """
    if pd.api.types.is_bool_dtype(values):
        return values.notna()
    if values.dtype != object:
        if allow_numbers or not pd.api.types.is_float_dtype(values):
            return pd.Series(False, index=values.index)
        return pd.Series(values.notna() & (values != np.floor(values)), index=values.index)
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind in ("string", "empty") or (
        allow_numbers and kind in ("integer", "floating", "mixed-integer-float")
    ):
        return pd.Series(False, index=values.index)

    def bad(v: object) -> bool:
        if v is None or isinstance(v, str):
            return False
        if isinstance(v, bool | np.bool_):
            return True
        if isinstance(v, int | np.integer):
            return False
        if isinstance(v, float | np.floating):
            return not (np.isnan(v) or allow_numbers or (np.isfinite(v) and v == np.floor(v)))
        return not (allow_numbers and isinstance(v, pd.Timestamp | datetime))

    return pd.Series(
        np.fromiter((bad(v) for v in values.to_numpy(dtype=object)), dtype=bool, count=len(values)),
        index=values.index,
    )


def strip_strings(values: pd.Series) -> pd.Series:
    """Strings with surrounding whitespace removed; missing values become ""."""
    return _stripped(values)[0]


def _stripped(values: pd.Series, all_str: bool = False) -> tuple[pd.Series, Any]:
    """:func:`strip_strings` and, for a column of ``str``, the result as an Arrow string array (else None).

    Arrow finds the cells ``str.strip`` would change (an edge character in :data:`PY_WHITESPACE`); only
    those go through Python. ``all_str``: the caller knows every cell is a ``str``.
    """
    all_str = all_str or (values.dtype == object and _all_str(values))
    # nothing missing in a column of str: no copy to fill
    filled = values if all_str else values.astype(object).where(values.notna(), "")
    if len(filled) and (all_str or _all_str(filled)):
        obj = filled.to_numpy(dtype=object)
        arr = _arrow_strings(obj)
        if arr is not None:
            edge = _edge_space(arr)
            if edge.any():
                obj = obj.copy()
                obj[edge] = [v.strip() for v in obj[edge]]
                arr = _arrow_strings(obj)
            return pd.Series(obj, index=values.index, name=values.name, dtype=object), arr
    return filled.astype(str).str.strip().astype(object), None


def str_lengths(values: pd.Series) -> pd.Series:
    """``values.str.len()`` of a column of strings (characters, not bytes), through Arrow when it can."""
    if len(values) and _all_str(values):
        arr = _arrow_strings(values.to_numpy(dtype=object))
        if arr is not None:
            import pyarrow.compute as pc

            lengths = pc.utf8_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
            return pd.Series(lengths, index=values.index, name=values.name)
    return values.str.len()


def parse_timestamps(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse event timestamps to UTC.

    Numbers (or digit strings) are Unix seconds; strings are ISO 8601 (naive ones taken as UTC).

    Returns:
        ``(timestamps, missing)``: datetime64[ns, UTC] with NaT where missing or unparseable, and a bool
        mask of the missing ones (so NaT & ~missing means unparseable).
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        ts = values.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
        return ts, values.isna()
    if pd.api.types.is_datetime64_dtype(values):
        ts = values.dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
        return ts, values.isna()
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        missing = values.isna()
        ts = pd.to_datetime(
            values.where(np.isfinite(values.astype(float)) & (values.abs() < 1e11)),
            unit="s",
            utc=True,
            errors="coerce",
        )
        return ts.astype("datetime64[ns, UTC]"), missing
    all_str = values.dtype == object and _all_str(values)
    text = values if all_str else values.astype(object).where(values.notna(), "")
    arr = None
    if len(text) and (all_str or _all_str(text)):
        text, arr = _stripped(text, all_str=True)
    else:
        text = text.map(lambda v: v.strip() if isinstance(v, str) else str(v))
    n = len(text)
    if arr is not None:
        import pyarrow.compute as pc

        empty = pc.equal(pc.utf8_length(arr), 0).to_numpy(zero_copy_only=False)
        missing = pd.Series(empty, index=text.index)
    else:
        missing = text == ""
    ns = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)  # NaT
    missing_np = missing.to_numpy(dtype=bool)
    # the plain ISO forms first, computed directly (such a cell never looks like a number)
    plain = np.zeros(n, dtype=bool)
    if arr is not None and not missing_np.all():
        cand = np.flatnonzero(~missing_np)
        ok, plain_ns = _plain_iso(arr if len(cand) == n else arr.take(cand))
        ns[cand[ok]] = plain_ns[ok]
        plain[cand[ok]] = True
    is_num = np.zeros(n, dtype=bool)
    if not (plain | missing_np).all():
        as_number = _numeric_text(text, arr) & ~plain
        if as_number.any():
            numeric = pd.to_numeric(text.where(as_number, None), errors="coerce")
            is_num = (numeric.notna() & (numeric.abs() < 1e11)).to_numpy(dtype=bool)
            if is_num.any():
                ns[is_num] = pd.DatetimeIndex(pd.to_datetime(numeric[is_num], unit="s", utc=True)).asi8
    rest = ~is_num & ~missing_np & ~plain
    if rest.any():  # pandas parses the other forms
        rest_pos = np.flatnonzero(rest)
        if len(rest_pos):
            # naive and offset-bearing cells apart: in one call pandas (2.3) gives a naive cell the offset
            # of an aware cell before it ("...+02:00", then "2024-01-01T10:00:00.5" read as 08:00:00.5 UTC)
            cells = text.iloc[rest_pos]
            aware = cells.str.contains(_ENDS_WITH_OFFSET, regex=True).to_numpy(dtype=bool)
            for group in (aware, ~aware):
                if group.any():
                    parsed = pd.to_datetime(cells[group], format="ISO8601", utc=True, errors="coerce")
                    ns[rest_pos[group]] = pd.DatetimeIndex(parsed).asi8
    ts = pd.Series(ns.view("datetime64[ns]"), index=values.index).dt.tz_localize("UTC")
    return ts, missing


_ENDS_WITH_OFFSET = r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"

# ``YYYY-MM-DD`` or ``YYYY-MM-DD[T ]HH:MM:SS[.f{1,9}][Z|+HH:MM|-HH:MM]`` (RE2; \d is ASCII there)
_PLAIN_ISO = r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})?)?$"
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


# the plain forms of one length: positions of digits and of fixed characters (":" "-" "Z"), per length
_GRID_DIGITS = {10: [0, 1, 2, 3, 5, 6, 8, 9]}
_GRID_DIGITS[19] = _GRID_DIGITS[10] + [11, 12, 14, 15, 17, 18]
_GRID_DIGITS[20] = _GRID_DIGITS[19]
_GRID_DIGITS[25] = _GRID_DIGITS[19] + [20, 21, 23, 24]
_GRID_FIXED = {10: {4: b"-", 7: b"-"}}
_GRID_FIXED[19] = {**_GRID_FIXED[10], 10: b"T ", 13: b":", 16: b":"}
_GRID_FIXED[20] = {**_GRID_FIXED[19], 19: b"Z"}
_GRID_FIXED[25] = {**_GRID_FIXED[19], 19: b"+-", 22: b":"}


def _plain_grid(offsets: np.ndarray, data: np.ndarray) -> np.ndarray | None:
    """For a column whose cells all have one length of a plain form (10 ``YYYY-MM-DD``, 19
    ``YYYY-MM-DD?HH:MM:SS``, 20 ``...Z``, 25 ``...+HH:MM``), which cells match :data:`_PLAIN_ISO`: the
    same answer as the regex for such cells, from byte comparisons on the (n, length) grid. None when the
    column is not of one such length, or some cell does not match (the regex then decides each cell)."""
    lengths = np.diff(offsets)
    width = int(lengths[0])
    if width not in _GRID_DIGITS or not (lengths == width).all():
        return None
    grid = data[offsets[0] : offsets[0] + len(lengths) * width].reshape(-1, width)
    ok = ((grid[:, _GRID_DIGITS[width]] - np.uint8(48)) <= 9).all(axis=1)
    for at, allowed in _GRID_FIXED[width].items():
        ok &= np.isin(grid[:, at], np.frombuffer(allowed, dtype=np.uint8))
    return ok if ok.all() else None


def _plain_iso(arr) -> tuple[np.ndarray, np.ndarray]:  # arr: pa.StringArray
    """Nanoseconds since the epoch (UTC) of the cells in the plain ISO 8601 forms of :data:`_PLAIN_ISO`
    whose fields are in range, for years 1678-2261 (inside pandas' nanosecond range); the ``ok`` mask says
    which. ``pd.to_datetime(cell, format="ISO8601", utc=True)`` gives each of these cells the same instant
    (a unit test compares them); every other cell (other forms, a 30 February, a leap second, years near
    the limits) is left to it.

    A matching cell is ASCII with its digits at fixed places, so the fields are read straight from the
    Arrow array's UTF-8 bytes.
    """
    import pyarrow.compute as pc

    n = len(arr)
    ns = np.zeros(n, dtype=np.int64)
    if not n:
        return np.zeros(0, dtype=bool), ns
    offsets, data = _string_bytes(arr)
    ok = _plain_grid(offsets, data)  # one writer's format: checked byte by byte, no regex
    if ok is None:
        ok = pc.match_substring_regex(arr, _PLAIN_ISO).to_numpy(zero_copy_only=False)
    if not ok.any():
        return ok, ns
    pos = np.flatnonzero(ok)
    start, end = offsets[pos], offsets[pos + 1]
    length = end - start
    last = len(data) - 1

    def digits(at: np.ndarray, width: int) -> np.ndarray:  # (cells, width) bytes from positions ``at``
        return data[np.minimum(at[:, None] + np.arange(width), last)]

    width = int(length[0])
    if len(pos) == n and width >= 19 and (length == width).all():
        # every cell matched, all of one length (one writer's format): the bytes are an (n, width) grid
        grid = data[start[0] : start[0] + n * width].reshape(n, width)
        head, tail_of = grid, lambda sel: grid[sel, width - 6 :]
    else:
        head, tail_of = digits(start, 19), lambda sel: digits(end[sel] - 6, 6)

    def number(block: np.ndarray, first: int, count: int) -> np.ndarray:  # decimal digits -> int64
        out = block[:, first].astype(np.int64) - 48
        for k in range(first + 1, first + count):
            out = out * 10 + (block[:, k].astype(np.int64) - 48)
        return out

    # YYYY-MM-DD?HH:MM:SS (a date alone: the bytes after it are not used)
    y, mo, d = number(head, 0, 4), number(head, 5, 2), number(head, 8, 2)
    has_time = length > 10
    h, mi, sec = (np.where(has_time, number(head, i, 2), 0) for i in (11, 14, 17))
    # an offset is "+HH:MM" (6 bytes: a fraction holds no ":"), "Z" one byte
    has_offset = has_time & (length >= 25) & (data[np.maximum(end - 3, 0)] == ord(":"))
    has_z = has_time & (data[end - 1] == ord("Z"))
    tz_len = np.where(has_offset, 6, np.where(has_z, 1, 0))
    tz_seconds = np.zeros(len(pos), dtype=np.int64)
    tz_h = tz_m = np.zeros(len(pos), dtype=np.int64)
    if has_offset.any():
        sel = np.flatnonzero(has_offset)
        tail = tail_of(sel)  # ±HH:MM
        tz_h, tz_m = np.zeros_like(tz_seconds), np.zeros_like(tz_seconds)
        tz_h[sel], tz_m[sel] = number(tail, 1, 2), number(tail, 4, 2)
        sign = np.where(tail[:, 0] == ord("-"), -1, 1)
        tz_seconds[sel] = sign * (tz_h[sel] * 3600 + tz_m[sel] * 60)
    frac_len = np.where(has_time & (length > 19), length - 20 - tz_len, 0)  # digits after "."
    frac = np.zeros(len(pos), dtype=np.int64)
    if (frac_len > 0).any():
        sel = np.flatnonzero(frac_len > 0)
        block = digits(start[sel] + 20, 9).astype(np.int64) - 48
        block = np.where(np.arange(9) < frac_len[sel, None], block, 0)
        frac[sel] = block @ (10 ** np.arange(8, -1, -1, dtype=np.int64))

    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    month_ok = (mo >= 1) & (mo <= 12)
    dim = _DAYS_IN_MONTH[np.where(month_ok, mo, 0)] + (leap & (mo == 2))
    fine = (
        (y >= 1678) & (y <= 2261) & month_ok & (d >= 1) & (d <= dim)
        & (h <= 23) & (mi <= 59) & (sec <= 59) & (tz_h <= 23) & (tz_m <= 59)
    )  # fmt: skip
    # days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)
    yy = y - (mo <= 2)
    era = yy // 400
    yoe = yy - era * 400
    doy = (153 * ((mo + 9) % 12) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    seconds = ((days * 24 + h) * 60 + mi) * 60 + sec - tz_seconds
    ns[pos] = seconds * 1_000_000_000 + frac
    good = np.zeros(n, dtype=bool)
    good[pos] = fine
    return good, ns


def _numeric_text(text: pd.Series, arr) -> pd.Series:
    """``text.str.fullmatch(_NUMERIC_TEXT)`` for a column of stripped strings; with ``arr`` (the column in
    Arrow) Arrow decides the ASCII cells (where ``\\d`` is ``[0-9]``), Python's ``re`` the others."""
    if arr is None:
        return text.str.fullmatch(_NUMERIC_TEXT)
    import pyarrow.compute as pc

    match = pc.match_substring_regex(arr, _ASCII_NUMERIC_TEXT).to_numpy(zero_copy_only=False)
    other = ~pc.string_is_ascii(arr).to_numpy(zero_copy_only=False)
    if other.any():
        pattern = re.compile(_NUMERIC_TEXT)
        match = match.copy()
        match[other] = [pattern.fullmatch(v) is not None for v in text.to_numpy(dtype=object)[other]]
    return pd.Series(match, index=text.index)


def _beyond_ns_range(value: object) -> bool:
    """True for a valid timestamp after 2262 (pandas' nanosecond limit), e.g. "2999-01-01" or 1e12 s."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        try:
            return datetime.fromisoformat(str(value).strip().replace("Z", "+00:00")).year > 2261
        except ValueError:
            return False
    return bool(np.isfinite(number) and number >= 1e11)


def _labels(values: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Return (label as float with NaN, missing mask, not-binary mask)."""
    if pd.api.types.is_bool_dtype(values):
        num = values.astype(float)
        return num, values.isna(), pd.Series(False, index=values.index)
    if pd.api.types.is_numeric_dtype(values):
        num = values.astype(float)
        missing = values.isna()
    else:
        text = (
            values
            if values.dtype == object and _all_str(values)
            else values.astype(object).where(values.notna(), "")
        )
        coded = _string_codes(text)
        if coded is not None:  # a label column holds a handful of distinct strings: decide each once
            codes, uniques = coded
            num_u, missing_u = _text_labels(pd.Series(uniques, dtype=object))
            num = pd.Series(num_u.to_numpy()[codes], index=values.index)
            missing = pd.Series(missing_u.to_numpy()[codes], index=values.index)
        else:
            num, missing = _text_labels(text)
    not_binary = ~missing & ~((num == 0.0) | (num == 1.0))
    return num, missing, not_binary


def _text_labels(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(label as float with NaN, missing mask) of a label column that is not numeric."""
    text = text.map(lambda v: v.strip().lower() if isinstance(v, str) else v)
    missing = text.map(lambda v: isinstance(v, str) and v == "").astype(bool)
    text = text.replace({"true": 1, "false": 0})
    num = pd.to_numeric(text.where(~missing, None), errors="coerce").astype(float)
    return num, missing


def validate_events(
    df: pd.DataFrame,
    *,
    now: datetime | pd.Timestamp | None = None,
    future_tolerance_s: float = 300.0,
    seen_ids: Iterable[str] | Callable[[list[str]], Iterable[str]] | None = None,
    source: str | None = None,
    max_id_chars: int = MAX_ID_CHARS,
    min_event_time: datetime | pd.Timestamp = MIN_EVENT_TIME,
) -> ValidationResult:
    """Split a batch of events into accepted rows and quarantined rows with their reasons.

    Args:
        df: raw events; needs the columns of :data:`EVENT_COLUMNS` (values may be strings).
        now: the reference time for the future check (default: the current UTC time).
        future_tolerance_s: how far in the future a timestamp may be (clock skew).
        seen_ids: event ids already stored; rows carrying one are quarantined as ``event_id_seen``. A
            callable is given the sorted ``YYYY-MM-DD`` dates of the batch's parsed timestamps and returns
            the ids stored for those dates (only they can hold the batch's duplicates).
        source: the file or stream the rows came from, used in error messages.
        max_id_chars: longer ids are quarantined as ``<column>_too_long``.
        min_event_time: earlier timestamps are quarantined as ``timestamp_before_min``.

    A row with a reader's ``_read_error`` (an unreadable JSONL line) is quarantined with that reason alone.

    Raises:
        FileFormatError: when required columns are missing.
    """
    missing_cols = [c for c in EVENT_COLUMNS if c not in df.columns]
    if missing_cols:
        raise FileFormatError(
            source or "<events>", f"missing required column(s) {missing_cols}; got {list(df.columns)}"
        )
    df = df.reset_index(drop=True)
    received = len(df)
    now_ts = pd.Timestamp(now if now is not None else datetime.now(UTC))
    now_ts = now_ts.tz_localize("UTC") if now_ts.tzinfo is None else now_ts.tz_convert("UTC")

    unread = (
        df[READ_ERROR].notna().to_numpy(dtype=bool) if READ_ERROR in df.columns else np.zeros(received, bool)
    )
    min_ts = pd.Timestamp(min_event_time)
    min_ts = min_ts.tz_localize("UTC") if min_ts.tzinfo is None else min_ts.tz_convert("UTC")

    id_wrong = {c: wrong_type(df[c], allow_numbers=False) for c in ID_COLUMNS}
    ids: dict[str, pd.Series] = {}
    empty: dict[str, np.ndarray] = {}
    too_long: dict[str, np.ndarray] = {}
    id_arrow: dict[str, Any] = {}
    for c in ID_COLUMNS:
        ids[c], id_arrow[c] = _id_strings(df[c])
        if id_arrow[c] is not None:
            import pyarrow.compute as pc

            lengths = pc.utf8_length(id_arrow[c]).to_numpy(zero_copy_only=False)
            empty[c], too_long[c] = lengths == 0, lengths > max_id_chars
        else:
            empty[c] = (ids[c] == "").to_numpy(dtype=bool)
            too_long[c] = (str_lengths(ids[c]) > max_id_chars).to_numpy(dtype=bool)
    ts_wrong = wrong_type(df["event_timestamp"], allow_numbers=True)
    stamps = df["event_timestamp"]
    ts, ts_missing = parse_timestamps(stamps.where(~ts_wrong, None) if ts_wrong.any() else stamps)
    ts_missing &= ~ts_wrong
    failed = ts.isna() & ~ts_missing & ~ts_wrong
    beyond_np = np.zeros(received, dtype=bool)
    failed_pos = np.flatnonzero(failed.to_numpy(dtype=bool))
    if len(failed_pos):
        beyond_np[failed_pos] = [_beyond_ns_range(v) for v in df["event_timestamp"].iloc[failed_pos]]
    beyond = pd.Series(beyond_np, index=df.index)
    label, label_missing, label_bad = _labels(df["label"])

    checks: list[tuple[str, pd.Series]] = []
    for c in ID_COLUMNS:
        checks.append((f"{c}{WRONG_TYPE}", id_wrong[c]))
        checks.append((f"{c}_empty", pd.Series(empty[c], index=df.index) & ~id_wrong[c]))
        checks.append((f"{c}{TOO_LONG}", pd.Series(too_long[c], index=df.index) & ~id_wrong[c]))
    checks += [
        (LABEL_MISSING, label_missing),
        (LABEL_NOT_BINARY, label_bad),
        (TIMESTAMP_WRONG_TYPE, ts_wrong),
        (TIMESTAMP_MISSING, ts_missing),
        (TIMESTAMP_UNPARSEABLE, failed & ~beyond),
        (TIMESTAMP_IN_FUTURE, (ts > now_ts + pd.Timedelta(seconds=future_tolerance_s)) | beyond),
        (TIMESTAMP_BEFORE_MIN, ts < min_ts),
    ]
    # an unreadable line carries its reader's reason only (its other cells are empty by construction)
    checks = [(name, mask & ~unread) for name, mask in checks]
    if unread.any():
        read_errors = df[READ_ERROR].astype(object).where(pd.Series(unread, index=df.index), None)
        for name in sorted(set(read_errors.dropna())):
            checks.append((str(name), read_errors == name))
    bad_so_far = np.zeros(received, dtype=bool)
    for _, mask in checks:
        bad_so_far |= mask.to_numpy(dtype=bool)

    # Duplicates: the first otherwise-valid row with an id wins; every other row with that id is a duplicate.
    eid = ids["event_id"]
    has_id = ~empty["event_id"]
    candidate = ~bad_so_far & has_id
    if id_arrow["event_id"] is not None:  # the same rule on integer codes, one per distinct id
        encoded = id_arrow["event_id"].dictionary_encode()
        codes, distinct = encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary
        cand_pos = np.flatnonzero(candidate)
        _, first_of_code = np.unique(codes[cand_pos], return_index=True)
        first_valid = np.zeros(received, dtype=bool)
        first_valid[cand_pos[first_of_code]] = True
        code_valid = np.zeros(len(distinct), dtype=bool)
        code_valid[codes[cand_pos]] = True
        dup = has_id & code_valid[codes] & ~first_valid
    else:
        first = pd.Series(False, index=df.index)
        cand_ids = eid[candidate]
        first[cand_ids[~cand_ids.duplicated(keep="first")].index] = True
        dup = has_id & eid.isin(set(cand_ids)).to_numpy(dtype=bool) & ~first.to_numpy()
    checks.append((EVENT_ID_DUPLICATE, pd.Series(dup, index=df.index)))
    if callable(seen_ids):
        days = ts.dropna().dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").astype("datetime64[D]")
        seen_ids = seen_ids([str(d) for d in np.unique(days)])
    if seen_ids is not None:
        seen = seen_ids if isinstance(seen_ids, set | frozenset) else set(seen_ids)
        was_seen = eid.isin(seen).to_numpy(dtype=bool) if seen else np.zeros(received, dtype=bool)
        checks.append((EVENT_ID_SEEN, pd.Series(has_id & was_seen, index=df.index)))

    reason_cols = {name: mask.to_numpy(dtype=bool) for name, mask in checks}
    any_bad = np.zeros(received, dtype=bool)
    for mask in reason_cols.values():
        any_bad |= mask
    counts = {name: int(mask.sum()) for name, mask in reason_cols.items() if mask.any()}

    accepted = df.loc[~any_bad].drop(columns=[c for c in READER_COLUMNS if c in df.columns])
    for c in ID_COLUMNS:
        accepted[c] = ids[c][~any_bad].astype(object)
    accepted["event_timestamp"] = ts[~any_bad].astype("datetime64[ns, UTC]")
    accepted["label"] = label[~any_bad].astype("int8")
    extra = [c for c in accepted.columns if c not in EVENT_COLUMNS]
    accepted = accepted[list(EVENT_COLUMNS) + extra].reset_index(drop=True)

    quarantined = _as_strings(df.loc[any_bad])
    if any_bad.any():
        names = np.array(list(reason_cols))
        matrix = np.column_stack([reason_cols[n][any_bad] for n in names])
        quarantined["reasons"] = [";".join(names[row]) for row in matrix]
    else:
        quarantined["reasons"] = pd.Series(dtype=object)
    quarantined = quarantined.reset_index(drop=True)
    if counts:
        log.info(
            "validated %d rows from %s: %d quarantined %s",
            received,
            source or "batch",
            len(quarantined),
            counts,
        )
    return ValidationResult(accepted=accepted, quarantined=quarantined, received=received, reasons=counts)


def _as_strings(df: pd.DataFrame) -> pd.DataFrame:
    """Every value as its string form ("" for missing), so nothing about a bad row is lost or coerced."""
    out = pd.DataFrame(index=df.index)
    for c in df.columns:
        col = df[c]
        obj = col.astype(object).where(col.notna(), "")
        if pd.api.types.infer_dtype(obj, skipna=False) != "string":
            obj = obj.map(safe_str)
        out[str(c)] = obj.astype(object)
    return out


def count_reasons(reasons: pd.Series) -> dict[str, int]:
    """Count individual reason codes in a ``reasons`` column ("a;b" counts once for a and once for b)."""
    counter: Counter[str] = Counter()
    for value, n in reasons.astype(str).value_counts().items():
        for r in str(value).split(";"):
            if r:
                counter[r] += int(n)
    return dict(counter.most_common())


def write_quarantine(
    quarantined: pd.DataFrame,
    quarantine_dir: Path,
    *,
    source: str,
    name: str,
    ingested_at: datetime | None = None,
) -> Path | None:
    """Write quarantined rows to ``<quarantine_dir>/<name>.parquet`` atomically.

    A deterministic ``name`` (e.g. derived from the source file's hash) makes a retried ingest overwrite its
    own quarantine file instead of duplicating it.

    Returns:
        The written path, or None when there was nothing to write.
    """
    if quarantined.empty:
        return None

    when = ingested_at or datetime.now(UTC)
    table = _as_strings(quarantined.drop(columns=["reasons"]))
    table.insert(0, "reasons", quarantined["reasons"].astype(str).to_numpy())
    table.insert(
        0,
        "ingested_at",
        pd.Timestamp(when).tz_convert("UTC") if pd.Timestamp(when).tzinfo else pd.Timestamp(when, tz="UTC"),
    )
    table.insert(0, "source", source)
    return atomic_write_parquet(table, quarantine_dir / f"{name}.parquet")


def read_quarantine(quarantine_dir: Path) -> pd.DataFrame:
    """All quarantined rows written so far (empty frame when none)."""
    files = sorted(quarantine_dir.glob("*.parquet")) if quarantine_dir.exists() else []
    if not files:
        return pd.DataFrame(columns=["source", "ingested_at", "reasons"])
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
