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
(multi-valued field) or ``flags_prefix`` (one 0/1 column per value, e.g. MovieLens' genre flags whose
names come from ``extra_columns.names_file``). Rows that cannot become events (empty keys, unparseable
timestamp or label column) are returned in ``Dataset.rejected`` with their reasons.

The loader returns a :class:`Dataset` in the event contract (see ``freshrec.data``).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from freshrec.data.validation import FileFormatError, strip_strings

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


class Feature(_Strict):
    """One profile feature and how it is derived from raw columns.

    Exactly one source: ``from`` (a column, optionally transformed by ``slice``, ``map``, ``regex``,
    ``date_format`` or ``split``) or ``flags_prefix`` (one 0/1 column per value, e.g. genre flags).
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
    exclude: list[str] = Field(default_factory=list)  # values dropped from multi_categorical
    default: str | int | float | None = None  # for missing/unparseable values
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Feature:
        if (self.source is None) == (self.flags_prefix is None):
            raise ValueError("a feature needs exactly one of 'from' or 'flags_prefix'")
        if (self.split or self.flags_prefix) and self.type != "multi_categorical":
            raise ValueError("'split'/'flags_prefix' produce a multi_categorical feature")
        if self.regex is not None and re.compile(self.regex).groups < 1:
            raise ValueError(f"regex {self.regex!r} needs a capture group")
        if self.dtype is None:
            self.dtype = "float64" if self.type == "numeric" else "string"
        if self.type != "numeric" and self.dtype != "string":
            raise ValueError(f"{self.type} features are strings, not {self.dtype}")
        return self


class TableSpec(_Strict):
    """A file (the first candidate found wins) with its format and column names."""

    file: list[str]
    format: FileFormat = Field(default_factory=FileFormat)
    columns: list[str] | None = None
    extra_columns: ExtraColumns | None = None

    @field_validator("file", mode="before")
    @classmethod
    def _files(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_columns(self) -> TableSpec:
        if self.format.type == "delimited" and not self.format.header and not self.columns:
            raise ValueError(f"{self.file}: a file without a header needs 'columns'")
        return self


class EntityTable(TableSpec):
    """Users or items: the key column, an optional id prefix and the profile features."""

    key: str
    id_prefix: str = ""
    features: dict[str, Feature] = Field(default_factory=dict)


class TimestampSpec(_Strict):
    column: str
    unit: Literal["s", "ms", "us", "ns"] | None = "s"  # epoch numbers; None with `format` for date strings
    format: str | None = None


class EventTable(TableSpec):
    """Interactions: keys, timestamp, label rule and how event ids are built."""

    user_key: str = "user_id"
    item_key: str = "item_id"
    timestamp: TimestampSpec
    label: Condition
    drop: Condition | None = None  # rows matching it are not events at all (AutoInt: rating == 3)
    # A template over raw columns; deterministic so that re-ingesting a file is idempotent.
    event_id: str = "{user_id}-{item_id}-{timestamp}"
    keep: list[str] = Field(default_factory=list)  # raw columns kept as context
    tail: int | None = None  # keep only the last N events by time (e.g. a full ratings.dat for the 1M tail)

    @field_validator("label", "drop", mode="before")
    @classmethod
    def _conditions(cls, value: Any) -> Any:
        return _condition(value)


class DatasetDescription(_Strict):
    """A dataset: where its files are and how to turn them into events, users and items."""

    name: str
    title: str = ""
    description: str = ""
    # Folder names tried under datasets_dir (ours and the official GroupLens archive's).
    dir_names: list[str] = Field(default_factory=list)
    split: Literal["time", "random"] = "time"
    split_seed: int = 42
    events: EventTable | None = None  # None for generated data (synthetic)
    users: EntityTable
    items: EntityTable

    _source_dir: Path | None = PrivateAttr(default=None)

    @property
    def user_features(self) -> dict[str, Feature]:
        return dict(self.users.features)

    @property
    def item_features(self) -> dict[str, Feature]:
        return dict(self.items.features)

    def feature_types(self) -> dict[str, str]:
        """Profile feature name -> ``categorical|numeric|multi_categorical`` (users first, then items)."""
        return {name: f.type for name, f in {**self.users.features, **self.items.features}.items()}

    def feature_dtypes(self) -> dict[str, str]:
        """Profile feature name -> ``string|int64|float64``."""
        return {name: str(f.dtype) for name, f in {**self.users.features, **self.items.features}.items()}


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
    for folder in tried:
        if any((folder / f).is_file() for f in description.events.file):
            return folder
    raise FileNotFoundError(
        f"dataset {description.name!r}: none of {description.events.file} found in "
        + ", ".join(str(t) for t in tried)
    )


def _first_existing(folder: Path, spec: TableSpec) -> Path:
    for name in spec.file:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"none of {spec.file} found in {folder}")


def read_table(folder: Path, spec: TableSpec) -> pd.DataFrame:
    """Read one described file with every value as a string (derivations type them later)."""
    path = _first_existing(folder, spec)
    fmt = spec.format
    if fmt.type in {"parquet", "jsonl"}:
        try:
            df = (
                pd.read_parquet(path)
                if fmt.type == "parquet"
                else pd.read_json(path, lines=True, dtype=False)
            )
        except Exception as exc:  # pyarrow and the JSON reader raise many types for a corrupt file
            raise FileFormatError(path, f"cannot read as {fmt.type}: {exc}") from exc
        df = df.astype(object).where(df.notna(), "").astype(str)
        if spec.columns:
            df = df.rename(columns=dict(zip(df.columns, spec.columns, strict=False)))
        return df
    names = list(spec.columns or [])
    if spec.extra_columns is not None:
        ex = spec.extra_columns
        lines = (folder / ex.names_file).read_text(encoding=ex.encoding).splitlines()
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


def derive_feature(raw: pd.DataFrame, name: str, feature: Feature) -> pd.Series:
    """Compute one profile feature column from the raw (string) columns."""
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
    assert feature.source is not None
    if feature.source not in raw.columns:
        raise ValueError(f"feature {name}: column {feature.source!r} not in {list(raw.columns)}")
    col = raw[feature.source].astype(str).str.strip()
    if feature.map is not None:
        col = col.map(lambda v: feature.map.get(v, v))  # type: ignore[union-attr]
    if feature.slice is not None:
        col = col.str[: feature.slice]
    if feature.regex is not None:
        col = col.str.extract(feature.regex, expand=False)
    if feature.date_format is not None:
        col = pd.to_datetime(col, format=feature.date_format, errors="coerce").dt.year
    if feature.split is not None:
        excluded = set(feature.exclude)
        col = col.map(
            lambda v: (
                "|".join(sorted({p.strip() for p in str(v).split(feature.split) if p.strip()} - excluded))
                if isinstance(v, str)
                else ""
            )
        )
    if feature.type == "numeric":
        num = pd.to_numeric(col, errors="coerce")
        default = float(feature.default) if feature.default is not None else 0.0
        num = num.fillna(default)
        return num.astype("int64" if feature.dtype == "int64" else "float64")
    default_s = "" if feature.default is None else str(feature.default)
    return col.astype(object).where(col.notna(), default_s).astype(str).astype(object)


def build_profiles(raw: pd.DataFrame, spec: EntityTable, id_column: str) -> pd.DataFrame:
    """Profile table: ``<id_column>`` (prefixed key) + each described feature, one row per id."""
    if spec.key not in raw.columns:
        raise ValueError(f"key column {spec.key!r} not in {list(raw.columns)}")
    out = pd.DataFrame({id_column: (spec.id_prefix + raw[spec.key].astype(str).str.strip()).astype(object)})
    for name, feature in spec.features.items():
        out[name] = derive_feature(raw, name, feature).to_numpy()
    dup = out[id_column].duplicated()
    if dup.any():
        log.warning("%d duplicate %s rows dropped (first kept)", int(dup.sum()), id_column)
        out = out.loc[~dup]
    return out.reset_index(drop=True)


def _strip(values: pd.Series) -> pd.Series:
    return strip_strings(values.astype(str))


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Events ordered by ``(event_timestamp, event_id)``, a fresh index; ties always break the same way.

    numpy's lexsort on fixed-width strings: several times faster than pandas' multi-key sort on object ids.
    """
    if events.empty:
        return events.reset_index(drop=True)
    ts = events["event_timestamp"].astype("int64").to_numpy()
    order = np.lexsort((events["event_id"].to_numpy(dtype=str), ts))
    return events.iloc[order].reset_index(drop=True)


