r"""Declarative dataset descriptions and their loader.

A dataset is described in YAML (shipped ones live in ``freshrec/datasets/<name>.yaml``): which files hold
the events, users and items, how they are formatted, the label rule, the entity keys and each profile
feature with its type and how it is derived from the raw columns. Bringing a new dataset means writing
such a file and passing its path to :func:`load_description` (or ``freshrec data prepare --dataset
my.yaml``); no code. A minimal description::

    name: shop
    dir_names: [shop]                      # folders tried under datasets_dir (then datasets_dir, the YAML's folder)
    events:
      file: clicks.csv
      format: {delimiter: ",", header: true}
      user_key: customer                   # raw column -> user_id
      item_key: sku                        # raw column -> item_id
      timestamp: {column: ts, unit: s}     # epoch seconds; or {column: ts, unit: null, format: "%Y-%m-%d %H:%M:%S"}
      label: action == 'buy'               # "<column> <op> <number|'text'>", op in == != >= <= > <
      drop: null                           # rows that are not events at all, e.g. "rating == 3"
      event_id: "{customer}-{sku}-{ts}"    # deterministic, so re-ingesting is idempotent
    users:
      file: customers.csv
      format: {header: true}
      key: customer
      features:
        user_region: {type: categorical, from: region, map: {N: north}}
        user_zip_prefix: {type: categorical, from: zip, slice: 3}
    items:
      file: products.csv
      format: {delimiter: "|", header: false, encoding: latin-1}
      columns: [sku, title, tags]
      key: sku
      features:
        item_tags: {type: multi_categorical, from: tags, split: ","}
        item_year: {type: numeric, dtype: int64, from: title, regex: '\((\d{4})\)', default: 0}

Derivations: ``slice``, ``map``, ``regex`` (first group), ``date_format`` (keep the year), ``split``
(multi-valued field; a Parquet list column needs none) or ``flags_prefix`` (one 0/1 column per value, e.g.
MovieLens' genre flags whose names come from ``extra_columns.names_file``); for event features also
``time_part`` (hour, weekday, day, month, year of the event time). Rows that cannot become events (empty
keys, missing or unparseable timestamp or label column, an unknown split value) are returned in
``Dataset.rejected`` with their reasons, file and row.

More fields (the README shows a whole benchmark description):

- ``events.features``: event-level (context) model features, with the profile features' derivations;
  any feature may state its model ``encoding`` (``lookup``/``hash`` for categoricals, ``multi_hash``,
  ``normalize``/``bucketize`` for numbers) and ``max_vocab``, ``collision_target``, ``num_bins``,
  ``num_buckets``, ``log1p``; otherwise :meth:`freshrec.model.spec.FeatureSpec.for_description` sizes
  them from the training data within the description's ``vocabulary: {max_size, collision_target}``.
  ``events.keep`` columns are stored in the event log but are not model inputs.
- ``files: [a.csv, part-*.csv]`` (any table): every file, concatenated; ``file: [x, y]``: the first found.
- ``split: time | random | files | column``: ``files`` takes ``events.splits: {train: [...], valid: [...],
  test: [...]}``, ``column`` takes ``events.split_column: {column, train, valid, test}`` (values);
  ``split_fractions: [0.7, 0.2, 0.1]`` for time/random (rounding rule: :func:`split_cuts`).
- ``format: {type: parquet|jsonl}`` keeps native types: a timestamp column needs no format, integer keys
  no parsing. ``events.timestamp`` may be left out for random or given splits (every event is then at
  :data:`NO_TIMESTAMP`, ids default to ``"{_file}:{_row}"``, and there are no time-window features).
- ``users:``/``items:`` are optional (an id is then all that is known of it).
- ``activity: {enabled, history}``: the 14 activity features, on by default for a time split only;
  ``history: earlier_splits|train`` (see :class:`ActivityOptions`); never from a later split.

The loader returns a :class:`Dataset` in the event contract (see ``freshrec.data``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import string
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from freshrec.data.validation import EVENT_COLUMNS, FileFormatError, id_strings, strip_strings
from freshrec.features.activity import ITEM_ACTIVITY, USER_ACTIVITY

log = logging.getLogger(__name__)

DEFAULT_DATASET = "movielens-100k"
FeatureType = Literal["categorical", "numeric", "multi_categorical"]
_CONDITION = re.compile(r"^\s*(?P<col>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<value>.+?)\s*$")
_OPS = {
    "==": np.equal,
    "!=": np.not_equal,
    ">=": np.greater_equal,
    "<=": np.less_equal,
    ">": np.greater,
    "<": np.less,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FileFormat(_Strict):
    """How a file is laid out."""

    type: Literal["delimited", "parquet", "jsonl"] = "delimited"
    delimiter: str = ","
    encoding: str = "utf-8"
    header: bool = False
    # MovieLens titles contain quote characters that are not CSV quoting.
    quoting: Literal["minimal", "none"] = "minimal"


class ExtraColumns(_Strict):
    """Names of trailing columns, read from another file (e.g. the 19 genre flags named in ``u.genre``)."""

    names_file: str
    delimiter: str = "|"
    encoding: str = "utf-8"
    column: int = 0
    prefix: str = ""


class Condition(_Strict):
    """``<column> <op> <value>`` parsed from a string such as ``"rating >= 4"`` (no eval)."""

    column: str
    op: Literal["==", "!=", ">=", "<=", ">", "<"]
    value: float | str

    @classmethod
    def parse(cls, text: str) -> Condition:
        m = _CONDITION.match(text)
        if not m:
            raise ValueError(
                f"cannot parse condition {text!r}; expected '<column> <op> <value>', e.g. 'rating >= 4'"
            )
        raw = m["value"].strip()
        value: float | str
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            value = raw[1:-1]
        else:
            try:
                value = float(raw)
            except ValueError as exc:
                raise ValueError(f"condition {text!r}: value must be a number or a quoted string") from exc
        return cls(column=m["col"], op=m["op"], value=value)

    def evaluate(self, frame: pd.DataFrame) -> np.ndarray:
        if self.column not in frame.columns:
            raise ValueError(f"condition column {self.column!r} not in columns {list(frame.columns)}")
        col = frame[self.column]
        if isinstance(self.value, float):
            num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
            return _OPS[self.op](num, self.value) & ~np.isnan(num)
        return _OPS[self.op](col.astype(str).to_numpy(), self.value)

    def __str__(self) -> str:
        value = f"'{self.value}'" if isinstance(self.value, str) else f"{self.value:g}"
        return f"{self.column} {self.op} {value}"


def _condition(value: Any) -> Any:
    return Condition.parse(value) if isinstance(value, str) else value


TimePart = Literal["hour", "weekday", "day", "month", "year"]
Encoding = Literal["lookup", "hash", "multi_hash", "normalize", "bucketize"]
SplitKind = Literal["time", "random", "files", "column"]
SPLITS: tuple[str, ...] = ("train", "valid", "test")
# The event time of every event of a dataset described without timestamps (random or given splits only).
NO_TIMESTAMP = pd.Timestamp("1970-01-01", tz="UTC")
# Internal columns of the raw event rows: the file a row came from, its row number there, its given split.
FILE_COLUMN, ROW_COLUMN, SPLIT_COLUMN = "__file__", "__row__", "__split__"
_TEMPLATE_FIELDS = {"_file": FILE_COLUMN, "_row": ROW_COLUMN}
_ENCODINGS = {
    "categorical": ("lookup", "hash"),
    "multi_categorical": ("multi_hash",),
    "numeric": ("normalize", "bucketize"),
}


class Feature(_Strict):
    """One feature and how it is derived from raw columns, optionally with its model encoding.

    Exactly one source: ``from`` (a column, optionally transformed by ``slice``, ``map``, ``regex``,
    ``date_format`` or ``split``), ``flags_prefix`` (one 0/1 column per value, e.g. genre flags) or, for
    event features, ``time_part`` (hour, weekday, day, month or year of the event time, UTC).

    The encoding is chosen from the training data unless given: a categorical gets an exact vocabulary
    with one out-of-vocabulary bucket while its distinct values fit ``max_vocab`` (default: the
    description's ``vocabulary.max_size``), else hashing into ``num_bins`` buckets (default: sized so that
    at most ``collision_target`` of the values share a bucket); a multi-valued field is split, hashed per
    token and mean-pooled; a numeric one is standardised (``log1p`` first when asked) or, with
    ``encoding: bucketize``, cut at ``num_buckets`` quantiles.
    """

    type: FeatureType
    dtype: Literal["string", "int64", "float64"] | None = None
    source: str | None = Field(default=None, alias="from")
    slice: int | None = None  # keep the first N characters (zip prefix)
    map: dict[str, str] | None = None  # code -> name; unmapped codes are kept
    regex: str | None = None  # the first capture group (year from "Title (1995)")
    date_format: str | None = None  # parse as a date (strftime format) and keep the year
    split: str | None = None  # multi_categorical from a separated field
    flags_prefix: str | None = None  # multi_categorical from 0/1 columns named <prefix><value>
    time_part: TimePart | None = None  # event features only: a part of the event timestamp (UTC)
    exclude: list[str] = Field(default_factory=list)  # values dropped from multi_categorical
    default: str | int | float | None = None  # for missing/unparseable values
    description: str = ""
    # model encoding (all optional: chosen from the training data when absent)
    encoding: Encoding | None = None
    max_vocab: int | None = Field(default=None, ge=0)
    collision_target: float | None = Field(default=None, gt=0, lt=1)
    num_bins: int | None = Field(default=None, ge=1)
    num_buckets: int | None = Field(default=None, ge=1)
    log1p: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> Feature:
        sources = [self.source is not None, self.flags_prefix is not None, self.time_part is not None]
        if sum(sources) != 1:
            raise ValueError("a feature needs exactly one of 'from', 'flags_prefix' or 'time_part'")
        if (self.split or self.flags_prefix) and self.type != "multi_categorical":
            raise ValueError("'split'/'flags_prefix' produce a multi_categorical feature")
        if self.time_part is not None and self.type == "multi_categorical":
            raise ValueError("'time_part' gives a categorical or numeric feature")
        if self.regex is not None and re.compile(self.regex).groups < 1:
            raise ValueError(f"regex {self.regex!r} needs a capture group")
        if self.dtype is None:
            self.dtype = "float64" if self.type == "numeric" else "string"
        if self.type != "numeric" and self.dtype != "string":
            raise ValueError(f"{self.type} features are strings, not {self.dtype}")
        if self.encoding is not None and self.encoding not in _ENCODINGS[self.type]:
            raise ValueError(
                f"a {self.type} feature is encoded as one of {list(_ENCODINGS[self.type])}, not {self.encoding!r}"
            )
        return self

    def derivation(self) -> str:
        """How the feature is computed, in words (for ``freshrec data describe``)."""
        if self.flags_prefix:
            how = f"flags {self.flags_prefix}*"
        elif self.time_part:
            how = f"{self.time_part} of the event time"
        else:
            how = str(self.source)
        for key in ("slice", "map", "regex", "date_format", "split"):
            if getattr(self, key) is not None:
                how += f", {key}" if key == "map" else f", {key} {getattr(self, key)!r}"
        return how


class TableSpec(_Strict):
    """The files of one source with their format and column names.

    ``file``: candidates, the first one found wins (e.g. a tail file, else the full archive's file);
    ``files``: all of them, read in order and concatenated (glob patterns such as ``part-*.parquet`` are
    expanded in sorted order). The files of one source share their format and columns.
    """

    file: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    format: FileFormat = Field(default_factory=FileFormat)
    columns: list[str] | None = None
    extra_columns: ExtraColumns | None = None

    @field_validator("file", "files", mode="before")
    @classmethod
    def _files(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_columns(self) -> TableSpec:
        if self.file and self.files:
            raise ValueError("give either 'file' (candidates, first found wins) or 'files' (all), not both")
        if self.format.type == "delimited" and not self.format.header and not self.columns:
            raise ValueError(f"{self.file or self.files}: a file without a header needs 'columns'")
        return self

    def file_names(self) -> list[str]:
        return list(self.files or self.file)


class EntityTable(TableSpec):
    """Users or items: the key column, an optional id prefix and the profile features."""

    key: str
    id_prefix: str = ""
    features: dict[str, Feature] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_entity(self) -> EntityTable:
        if not self.file_names():
            raise ValueError("a user or item table needs 'file' or 'files'")
        for name, f in self.features.items():
            if f.time_part is not None:
                raise ValueError(f"feature {name}: 'time_part' is for event features")
        return self


class TimestampSpec(_Strict):
    """The event time: a native timestamp column (Parquet/Arrow), epoch numbers in ``unit``, or date
    strings in ``format``."""

    column: str
    unit: Literal["s", "ms", "us", "ns"] | None = "s"  # epoch numbers; None with `format` for date strings
    format: str | None = None


class SplitColumn(_Strict):
    """A given split in a column: which values mean train, valid and test (compared as stripped text)."""

    column: str
    train: list[str] = Field(default_factory=lambda: ["train"])
    valid: list[str] = Field(default_factory=lambda: ["valid", "validation", "val"])
    test: list[str] = Field(default_factory=lambda: ["test"])

    @field_validator("train", "valid", "test", mode="before")
    @classmethod
    def _values(cls, value: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        return [str(v) for v in values]

    @model_validator(mode="after")
    def _check_values(self) -> SplitColumn:
        seen: dict[str, str] = {}
        for part in SPLITS:
            values = getattr(self, part)
            if not values:
                raise ValueError(f"split_column: no values for {part}")
            for v in values:
                if v in seen:
                    raise ValueError(f"split_column: value {v!r} is in both {seen[v]} and {part}")
                seen[v] = part
        return self

    def labels(self) -> dict[str, str]:
        return {v: part for part in SPLITS for v in getattr(self, part)}


class EventTable(TableSpec):
    """Interactions: keys, timestamp, label rule, how event ids are built and the event-level features."""

    user_key: str = "user_id"
    item_key: str = "item_id"
    timestamp: TimestampSpec | None = None  # None: no event time (random or given splits only)
    label: Condition
    drop: Condition | None = None  # rows matching it are not events at all (AutoInt: rating == 3)
    # A template over raw columns (and {_file}, {_row}: the file name and row number); deterministic, so
    # that re-ingesting a file is idempotent. Default: "{user_id}-{item_id}-{timestamp}" with a
    # timestamp, "{_file}:{_row}" without.
    event_id: str | None = None
    keep: list[str] = Field(default_factory=list)  # raw columns stored in the event log, not model inputs
    features: dict[str, Feature] = Field(default_factory=dict)  # event-level (context) model features
    tail: int | None = None  # keep only the last N events by time (e.g. a full ratings.dat for the 1M tail)
    splits: dict[Literal["train", "valid", "test"], list[str]] | None = None  # split: files
    split_column: SplitColumn | None = None  # split: column

    @field_validator("label", "drop", mode="before")
    @classmethod
    def _conditions(cls, value: Any) -> Any:
        return _condition(value)

    @field_validator("splits", mode="before")
    @classmethod
    def _split_files(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check_events(self) -> EventTable:
        if self.splits is not None:
            if self.file_names():
                raise ValueError("events: with 'splits' (a file list per split) leave out 'file'/'files'")
            missing = [p for p in SPLITS if not self.splits.get(p)]  # type: ignore[call-overload]
            if missing:
                raise ValueError(f"events.splits: no files for {missing} (train, valid and test are needed)")
        elif not self.file_names():
            raise ValueError("events: give 'file', 'files' or 'splits'")
        if self.event_id is None:
            self.event_id = "{user_id}-{item_id}-{timestamp}" if self.timestamp else "{_file}:{_row}"
        return self

    def source_files(self) -> list[tuple[str, str | None]]:
        """``(file name or pattern, given split or None)`` in reading order."""
        if self.splits is not None:
            return [(f, part) for part in SPLITS for f in self.splits[part]]  # type: ignore[index]
        return [(f, None) for f in self.file_names()]


class VocabularyOptions(_Strict):
    """How categorical features are sized from the training data (per feature overrides in ``Feature``)."""

    max_size: int = Field(default=100_000, ge=0)  # exact vocabulary (+1 OOV bucket) up to this many values
    collision_target: float = Field(default=0.05, gt=0, lt=1)  # beyond it: hash buckets for this share


class ActivityOptions(_Strict):
    """The 14 user/item activity features (counts, CTRs, recency as of each event).

    ``history``: which events a row's activity comes from, always strictly earlier ones:
    ``earlier_splits``: of its own split and the splits before it (a time split: what serving sees);
    ``train``: of the train split only (valid and test labels never reach any feature).
    """

    enabled: bool | None = None  # default: on for a time split, off otherwise
    history: Literal["earlier_splits", "train"] | None = None  # default: earlier_splits for time, else train

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


class DatasetDescription(_Strict):
    """A dataset: where its files are and how to turn them into events, users and items."""

    name: str
    title: str = ""
    description: str = ""
    # Folder names tried under datasets_dir (ours and the official GroupLens archive's).
    dir_names: list[str] = Field(default_factory=list)
    split: SplitKind = "time"
    split_seed: int = 42
    # time/random: shares of train, valid, test (default: the settings'); see `split_cuts` for rounding
    split_fractions: list[float] | None = None
    events: EventTable | None = None  # None for generated data (synthetic)
    users: EntityTable | None = None  # None: users are only their ids
    items: EntityTable | None = None  # None: items are only their ids
    activity: ActivityOptions = Field(default_factory=ActivityOptions)
    vocabulary: VocabularyOptions = Field(default_factory=VocabularyOptions)

    _source_dir: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_description(self) -> DatasetDescription:
        ev = self.events
        if self.split_fractions is not None:
            if self.split not in ("time", "random"):
                raise ValueError(f"split_fractions apply to split: time|random, not {self.split}")
            _check_fractions(self.split_fractions)
        if self.split == "files" and (ev is None or ev.splits is None):
            raise ValueError("split: files needs events.splits (a file list for train, valid and test)")
        if self.split != "files" and ev is not None and ev.splits is not None:
            raise ValueError(f"events.splits (given split files) needs split: files, not {self.split}")
        if self.split == "column" and (ev is None or ev.split_column is None):
            raise ValueError("split: column needs events.split_column")
        if self.split != "column" and ev is not None and ev.split_column is not None:
            raise ValueError(f"events.split_column needs split: column, not {self.split}")
        if ev is not None and ev.timestamp is None:
            if self.split == "time":
                raise ValueError("split: time needs events.timestamp (random or given splits do not)")
            if self.activity.enabled:
                raise ValueError("activity features need events.timestamp")
            timed = [n for n, f in ev.features.items() if f.time_part]
            if timed:
                raise ValueError(f"features {timed} use time_part but events have no timestamp")
        seen: dict[str, str] = {}
        reserved = set(EVENT_COLUMNS) | {"split", *USER_ACTIVITY, *ITEM_ACTIVITY}
        for where, feats in (
            ("users", self.users.features if self.users else {}),
            ("items", self.items.features if self.items else {}),
            ("events", ev.features if ev else {}),
        ):
            for name in feats:
                if name in reserved:
                    raise ValueError(f"{where} feature {name!r}: the name is reserved")
                if name in seen:
                    raise ValueError(f"feature {name!r} is described in both {seen[name]} and {where}")
                seen[name] = where
        if ev is not None:
            clash = sorted(set(ev.keep) & set(seen))
            if clash:
                raise ValueError(f"events.keep {clash}: the names are also features")
        return self

    @property
    def user_features(self) -> dict[str, Feature]:
        return dict(self.users.features) if self.users else {}

    @property
    def item_features(self) -> dict[str, Feature]:
        return dict(self.items.features) if self.items else {}

    @property
    def event_features(self) -> dict[str, Feature]:
        return dict(self.events.features) if self.events else {}

    def features(self) -> dict[str, Feature]:
        """Every described model feature: users', then items', then the event-level ones."""
        return {**self.user_features, **self.item_features, **self.event_features}

    def feature_types(self) -> dict[str, str]:
        """Feature name -> ``categorical|numeric|multi_categorical`` (users, items, then events)."""
        return {name: f.type for name, f in self.features().items()}

    def feature_dtypes(self) -> dict[str, str]:
        """Feature name -> ``string|int64|float64``."""
        return {name: str(f.dtype) for name, f in self.features().items()}

    @property
    def has_timestamps(self) -> bool:
        return self.events is None or self.events.timestamp is not None

    @property
    def activity_enabled(self) -> bool:
        """Whether the model gets the activity features (default: on for a time split only)."""
        if self.activity.enabled is not None:
            return self.activity.enabled and self.has_timestamps
        return self.split == "time" and self.has_timestamps

    @property
    def activity_history(self) -> str:
        """``earlier_splits`` or ``train`` (see :class:`ActivityOptions`)."""
        if self.activity.history is not None:
            return self.activity.history
        return "earlier_splits" if self.split == "time" else "train"


@dataclass
class Dataset:
    """Events, user profiles and item profiles of one dataset, in the freshrec schema.

    ``truth`` holds what a generator knows and real data does not (synthetic preferences, drift time);
    ``rejected`` the source rows that could not be turned into events, with their reasons.
    """

    events: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    description: DatasetDescription
    truth: dict[str, Any] = field(default_factory=dict)
    # Source rows that could not become events (raw strings + ``reasons``); prepare quarantines them.
    rejected: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["reasons"]))

    @property
    def name(self) -> str:
        return self.description.name


# ---------------------------------------------------------------------------------------------- loading


def available_descriptions() -> list[str]:
    """Names of the descriptions shipped with freshrec."""
    folder = resources.files("freshrec") / "datasets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_description(name_or_path: str | Path | None = None) -> DatasetDescription:
    """Load a shipped description by name, or a user's YAML file by path.

    Raises:
        ValueError: unknown name, or a description that does not validate (message names the file).
    """
    name_or_path = name_or_path or DEFAULT_DATASET
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"dataset description not found: {path}")
        text, source_dir = path.read_text(), path.resolve().parent
    else:
        res = resources.files("freshrec") / "datasets" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ValueError(
                f"unknown dataset {name_or_path!r}; shipped: {available_descriptions()} (or pass a YAML path)"
            )
        text, source_dir = res.read_text(), None
    try:
        raw = yaml.safe_load(text)
        desc = DatasetDescription.model_validate(raw)
    except Exception as exc:
        raise ValueError(f"invalid dataset description {name_or_path}: {exc}") from exc
    desc._source_dir = source_dir
    return desc


def dataset_dir(description: DatasetDescription, datasets_dir: Path | str) -> Path:
    """The folder holding the dataset's files.

    Tries ``datasets_dir/<dir_name>`` for each of the description's ``dir_names`` (e.g. ``movielens-100k``
    and GroupLens' ``ml-100k``), then ``datasets_dir`` itself, then the folder of a user's YAML file.
    """
    if description.events is None:
        raise ValueError(f"dataset {description.name!r} is generated, it has no files")
    base = Path(datasets_dir)
    tried = [base / n for n in (description.dir_names or [description.name])] + [base]
    if description._source_dir is not None:
        tried.append(description._source_dir)
    names = [name for name, _ in description.events.source_files()]
    for folder in tried:
        if any(_matches(folder, n) for n in names):
            return folder
    raise FileNotFoundError(
        f"dataset {description.name!r}: none of {names} found in " + ", ".join(str(t) for t in tried)
    )


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _matches(folder: Path, name: str) -> list[Path]:
    if _is_pattern(name):
        return sorted(p for p in folder.glob(name) if p.is_file())
    return [folder / name] if (folder / name).is_file() else []


def table_paths(folder: Path, spec: TableSpec) -> list[Path]:
    """The files a table reads: the first candidate found (``file``), or every one of ``files``.

    Raises:
        FileNotFoundError: no candidate found, or one of ``files`` (or a pattern) matches nothing.
    """
    if spec.files:
        out: list[Path] = []
        for name in spec.files:
            found = _matches(folder, name)
            if not found:
                raise FileNotFoundError(f"{name} not found in {folder}")
            out.extend(found)
        return out
    for name in spec.file:
        found = _matches(folder, name)
        if found:
            return found[:1]
    raise FileNotFoundError(f"none of {spec.file} found in {folder}")


def read_table(folder: Path, spec: TableSpec) -> pd.DataFrame:
    """Read a described table (every file of it, concatenated in order).

    Delimited files are read as text (derivations type the values); Parquet and JSONL keep their native
    types (timestamps, integers, lists), so nothing round-trips through text.
    """
    frames = [read_file(path, spec, folder) for path in table_paths(folder, spec)]
    return _concat_files(frames, table_paths(folder, spec))


def _concat_files(frames: list[pd.DataFrame], paths: list[Path]) -> pd.DataFrame:
    for path, df in zip(paths[1:], frames[1:], strict=True):
        if list(df.columns) != list(frames[0].columns):
            raise FileFormatError(
                path, f"columns {list(df.columns)} differ from {paths[0].name}'s {list(frames[0].columns)}"
            )
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def read_file(path: Path, spec: TableSpec, folder: Path | None = None) -> pd.DataFrame:
    """Read one file of a described table (see :func:`read_table`)."""
    fmt = spec.format
    if fmt.type in {"parquet", "jsonl"}:
        try:
            df = (
                pd.read_parquet(path)
                if fmt.type == "parquet"
                else pd.read_json(path, lines=True, dtype=False, convert_dates=False)
            )
        except Exception as exc:  # pyarrow and the JSON reader raise many types for a corrupt file
            raise FileFormatError(path, f"cannot read as {fmt.type}: {exc}") from exc
        if spec.columns:
            df = df.rename(columns=dict(zip(df.columns, spec.columns, strict=False)))
        return df.reset_index(drop=True)
    names = list(spec.columns or [])
    if spec.extra_columns is not None:
        ex = spec.extra_columns
        lines = ((folder or path.parent) / ex.names_file).read_text(encoding=ex.encoding).splitlines()
        names += [ex.prefix + line.split(ex.delimiter)[ex.column] for line in lines if line.strip()]
    raw = path.read_bytes().decode(fmt.encoding)
    sep = fmt.delimiter
    if len(sep) > 1:
        # The C parser takes one-character separators only; swap in a control character that the text lacks.
        if "\x1f" in raw:
            raise FileFormatError(
                path, "contains the \\x1f control character; cannot split a multi-character delimiter"
            )
        raw, sep = raw.replace(fmt.delimiter, "\x1f"), "\x1f"
    try:
        df = pd.read_csv(
            io.StringIO(raw),
            sep=sep,
            header=0 if fmt.header else None,
            dtype=str,
            keep_default_na=False,
            quoting=csv.QUOTE_NONE if fmt.quoting == "none" else csv.QUOTE_MINIMAL,
            index_col=False,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FileFormatError(path, f"cannot parse: {exc}") from exc
    if fmt.header:
        if names:
            if len(names) != df.shape[1]:
                raise FileFormatError(path, f"expected {len(names)} columns {names}, found {df.shape[1]}")
            df.columns = names
    else:
        if df.shape[1] != len(names):
            raise FileFormatError(path, f"expected {len(names)} columns, found {df.shape[1]}")
        df.columns = names
    return df


def read_events(folder: Path, desc: DatasetDescription) -> pd.DataFrame:
    """The raw event rows of every events file, with ``__file__`` (name relative to ``folder``),
    ``__row__`` (row number in that file) and, for ``split: files``, ``__split__``."""
    spec = desc.events
    assert spec is not None
    frames: list[pd.DataFrame] = []
    paths: list[Path] = []
    if spec.splits is None:
        sources: list[tuple[Path, str | None]] = [(p, None) for p in table_paths(folder, spec)]
    else:
        sources = []
        for name, part in spec.source_files():
            found = _matches(folder, name)
            if not found:
                raise FileNotFoundError(f"{part} file {name} not found in {folder}")
            sources.extend((p, part) for p in found)
    for path, part in sources:
        df = read_file(path, spec, folder)
        clash = [c for c in (FILE_COLUMN, ROW_COLUMN, SPLIT_COLUMN) if c in df.columns]
        if clash:
            raise FileFormatError(path, f"column names {clash} are reserved")
        df[FILE_COLUMN] = str(path.relative_to(folder)) if path.is_relative_to(folder) else path.name
        df[ROW_COLUMN] = np.arange(len(df), dtype=np.int64)
        if part is not None:
            df[SPLIT_COLUMN] = part
        frames.append(df)
        paths.append(path)
    return _concat_files(frames, paths)


def _is_native(col: pd.Series) -> bool:
    """A typed column (numbers, booleans, timestamps) rather than text."""
    return (
        pd.api.types.is_numeric_dtype(col)
        or pd.api.types.is_bool_dtype(col)
        or pd.api.types.is_datetime64_any_dtype(col)
    )


def _joined_tokens(values: pd.Series, separator: str | None, excluded: set[str]) -> pd.Series:
    """Multi-valued cells (lists/arrays, or text split at ``separator``) as sorted unique "a|b" strings."""

    def one(v: Any) -> str:
        if isinstance(v, list | tuple | np.ndarray):
            parts = [
                str(p).strip() for p in v if p is not None and not (isinstance(p, float) and np.isnan(p))
            ]
        elif isinstance(v, str):
            parts = [p.strip() for p in (v.split(separator) if separator else [v])]
        elif v is None or (isinstance(v, float) and np.isnan(v)):
            parts = []
        else:
            parts = [str(v)]
        return "|".join(sorted({p for p in parts if p} - excluded))

    return values.map(one)


def derive_feature(
    raw: pd.DataFrame, name: str, feature: Feature, timestamps: pd.Series | None = None
) -> pd.Series:
    """Compute one feature column from the raw columns (text, or native Parquet/JSONL types).

    Args:
        timestamps: the event times (UTC), for ``time_part`` features.
    """
    if feature.flags_prefix is not None:
        cols = [c for c in raw.columns if c.startswith(feature.flags_prefix)]
        if not cols:
            raise ValueError(f"feature {name}: no columns start with {feature.flags_prefix!r}")
        values = [c[len(feature.flags_prefix) :] for c in cols]
        keep = [i for i, v in enumerate(values) if v not in feature.exclude]
        order = sorted(keep, key=lambda i: values[i])
        flags = raw[[cols[i] for i in order]].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy() > 0
        names = np.array([values[i] for i in order], dtype=object)
        return pd.Series(["|".join(names[row]) for row in flags], index=raw.index, dtype=object)
    if feature.time_part is not None:
        if timestamps is None:
            raise ValueError(f"feature {name}: time_part needs the event timestamps")
        dt = pd.Series(timestamps, index=raw.index).dt
        col: pd.Series = {
            "hour": dt.hour,
            "weekday": dt.weekday,
            "day": dt.day,
            "month": dt.month,
            "year": dt.year,
        }[feature.time_part]
    else:
        assert feature.source is not None
        if feature.source not in raw.columns:
            raise ValueError(f"feature {name}: column {feature.source!r} not in {list(raw.columns)}")
        col = raw[feature.source]
        transforms = [feature.map, feature.slice, feature.regex, feature.date_format]
        if feature.type == "multi_categorical" and not any(t is not None for t in transforms):
            return _joined_tokens(col, feature.split, set(feature.exclude)).astype(object)
        if not (feature.type == "numeric" and _is_native(col) and all(t is None for t in transforms)):
            col = id_strings(col) if _is_native(col) else strip_strings(col)
        if feature.map is not None:
            col = col.map(lambda v: feature.map.get(v, v))  # type: ignore[union-attr]
        if feature.slice is not None:
            col = col.str[: feature.slice]
        if feature.regex is not None:
            col = col.str.extract(feature.regex, expand=False)
        if feature.date_format is not None:
            col = pd.to_datetime(col, format=feature.date_format, errors="coerce").dt.year
        if feature.split is not None:
            col = _joined_tokens(col, feature.split, set(feature.exclude))
    if feature.type == "numeric":
        num = pd.to_numeric(col, errors="coerce")
        default = float(feature.default) if feature.default is not None else 0.0
        num = num.astype("float64").fillna(default)
        return num.astype("int64" if feature.dtype == "int64" else "float64")
    default_s = "" if feature.default is None else str(feature.default)
    if feature.time_part is not None:
        col = col.astype(str)
    text = col.astype(object).where(col.notna(), default_s).astype(str)
    if feature.default is not None:
        text = text.where(text != "", default_s)
    return text.astype(object)


def build_profiles(raw: pd.DataFrame, spec: EntityTable, id_column: str) -> pd.DataFrame:
    """Profile table: ``<id_column>`` (prefixed key) + each described feature, one row per id."""
    if spec.key not in raw.columns:
        raise ValueError(f"key column {spec.key!r} not in {list(raw.columns)}")
    out = pd.DataFrame({id_column: (spec.id_prefix + id_strings(raw[spec.key])).astype(object)})
    for name, feature in spec.features.items():
        out[name] = derive_feature(raw, name, feature).to_numpy()
    dup = out[id_column].duplicated()
    if dup.any():
        log.warning("%d duplicate %s rows dropped (first kept)", int(dup.sum()), id_column)
        out = out.loc[~dup]
    return out.reset_index(drop=True)


def _strip(values: pd.Series) -> pd.Series:
    return id_strings(values) if _is_native(values) else strip_strings(values)


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Events ordered by ``(event_timestamp, event_id)``, a fresh index; ties always break the same way.

    numpy's lexsort on fixed-width strings: several times faster than pandas' multi-key sort on object ids.
    """
    if events.empty:
        return events.reset_index(drop=True)
    ts = events["event_timestamp"].astype("int64").to_numpy()
    order = np.lexsort((events["event_id"].to_numpy(dtype=str), ts))
    return events.iloc[order].reset_index(drop=True)


def event_times(values: pd.Series, spec: TimestampSpec) -> tuple[pd.Series, np.ndarray]:
    """Event times (UTC, NaT where missing or unparseable) and the mask of missing ones.

    A native timestamp column is used as it is (naive values are UTC); native numbers are epoch values in
    ``spec.unit``; text is parsed with ``spec.format`` or as epoch numbers.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = pd.to_datetime(values, utc=True)
        return ts.astype("datetime64[ns, UTC]"), values.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        ts = pd.to_datetime(values, unit=spec.unit or "s", utc=True, errors="coerce")
        return ts.astype("datetime64[ns, UTC]"), values.isna().to_numpy()
    text = _strip(values)
    if spec.format is not None:
        ts = pd.to_datetime(text, format=spec.format, utc=True, errors="coerce")
    else:
        ts = pd.to_datetime(
            pd.to_numeric(text, errors="coerce"), unit=spec.unit or "s", utc=True, errors="coerce"
        )
    return ts.astype("datetime64[ns, UTC]"), (text == "").to_numpy()


def _event_id(raw: pd.DataFrame, template: str) -> pd.Series:
    parts: list[pd.Series] = []
    for literal, fname, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(pd.Series(literal, index=raw.index))
        if fname:
            col = _TEMPLATE_FIELDS.get(fname, fname)
            if col not in raw.columns:
                raise ValueError(
                    f"event_id template {template!r}: column {fname!r} not in "
                    f"{[c for c in raw.columns if c not in _TEMPLATE_FIELDS.values()]}"
                )
            parts.append(_strip(raw[col]))
    event_id = parts[0] if parts else pd.Series("", index=raw.index)
    for part in parts[1:]:
        event_id = event_id + part
    return event_id


def _kept(col: pd.Series) -> pd.Series:
    """A kept raw column: native types as they are; text that is all integers as int64."""
    if _is_native(col):
        return col
    num = pd.to_numeric(col, errors="coerce")
    return num.astype("int64") if num.notna().all() and (num == num.round()).all() else col


def build_events(raw: pd.DataFrame, desc: DatasetDescription) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events in the contract schema from the raw rows, and the rows that cannot be events.

    Returns:
        ``(events, rejected)``: events sorted by time, with the kept columns, the event-level features
        and, for given splits, ``split`` (train/valid/test); rejected raw rows (as text) with a
        ``reasons`` column (empty user/item key, missing or unparseable timestamp, label column not a
        value the rule can compare, a split value that is none of the described ones), so that
        ``prepare`` quarantines them instead of losing them.
    """
    spec = desc.events
    assert spec is not None and spec.event_id is not None
    needed = [spec.user_key, spec.item_key, spec.label.column, *spec.keep]
    if spec.timestamp is not None:
        needed.append(spec.timestamp.column)
    if spec.split_column is not None:
        needed.append(spec.split_column.column)
    for col in needed:
        if col not in raw.columns:
            raise ValueError(
                f"dataset {desc.name}: event column {col!r} not in "
                f"{[c for c in raw.columns if not c.startswith('__')]}"
            )
    if spec.drop is not None:
        raw = raw.loc[~spec.drop.evaluate(raw)]
    if spec.timestamp is not None:
        ts, ts_missing = event_times(raw[spec.timestamp.column], spec.timestamp)
    else:
        ts = pd.Series(NO_TIMESTAMP, index=raw.index).astype("datetime64[ns, UTC]")
        ts_missing = np.zeros(len(raw), dtype=bool)
    event_id = _event_id(raw, spec.event_id)
    user_raw, item_raw = _strip(raw[spec.user_key]), _strip(raw[spec.item_key])
    label_raw = raw[spec.label.column]
    label_bad = (label_raw.isna() | (_strip(label_raw) == "")).to_numpy()
    if isinstance(spec.label.value, float):
        label_bad |= pd.to_numeric(label_raw, errors="coerce").isna().to_numpy()
    checks = {
        "user_id_empty": (user_raw == "").to_numpy(),
        "item_id_empty": (item_raw == "").to_numpy(),
        "timestamp_missing": ts_missing,
        "timestamp_unparseable": ts.isna().to_numpy() & ~ts_missing,
        "label_unparseable": label_bad,
    }
    split: pd.Series | None = None
    if spec.split_column is not None:
        split = _strip(raw[spec.split_column.column]).map(spec.split_column.labels())
        checks["split_unknown"] = split.isna().to_numpy()
    elif SPLIT_COLUMN in raw.columns:
        split = raw[SPLIT_COLUMN]
    bad = np.logical_or.reduce(list(checks.values()))
    rejected = raw.loc[bad].astype(str).rename(columns={FILE_COLUMN: "source_file", ROW_COLUMN: "source_row"})
    rejected = rejected.drop(columns=[SPLIT_COLUMN], errors="ignore")
    if bad.any():
        names = np.array(list(checks))
        matrix = np.column_stack([m[bad] for m in checks.values()])
        rejected["reasons"] = [";".join(names[row]) for row in matrix]
        log.warning(
            "dataset %s: %d rows cannot be events (%s)", desc.name, int(bad.sum()), names[matrix.any(0)]
        )
    else:
        rejected["reasons"] = pd.Series(dtype=object)
    user_prefix = desc.users.id_prefix if desc.users else ""
    item_prefix = desc.items.id_prefix if desc.items else ""
    events = pd.DataFrame(
        {
            "event_id": event_id.astype(object),
            "event_timestamp": ts.astype("datetime64[ns, UTC]"),
            "user_id": (user_prefix + user_raw).astype(object),
            "item_id": (item_prefix + item_raw).astype(object),
            "label": spec.label.evaluate(raw).astype("int8"),
        },
        index=raw.index,
    )
    for col in spec.keep:
        events[col] = _kept(raw[col])
    for name, feature in spec.features.items():
        events[name] = derive_feature(raw, name, feature, timestamps=ts).to_numpy()
    if split is not None:
        events["split"] = split.astype(object)
    events = sort_events(events.loc[~bad])
    if spec.tail is not None:
        events = events.iloc[-spec.tail :].reset_index(drop=True)
    return events, rejected.reset_index(drop=True)


def _ids_only(events: pd.DataFrame, column: str) -> pd.DataFrame:
    """A profile table without features (no user or item table described): the distinct ids."""
    return pd.DataFrame({column: pd.unique(events[column].to_numpy(dtype=object))}).astype(object)


def load_dataset(description: DatasetDescription | str | Path, datasets_dir: Path | str) -> Dataset:
    """Load a described dataset from ``datasets_dir`` into the freshrec schema (events sorted by time)."""
    desc = description if isinstance(description, DatasetDescription) else load_description(description)
    folder = dataset_dir(desc, datasets_dir)
    assert desc.events is not None
    events, rejected = build_events(read_events(folder, desc), desc)
    users = (
        build_profiles(read_table(folder, desc.users), desc.users, "user_id")
        if desc.users is not None
        else _ids_only(events, "user_id")
    )
    items = (
        build_profiles(read_table(folder, desc.items), desc.items, "item_id")
        if desc.items is not None
        else _ids_only(events, "item_id")
    )
    log.info(
        "loaded %s from %s: %d events, %d users, %d items",
        desc.name,
        folder,
        len(events),
        len(users),
        len(items),
    )
    return Dataset(events=events, users=users, items=items, description=desc, rejected=rejected)


# ---------------------------------------------------------------------------------------------- splits


def _check_fractions(fractions: tuple[float, ...] | list[float]) -> list[Fraction]:
    """The fractions as exact decimals (0.7 is 7/10, not the nearest binary float)."""
    try:
        exact = [Fraction(str(f)) for f in fractions]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"fractions must be numbers, got {fractions}") from exc
    if not exact or any(f < 0 for f in exact) or sum(exact) <= 0 or sum(exact) > 1:
        raise ValueError(f"fractions must be non-negative and sum to at most 1, got {list(fractions)}")
    return exact


