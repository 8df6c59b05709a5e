"""What a check needs of its windows: column kinds, the cached reference profile, window readers.

A :class:`ReferenceProfile` (sorted numeric values, category counts, a report sample) is computed once per
model version and cached on disk (``profile_cache_dir`` + ``cache_key``), so a later check reads only the
current window.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from freshrec.monitoring.drift.result import ColumnKind

log = logging.getLogger(__name__)


def resolve_columns(
    columns_or_spec: Any, frame: pd.DataFrame, exclude: Sequence[str] = ()
) -> dict[str, ColumnKind]:
    """Turn the caller's column choice into ``{name: kind}``.

    Accepts ``None`` (every column of ``frame`` except ``exclude`` and timestamps), a list of names (kinds from the dtypes), a mapping
    ``name -> "numeric"|"categorical"``, or a model feature spec (an object with ``.features`` whose items
    have ``.name`` and ``.dtype``; string features are categorical).
    """
    if columns_or_spec is None:
        names = [
            c
            for c in frame.columns
            if c not in exclude and not pd.api.types.is_datetime64_any_dtype(frame[c])
        ]
        return {n: _kind_of(frame[n]) for n in names}
    if isinstance(columns_or_spec, Mapping):
        out: dict[str, ColumnKind] = {}
        for name, kind in columns_or_spec.items():
            if kind not in ("numeric", "categorical"):
                raise ValueError(f"column {name!r}: kind must be 'numeric' or 'categorical', got {kind!r}")
            out[str(name)] = kind
        return out
    features = getattr(columns_or_spec, "features", None)
    if features is not None:
        return {
            f.name: ("categorical" if str(getattr(f, "dtype", "")) == "string" else "numeric")
            for f in features
            if f.name not in ("user_id", "item_id")  # identities are not features whose drift means anything
        }
    if isinstance(columns_or_spec, str):
        columns_or_spec = [columns_or_spec]
    out = {}
    for name in columns_or_spec:
        if name not in frame.columns:
            raise ValueError(f"column {name!r} is not in the reference data (columns: {list(frame.columns)})")
        out[name] = _kind_of(frame[name])
    return out


def _kind_of(series: pd.Series) -> ColumnKind:
    """As Evidently infers: floats are numeric, integers with at most 10 values categorical, strings categorical."""
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return "categorical"
    if pd.api.types.is_integer_dtype(series) and series.nunique() <= 10:
        return "categorical"
    return "numeric"


@dataclass
class ReferenceProfile:
    """What a check needs of the reference window, computed once per model version.

    Numeric columns keep their sorted non-missing values (exact CDFs and quantiles for any later window);
    categorical columns keep their category counts; ``sample`` is a bounded stratified sample for the
    Evidently HTML report.
    """

    columns: dict[str, ColumnKind]
    n_rows: int
    types: dict[str, TypeFamily] = field(default_factory=dict)  # stored type of each column (schema check)
    growth_origin: str | None = None  # ISO time growth columns were normalised from (see normalise_growth)
    sorted_values: dict[str, np.ndarray] = field(default_factory=dict)
    category_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # score / label columns (sorted / raw)
    sample: pd.DataFrame | None = None
    key: str | None = None

    @classmethod
    def build(
        cls,
        frame: pd.DataFrame,
        columns: Mapping[str, ColumnKind],
        *,
        extra_columns: Sequence[str] = (),
        sample_rows: int = 50_000,
        stratify: str | None = None,
        seed: int = 0,
        key: str | None = None,
        growth_origin: str | None = None,
    ) -> ReferenceProfile:
        prof = cls(columns=dict(columns), n_rows=len(frame), key=key, growth_origin=growth_origin)
        for name, kind in columns.items():
            if name not in frame.columns:
                raise ValueError(f"column {name!r} is not in the reference data")
            s = frame[name]
            prof.types[name] = type_family(s)
            if kind == "numeric":
                prof.sorted_values[name] = _sorted_finite(s)
                prof.missing[name] = len(s) - len(prof.sorted_values[name])
            else:
                prof.category_counts[name], prof.missing[name] = _category_counts(s)
        for name in extra_columns:
            if name in frame.columns:
                prof.extra[name] = _sorted_finite(frame[name])
        keep = list(dict.fromkeys(c for c in list(columns) + list(extra_columns) if c in frame.columns))
        prof.sample = stratified_sample(frame, sample_rows, stratify, seed, keep)
        return prof

    def save(self, directory: Path) -> Path:
        """Save as ``profile.npz`` + ``profile.json`` + ``sample.parquet`` in ``directory`` (atomic)."""
        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        arrays = {f"num__{k}": v for k, v in self.sorted_values.items()}
        arrays.update({f"extra__{k}": v for k, v in self.extra.items()})
        np.savez(tmp / "profile.npz", **arrays)
        meta = {
            "columns": self.columns,
            "n_rows": self.n_rows,
            "category_counts": self.category_counts,
            "missing": self.missing,
            "key": self.key,
            "types": self.types,
            "growth_origin": self.growth_origin,
        }
        (tmp / "profile.json").write_text(json.dumps(meta))
        if self.sample is not None:
            self.sample.to_parquet(tmp / "sample.parquet")
        if directory.exists():
            import shutil

            shutil.rmtree(directory)
        os.replace(tmp, directory)
        return directory

    @classmethod
    def load(cls, directory: Path) -> ReferenceProfile:
        directory = Path(directory)
        meta = json.loads((directory / "profile.json").read_text())
        with np.load(directory / "profile.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        sample_path = directory / "sample.parquet"
        return cls(
            columns=meta["columns"],
            n_rows=meta["n_rows"],
            sorted_values={k[5:]: v for k, v in arrays.items() if k.startswith("num__")},
            category_counts=meta["category_counts"],
            missing=meta["missing"],
            extra={k[7:]: v for k, v in arrays.items() if k.startswith("extra__")},
            sample=pd.read_parquet(sample_path) if sample_path.exists() else None,
            key=meta.get("key"),
            types=meta.get("types", {}),
            growth_origin=meta.get("growth_origin"),
        )

    def n_unique(self, name: str) -> int:
        """Distinct non-missing values of a reference column."""
        if name in self.sorted_values:
            v = self.sorted_values[name]
            return int(np.count_nonzero(v[1:] != v[:-1]) + 1) if len(v) else 0
        return len(self.category_counts.get(name, {}))


def cached_profile(
    reference: pd.DataFrame | Path | str,
    columns_or_spec: Any,
    cache_dir: Path,
    key: str,
    exclude: Sequence[str] = (),
    **build_kwargs: Any,
) -> ReferenceProfile:
    """The reference profile for ``key`` (e.g. ``"ctr-v7"``), built and cached on first use.

    The cache is also keyed by the column set, so a changed model spec never reuses a stale profile.
    """
    frame = reference if isinstance(reference, pd.DataFrame) else read_frame(reference)
    columns = resolve_columns(
        columns_or_spec, frame, exclude=[*exclude, *build_kwargs.get("extra_columns", ())]
    )
    identity = [sorted(columns.items()), build_kwargs.get("growth_origin")]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]
    directory = Path(cache_dir) / f"{_safe(key)}-{digest}"
    if (directory / "profile.json").exists():
        log.info("reference profile %s loaded from cache %s", key, directory)
        return ReferenceProfile.load(directory)
    prof = ReferenceProfile.build(frame, columns, key=key, **build_kwargs)
    prof.save(directory)
    log.info("reference profile %s cached in %s", key, directory)
    return prof


TypeFamily = Literal["numeric", "bool", "datetime", "string"]


def type_family(series: pd.Series) -> TypeFamily:
    """The stored type of a column, coarse enough that int32 vs int64 is no change but "1995" vs 1995 is."""
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    return "string"


def normalise_growth(
    frame: pd.DataFrame, patterns: Sequence[str], origin: pd.Timestamp | str | None
) -> pd.DataFrame:
    """Columns that grow with the stream's age (``*_events_total``) divided by that age in hours.

    A counter since the start of the stream is larger in every later window by construction; per hour of
    history, it is the entity's average rate, which only moves when behaviour does. Needs the rows'
    ``event_timestamp`` and the stream's first event (``origin``); without either the frame is unchanged.
    """
    if origin is None or not patterns or "event_timestamp" not in frame.columns:
        return frame
    names = [c for c in frame.columns if any(fnmatch.fnmatch(c, p) for p in patterns)]
    if not names:
        return frame
    ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    hours = ((ts - pd.to_datetime(origin, utc=True)).dt.total_seconds() / 3600.0).clip(lower=1.0).to_numpy()
    out = frame.copy()
    for name in names:
        if pd.api.types.is_numeric_dtype(out[name]):
            out[name] = out[name].to_numpy(dtype=np.float64) / hours
    return out


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _sorted_finite(s: pd.Series) -> np.ndarray:
    values = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    values = values[np.isfinite(values)]
    values.sort()
    return values


def _category_counts(s: pd.Series) -> tuple[dict[str, int], int]:
    """Category counts (keys as strings) and the number of missing values, in one hashing pass."""
    # Count first, then stringify the (small) index: much faster than stringifying every row; and a
    # separate isna() over an object column costs as much as the counting itself.
    counts = s.value_counts(dropna=False)
    missing = counts.index.isna()
    n_missing = int(counts[missing].sum())
    counts = counts[~missing]
    if len(counts) == 0:
        return {}, n_missing
    keys = counts.index.map(str)
    return {str(k): int(v) for k, v in counts.groupby(keys).sum().items()}, n_missing


def stratified_sample(
    frame: pd.DataFrame,
    max_rows: int,
    stratify: str | None,
    seed: int,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """About ``max_rows`` rows of ``columns`` (rounded per stratum), in proportion to each ``stratify`` value.

    Uniform without a usable ``stratify`` column. Rows are chosen before columns are copied, so a
    million-row window costs only the sampled rows.
    """
    cols = list(columns) if columns is not None else list(frame.columns)
    if len(frame) <= max_rows:
        return frame[cols].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    if stratify and stratify in frame.columns:
        codes, uniques = pd.factorize(frame[stratify], use_na_sentinel=False)
        if len(uniques) <= 1000:
            frac = max_rows / len(frame)
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
            picks = [
                rng.choice(order[lo:hi], int(np.rint((hi - lo) * frac)), replace=False)
                for lo, hi in itertools.pairwise(bounds)
            ]
            positions = np.sort(np.concatenate(picks))
            return frame.iloc[positions][cols].reset_index(drop=True)
    positions = np.sort(rng.choice(len(frame), max_rows, replace=False))
    return frame.iloc[positions][cols].reset_index(drop=True)


def read_frame(path: Path | str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a window from Parquet or CSV; clear errors for missing files and columns."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if path.is_dir() and any(child.name.startswith("date=") for child in path.iterdir()):
        from freshrec.data.eventlog import EventLog

        frame = EventLog(path).read()  # the event log: its reader, not the raw partition folders
    elif suffix in (".parquet", ".pq") or path.is_dir():
        frame = pd.read_parquet(path)
    elif suffix in (".csv", ".tsv"):
        frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    else:
        raise ValueError(f"{path}: unsupported format {suffix!r} (use .parquet or .csv)")
    if columns:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: columns {missing} not found (has {list(frame.columns)})")
    return frame