def build_events(raw: pd.DataFrame, desc: DatasetDescription) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events in the contract schema from the raw (string) rows, and the rows that cannot be events.

    Returns:
        ``(events, rejected)``: events sorted by time; rejected raw rows (strings) with a ``reasons``
        column (empty user/item key, unparseable timestamp, label column not a value the rule can compare),
        so that ``prepare`` quarantines them instead of losing them.
    """
    spec = desc.events
    assert spec is not None
    for col in [spec.user_key, spec.item_key, spec.timestamp.column, *spec.keep]:
        if col not in raw.columns:
            raise ValueError(f"dataset {desc.name}: event column {col!r} not in {list(raw.columns)}")
    if spec.drop is not None:
        raw = raw.loc[~spec.drop.evaluate(raw)]
    ts_col = _strip(raw[spec.timestamp.column])
    if spec.timestamp.format is not None:
        ts = pd.to_datetime(ts_col, format=spec.timestamp.format, utc=True, errors="coerce")
    else:
        ts = pd.to_datetime(pd.to_numeric(ts_col, errors="coerce"), unit=spec.timestamp.unit or "s", utc=True)
    parts: list[pd.Series] = []
    for literal, fname, _, _ in string.Formatter().parse(spec.event_id):
        if literal:
            parts.append(pd.Series(literal, index=raw.index))
        if fname:
            if fname not in raw.columns:
                raise ValueError(
                    f"event_id template {spec.event_id!r}: column {fname!r} not in {list(raw.columns)}"
                )
            parts.append(_strip(raw[fname]))
    event_id = parts[0]
    for part in parts[1:]:
        event_id = event_id + part
    user_raw, item_raw = _strip(raw[spec.user_key]), _strip(raw[spec.item_key])
    label_col = _strip(raw[spec.label.column]) if spec.label.column in raw.columns else None
    if label_col is None:
        raise ValueError(
            f"dataset {desc.name}: label column {spec.label.column!r} not in {list(raw.columns)}"
        )
    label_bad = (label_col == "").to_numpy()
    if isinstance(spec.label.value, float):
        label_bad |= pd.to_numeric(label_col, errors="coerce").isna().to_numpy()
    checks = {
        "user_id_empty": (user_raw == "").to_numpy(),
        "item_id_empty": (item_raw == "").to_numpy(),
        "timestamp_missing": (ts_col == "").to_numpy(),
        "timestamp_unparseable": (ts.isna() & (ts_col != "")).to_numpy(),
        "label_unparseable": label_bad,
    }
    bad = np.logical_or.reduce(list(checks.values()))
    rejected = raw.loc[bad].astype(str).copy()
    if bad.any():
        names = np.array(list(checks))
        matrix = np.column_stack([m[bad] for m in checks.values()])
        rejected["reasons"] = [";".join(names[row]) for row in matrix]
        log.warning(
            "dataset %s: %d rows cannot be events (%s)", desc.name, int(bad.sum()), names[matrix.any(0)]
        )
    else:
        rejected["reasons"] = pd.Series(dtype=object)
    events = pd.DataFrame(
        {
            "event_id": event_id.astype(object),
            "event_timestamp": ts.astype("datetime64[ns, UTC]"),
            "user_id": (desc.users.id_prefix + user_raw).astype(object),
            "item_id": (desc.items.id_prefix + item_raw).astype(object),
            "label": spec.label.evaluate(raw).astype("int8"),
        },
        index=raw.index,
    )
    for col in spec.keep:
        num = pd.to_numeric(raw[col], errors="coerce")
        events[col] = num.astype("int64") if num.notna().all() and (num == num.round()).all() else raw[col]
    events = sort_events(events.loc[~bad])
    if spec.tail is not None:
        events = events.iloc[-spec.tail :].reset_index(drop=True)
    return events, rejected.reset_index(drop=True)


def load_dataset(description: DatasetDescription | str | Path, datasets_dir: Path | str) -> Dataset:
    """Load a described dataset from ``datasets_dir`` into the freshrec schema (events sorted by time)."""
    desc = description if isinstance(description, DatasetDescription) else load_description(description)
    folder = dataset_dir(desc, datasets_dir)
    assert desc.events is not None
    events, rejected = build_events(read_table(folder, desc.events), desc)
    users = build_profiles(read_table(folder, desc.users), desc.users, "user_id")
    items = build_profiles(read_table(folder, desc.items), desc.items, "item_id")
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


def _check_fractions(fractions: tuple[float, ...] | list[float]) -> np.ndarray:
    arr = np.asarray(fractions, dtype=float)
    if arr.ndim != 1 or len(arr) < 1 or (arr < 0).any() or arr.sum() <= 0 or arr.sum() > 1 + 1e-9:
        raise ValueError(f"fractions must be non-negative and sum to at most 1, got {fractions}")
    return arr


def _cut(n: int, fractions: np.ndarray) -> list[tuple[int, int]]:
    bounds = np.round(np.cumsum(fractions) * n).astype(int)
    if abs(fractions.sum() - 1) < 1e-9:
        bounds[-1] = n
    starts = np.concatenate([[0], bounds[:-1]])
    return list(zip(starts.tolist(), bounds.tolist(), strict=True))


def time_split(
    events: pd.DataFrame, fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
) -> tuple[pd.DataFrame, ...]:
    """Split events by time: the first 80% of events train, the next 10% validate, the last 10% test.

    Events are ordered by ``(event_timestamp, event_id)``, so ties at a boundary are broken the same way
    every time. Each part is returned in time order with a fresh index.
    """
    arr = _check_fractions(fractions)
    ordered = sort_events(events)
    return tuple(ordered.iloc[a:b].reset_index(drop=True) for a, b in _cut(len(ordered), arr))


def random_split(
    events: pd.DataFrame, fractions: tuple[float, ...] = (0.8, 0.1, 0.1), seed: int = 42
) -> tuple[pd.DataFrame, ...]:
    """Split events uniformly at random (seeded; the AutoInt protocol). Each part is in time order."""
    arr = _check_fractions(fractions)
    ordered = sort_events(events)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    parts = []
    for a, b in _cut(len(ordered), arr):
        parts.append(ordered.iloc[np.sort(perm[a:b])].reset_index(drop=True))
    return tuple(parts)


def split_events(
    events: pd.DataFrame,
    description: DatasetDescription,
    fractions: tuple[float, ...] = (0.8, 0.1, 0.1),
    seed: int | None = None,
) -> tuple[pd.DataFrame, ...]:
    """Split as the description says (``split: time`` or ``random``)."""
    if description.split == "random":
        return random_split(events, fractions, description.split_seed if seed is None else seed)
    return time_split(events, fractions)