def split_cuts(n: int, fractions: tuple[float, ...] | list[float]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each part of ``n`` ordered rows.

    Rounding rule: the cut after part ``i`` is at ``n * (f_1 + ... + f_i)`` rounded half up, computed
    exactly with each fraction read as the decimal it is written as (so 0.7/0.2/0.1 of 10 rows is 7:2:1,
    of 45 rows 32:9:4); when the fractions sum to 1 the last part ends at ``n``. Every part is within one
    row of its exact share and the parts never overlap.
    """
    exact = _check_fractions(fractions)
    bounds, total = [], Fraction(0)
    for f in exact:
        total += f
        bounds.append(math.floor(n * total + Fraction(1, 2)))
    if sum(exact) == 1:
        bounds[-1] = n
    starts = [0, *bounds[:-1]]
    return list(zip(starts, bounds, strict=True))


def time_split(
    events: pd.DataFrame, fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
) -> tuple[pd.DataFrame, ...]:
    """Split events by time: the first 80% of events train, the next 10% validate, the last 10% test.

    Events are ordered by ``(event_timestamp, event_id)``, so ties at a boundary are broken the same way
    every time. Each part is returned in time order with a fresh index. Sizes: :func:`split_cuts`.
    """
    ordered = sort_events(events)
    return tuple(ordered.iloc[a:b].reset_index(drop=True) for a, b in split_cuts(len(ordered), fractions))


def random_split(
    events: pd.DataFrame, fractions: tuple[float, ...] = (0.8, 0.1, 0.1), seed: int = 42
) -> tuple[pd.DataFrame, ...]:
    """Split events uniformly at random (seeded; the AutoInt protocol). Each part is in time order."""
    ordered = sort_events(events)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    parts = []
    for a, b in split_cuts(len(ordered), fractions):
        parts.append(ordered.iloc[np.sort(perm[a:b])].reset_index(drop=True))
    return tuple(parts)


def effective_fractions(
    description: DatasetDescription, fractions: tuple[float, ...] | None = None
) -> tuple[float, ...]:
    """The split shares used: the description's ``split_fractions``, else ``fractions``, else 0.8/0.1/0.1."""
    if description.split_fractions is not None:
        return tuple(description.split_fractions)
    return tuple(fractions) if fractions is not None else (0.8, 0.1, 0.1)


def split_count(description: DatasetDescription, fractions: tuple[float, ...] | None = None) -> int:
    """How many parts :func:`split_events` returns (3 for given splits)."""
    return 3 if description.split in ("files", "column") else len(effective_fractions(description, fractions))


def split_labels(
    events: pd.DataFrame,
    description: DatasetDescription,
    fractions: tuple[float, ...] | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """The part (0 = train, 1 = valid, 2 = test, ...) of every row of ``events``, in its row order.

    ``split: time|random`` cut the rows ordered by ``(event_timestamp, event_id)`` (randomly permuted for
    ``random``, seeded) at :func:`split_cuts` of the description's ``split_fractions``, else
    ``fractions``, else 0.8/0.1/0.1; ``split: files|column`` follow the events' ``split`` column.
    """
    n = len(events)
    if description.split in ("files", "column"):
        if "split" not in events.columns:
            raise ValueError(f"dataset {description.name}: split {description.split} needs a 'split' column")
        codes = events["split"].map({p: i for i, p in enumerate(SPLITS)})
        if codes.isna().any():
            bad = events["split"][codes.isna()].iloc[0]
            raise ValueError(f"dataset {description.name}: split value {bad!r} is none of {list(SPLITS)}")
        return codes.to_numpy(dtype=np.int8)
    if n == 0:
        return np.zeros(0, dtype=np.int8)
    ts = events["event_timestamp"].astype("int64").to_numpy()
    order = np.lexsort((events["event_id"].to_numpy(dtype=str), ts))
    if description.split == "random":
        order = order[np.random.default_rng(description.split_seed if seed is None else seed).permutation(n)]
    labels = np.full(n, -1, dtype=np.int8)
    for k, (a, b) in enumerate(split_cuts(n, effective_fractions(description, fractions))):
        labels[order[a:b]] = k
    return labels


def split_events(
    events: pd.DataFrame,
    description: DatasetDescription,
    fractions: tuple[float, ...] | None = None,
    seed: int | None = None,
) -> tuple[pd.DataFrame, ...]:
    """Split as the description says (see :func:`split_labels`); each part in time order, fresh index.

    Rows left out by fractions summing to less than 1 are in no part.
    """
    labels = split_labels(events, description, fractions, seed)
    parts = split_count(description, fractions)
    base = events.reset_index(drop=True)
    return tuple(sort_events(base.loc[labels == k]) for k in range(parts))
