"""Drift and data-quality checks: a reference window against a current window.

The verdicts come from statistics computed on the *full* data with numpy, following Evidently's own
definitions (normed Wasserstein, Jensen-Shannon distance, PSI with Evidently's binning), so they are
the verdicts Evidently would give on the same rows. Evidently itself is run on a bounded, stratified
sample of both windows only to render the HTML report (its per-column values are kept in the result as
``report_score`` for cross-checking). This is what makes a check over millions of rows take seconds
instead of minutes (Evidently works in memory on pandas: evidently issues #763, #1526).

Speed comes from three things:

* a :class:`ReferenceProfile` (sorted numeric values, category counts, a report sample) computed once
  per model version and cached on disk (``profile_cache_dir`` + ``cache_key``);
* Wasserstein distance estimated from exact CDFs at a few thousand quantile edges of both windows, with
  a rigorous error bound; only when the bound straddles the threshold is the exact distance computed
  (so the verdict never depends on the approximation);
* only the columns the model uses are read.

Results are read from Evidently snapshots by metric type and column, never by list position.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from freshrec.config import DriftSettings

log = logging.getLogger(__name__)

ColumnKind = Literal["numeric", "categorical"]
Verdict = Literal["ok", "drift", "quality_failure", "not_enough_data"]
# Methods computed here on full data; any other Evidently method name is delegated to Evidently itself.
FAST_METHODS = {"wasserstein", "jensenshannon", "psi"}
_EDGES = 2048  # quantile edges per window for the Wasserstein estimate; bound ~ range / _EDGES


class FeatureDrift(BaseModel):
    """Drift of one column between the windows."""

    name: str
    kind: ColumnKind
    method: str
    threshold: float
    score: float
    drifted: bool
    error_bound: float = 0.0  # |score - exact score| <= error_bound (0 when computed exactly)
    exact: bool = True
    report_score: float | None = None  # Evidently's value on the report sample, for cross-checking
    n_reference: int = 0
    n_current: int = 0


class ColumnQuality(BaseModel):
    """Data-quality figures of one column in the current window."""

    missing_share_reference: float = 0.0
    missing_share: float = 0.0
    out_of_range_share: float | None = None
    unseen_category_share: float | None = None


class QualityFailure(BaseModel):
    check: Literal[
        "row_count", "missing_column", "missing_share", "out_of_range", "unseen_categories", "skew"
    ]
    column: str | None = None
    value: float
    limit: float
    message: str


class TargetDrift(BaseModel):
    """Change of the positive rate (CTR) of the label column."""

    column: str
    reference_rate: float
    current_rate: float
    abs_change: float
    threshold: float
    drifted: bool


class SkewStat(BaseModel):
    """Train/serve skew of one feature: served value vs offline value for the same keys."""

    n_joined: int
    mismatch_share: float
    max_abs_diff: float | None = None


class DriftResult(BaseModel):
    """The outcome of one check; saved as JSON beside the Evidently HTML report."""

    verdict: Verdict
    reason: str
    created_at: datetime
    n_reference: int
    n_current: int
    columns: dict[str, ColumnKind] = Field(default_factory=dict)
    features: dict[str, FeatureDrift] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)
    drift_share: float = 0.0
    drift_share_threshold: float = 0.5
    dataset_drift: bool = False
    quality: dict[str, ColumnQuality] = Field(default_factory=dict)
    quality_failures: list[QualityFailure] = Field(default_factory=list)
    prediction_drift: FeatureDrift | None = None
    target_drift: TargetDrift | None = None
    skew: dict[str, SkewStat] = Field(default_factory=dict)
    report_sample_rows: dict[str, int] = Field(default_factory=dict)
    profile_key: str | None = None
    timings_s: dict[str, float] = Field(default_factory=dict)
    json_path: Path | None = None
    html_path: Path | None = None

    @property
    def drifted_features(self) -> list[str]:
        return sorted(name for name, f in self.features.items() if f.drifted)

    def save(self, path: Path) -> Path:
        """Write the result as JSON atomically (temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(self.model_dump_json(indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> DriftResult:
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise
        except ValueError as exc:
            raise ValueError(f"{path} is not a drift result: {exc}") from exc


# ---------------------------------------------------------------------------------------------------
# Column types
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Reference profile
# ---------------------------------------------------------------------------------------------------


@dataclass
class ReferenceProfile:
    """What a check needs of the reference window, computed once per model version.

    Numeric columns keep their sorted non-missing values (exact CDFs and quantiles for any later window);
    categorical columns keep their category counts; ``sample`` is a bounded stratified sample for the
    Evidently HTML report.
    """

    columns: dict[str, ColumnKind]
    n_rows: int
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
    ) -> ReferenceProfile:
        prof = cls(columns=dict(columns), n_rows=len(frame), key=key)
        for name, kind in columns.items():
            if name not in frame.columns:
                raise ValueError(f"column {name!r} is not in the reference data")
            s = frame[name]
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
        )


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
    digest = hashlib.sha256(json.dumps(sorted(columns.items())).encode()).hexdigest()[:12]
    directory = Path(cache_dir) / f"{_safe(key)}-{digest}"
    if (directory / "profile.json").exists():
        log.info("reference profile %s loaded from cache %s", key, directory)
        return ReferenceProfile.load(directory)
    prof = ReferenceProfile.build(frame, columns, key=key, **build_kwargs)
    prof.save(directory)
    log.info("reference profile %s cached in %s", key, directory)
    return prof


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


# ---------------------------------------------------------------------------------------------------
# Statistics on full data (Evidently's definitions)
# ---------------------------------------------------------------------------------------------------


def wasserstein_norm_bounded(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> tuple[float, float, float]:
    """Normed Wasserstein distance estimate, its error bound, and the norm (std of reference).

    W1 is the integral of |F_r - F_c|. Both CDFs are known exactly at the edges (quantiles of both
    windows); inside [e_i, e_i+1) each CDF can only move by its mass strictly between the two edges, so
    the estimate sum(width * |F_r(e_i) - F_c(e_i)|) is off by at most sum(width * (inside_r + inside_c)).
    On discrete data every value is an edge, nothing lies strictly between, and the estimate is exact.
    """
    norm = max(float(np.std(ref_sorted)), 0.001)
    qr = ref_sorted[np.linspace(0, len(ref_sorted) - 1, min(_EDGES, len(ref_sorted))).astype(np.int64)]
    qc = cur_sorted[np.linspace(0, len(cur_sorted) - 1, min(_EDGES, len(cur_sorted))).astype(np.int64)]
    edges = np.unique(np.concatenate([qr, qc]))
    nr, nc = len(ref_sorted), len(cur_sorted)
    fr = np.searchsorted(ref_sorted, edges, side="right") / nr  # F at each edge (right-continuous)
    fc = np.searchsorted(cur_sorted, edges, side="right") / nc
    # Mass strictly between two edges: the only room F has to move inside [e_i, e_i+1).
    inside_r = np.searchsorted(ref_sorted, edges[1:], side="left") / nr - fr[:-1]
    inside_c = np.searchsorted(cur_sorted, edges[1:], side="left") / nc - fc[:-1]
    w = np.diff(edges)
    estimate = float(np.sum(w * np.abs(fr[:-1] - fc[:-1])))
    bound = float(np.sum(w * (inside_r + inside_c)))
    return estimate / norm, bound / norm, norm


def wasserstein_exact(u: np.ndarray, v: np.ndarray) -> float:
    """Exact first Wasserstein distance of two sorted samples (integral of |Q_u - Q_v| over p)."""
    nu, nv = len(u), len(v)
    p = np.concatenate([np.arange(1, nu + 1) / nu, np.arange(1, nv + 1) / nv])
    p.sort()
    lo = np.concatenate([[0.0], p[:-1]])
    mid = (lo + p) * 0.5
    iu = np.minimum((mid * nu).astype(np.int64), nu - 1)
    iv = np.minimum((mid * nv).astype(np.int64), nv - 1)
    return float(np.dot(np.abs(u[iu] - v[iv]), p - lo))


def _counts_union(ref: Mapping[Any, int], cur: Mapping[Any, int]) -> tuple[np.ndarray, np.ndarray]:
    keys = list(set(ref) | set(cur))
    r = np.array([ref.get(k, 0) for k in keys], dtype=np.float64)
    c = np.array([cur.get(k, 0) for k in keys], dtype=np.float64)
    return r, c


def _sorted_counts(values: np.ndarray) -> dict[float, int]:
    if len(values) == 0:
        return {}
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    counts = np.diff(np.concatenate([starts, [len(values)]]))
    return dict(zip(values[starts].tolist(), counts.tolist(), strict=True))


def _sturges_hist(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Evidently's numeric binning: np.histogram_bin_edges(ref+cur, "sturges"), then counts per window."""
    n = len(ref_sorted) + len(cur_sorted)
    first = min(ref_sorted[0], cur_sorted[0])
    last = max(ref_sorted[-1], cur_sorted[-1])
    if first == last:
        first, last = first - 0.5, last + 0.5
    width = (last - first) / (np.log2(n) + 1.0)
    bins = int(np.ceil((last - first) / width)) if width else 1
    edges = np.linspace(first, last, bins + 1, endpoint=True)

    def counts(sorted_values: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(sorted_values, edges, side="left")
        idx[-1] = len(sorted_values)  # numpy's last bin is closed on the right
        return np.diff(idx).astype(np.float64)

    return counts(ref_sorted), counts(cur_sorted)


def _binned_distance(method: str, ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    rp = ref_counts / ref_counts.sum()
    cp = cur_counts / cur_counts.sum()
    if method == "jensenshannon":
        from scipy.spatial import distance

        return float(distance.jensenshannon(rp, cp))
    if method == "psi":
        rp, cp = _fill_zeroes(rp), _fill_zeroes(cp)
        return float(np.sum((rp - cp) * np.log(rp / cp)))
    raise ValueError(f"no binned implementation of {method!r}")


def _fill_zeroes(p: np.ndarray) -> np.ndarray:
    # Evidently's get_binned_data(feel_zeroes=True): empty bins get a tiny share so logs stay finite.
    p = p.copy()
    nonzero = p[p != 0]
    if len(nonzero) and (p == 0).any():
        smallest = nonzero.min()
        p[p == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return p


def numeric_drift(
    ref_sorted: np.ndarray, cur_sorted: np.ndarray, method: str, threshold: float
) -> tuple[float, bool, float, bool]:
    """(score, drifted, error_bound, exact) for a numeric column with a fast method."""
    if method == "wasserstein":
        score, bound, norm = wasserstein_norm_bounded(ref_sorted, cur_sorted)
        if score - bound >= threshold or score + bound < threshold:
            return score, score >= threshold, bound, bound == 0.0
        # The bound straddles the threshold: settle it exactly (rare, costs one more pass).
        exact = wasserstein_exact(ref_sorted, cur_sorted) / norm
        return exact, exact >= threshold, 0.0, True
    if _n_unique(ref_sorted) > 20:
        r, c = _sturges_hist(ref_sorted, cur_sorted)
    else:
        r, c = _counts_union(_sorted_counts(ref_sorted), _sorted_counts(cur_sorted))
    score = _binned_distance(method, r, c)
    return score, score >= threshold, 0.0, True


def _n_unique_union(ref_sorted: np.ndarray, cur_sorted: np.ndarray, limit: int) -> int:
    """Distinct values of both windows together (as Evidently counts them), exactly up to ``limit``."""
    n_ref = _n_unique(ref_sorted)
    if n_ref > limit:
        return n_ref  # the union is larger still: only whether it exceeds the limit matters
    return len(set(_sorted_counts(ref_sorted)) | set(_sorted_counts(cur_sorted)))


def _n_unique(sorted_values: np.ndarray) -> int:
    if len(sorted_values) == 0:
        return 0
    return int(np.count_nonzero(sorted_values[1:] != sorted_values[:-1]) + 1)


def categorical_drift(ref_counts: Mapping[str, int], cur_counts: Mapping[str, int], method: str) -> float:
    """Jensen-Shannon distance or PSI between two category-count tables (exact, on full data)."""
    if method not in ("jensenshannon", "psi"):
        raise ValueError(f"method {method!r} has no fast categorical implementation")
    r, c = _counts_union(ref_counts, cur_counts)
    return _binned_distance(method, r, c)


# ---------------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------------


def _method_for(name: str, kind: ColumnKind, n_unique: int, settings: DriftSettings) -> tuple[str, float]:
    method = settings.column_methods.get(name)
    if method is None:
        if kind == "numeric" and n_unique <= settings.numeric_as_categorical_max_unique:
            method = settings.categorical_method  # as Evidently's default: a few values compare as categories
        else:
            method = settings.numeric_method if kind == "numeric" else settings.categorical_method
    if name in settings.column_thresholds:
        return method, settings.column_thresholds[name]
    is_cat_method = kind == "categorical" or method == settings.categorical_method
    return method, settings.categorical_threshold if is_cat_method else settings.numeric_threshold


def check_drift(
    reference: pd.DataFrame | ReferenceProfile | Path | str,
    current: pd.DataFrame | Path | str,
    columns_or_spec: Any = None,
    drift_settings: DriftSettings | None = None,
    out_dir: Path | str | None = None,
    *,
    score_column: str | None = None,
    target_column: str | None = None,
    served: pd.DataFrame | None = None,
    offline: pd.DataFrame | None = None,
    skew_keys: Sequence[str] = ("user_id", "item_id"),
    profile_cache_dir: Path | None = None,
    cache_key: str | None = None,
    html: bool = True,
    stem: str | None = None,
    now: datetime | None = None,
) -> DriftResult:
    """Compare a current window with a reference window; save JSON (+ Evidently HTML) in ``out_dir``.

    Args:
        reference: the reference window (the production model's training data), a file, or a cached
            :class:`ReferenceProfile`.
        current: the recent window (events and the features served for them), or a file.
        columns_or_spec: see :func:`resolve_columns`; ``None`` means the reference's columns.
        drift_settings: methods, thresholds and quality limits (defaults when ``None``).
        out_dir: where ``<stem>.json`` and ``<stem>.html`` go; nothing is written when ``None``.
        score_column: model score column, checked for prediction drift (defaults to settings).
        target_column: label column, checked for target (CTR) drift (defaults to settings).
        served, offline: the same keys' features as served online and as computed offline (skew check).
        profile_cache_dir, cache_key: cache the reference profile per model version.
        html: render the Evidently HTML report on a bounded sample.
    """
    settings = drift_settings or DriftSettings()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    score_column = score_column if score_column is not None else settings.score_column
    target_column = target_column if target_column is not None else settings.target_column
    cur = current if isinstance(current, pd.DataFrame) else read_frame(current)
    extras = [c for c in (score_column, target_column) if c]
    # With no columns named, identifiers and the score/label columns are not features.
    exclude = [*extras, *settings.ignore_columns]

    if isinstance(reference, ReferenceProfile):
        prof = reference
    else:
        ref_frame = reference if isinstance(reference, pd.DataFrame) else read_frame(reference)
        if profile_cache_dir is not None and cache_key:
            prof = cached_profile(
                ref_frame,
                columns_or_spec,
                profile_cache_dir,
                cache_key,
                extra_columns=extras,
                exclude=exclude,
                sample_rows=settings.max_sample_rows,
                stratify=target_column,
                seed=settings.seed,
            )
        else:
            prof = ReferenceProfile.build(
                ref_frame,
                resolve_columns(columns_or_spec, ref_frame, exclude=exclude),
                extra_columns=extras,
                sample_rows=settings.max_sample_rows,
                stratify=target_column,
                seed=settings.seed,
            )
    timings["reference_profile"] = time.perf_counter() - t0
    columns = prof.columns
    result = DriftResult(
        verdict="ok",
        reason="",
        created_at=now or datetime.now(UTC),
        n_reference=prof.n_rows,
        n_current=len(cur),
        columns=columns,
        drift_share_threshold=settings.drift_share_threshold,
        profile_key=prof.key,
    )

    if prof.n_rows < settings.min_rows or len(cur) < settings.min_rows:
        result.verdict = "not_enough_data"
        result.reason = (
            f"not enough data: reference has {prof.n_rows} rows, current has {len(cur)} rows; "
            f"at least {settings.min_rows} needed in each"
        )
        result.quality_failures.append(
            QualityFailure(
                check="row_count",
                value=float(min(prof.n_rows, len(cur))),
                limit=float(settings.min_rows),
                message=result.reason,
            )
        )
        return _finish(result, out_dir, stem, timings, t0)

    t1 = time.perf_counter()
    cur_sorted: dict[str, np.ndarray] = {}
    cur_counts: dict[str, dict[str, int]] = {}
    cur_missing: dict[str, int] = {}
    for name, kind in columns.items():
        if name not in cur.columns:
            result.quality_failures.append(
                QualityFailure(
                    check="missing_column",
                    column=name,
                    value=1.0,
                    limit=0.0,
                    message=f"column {name!r} is missing from the current window",
                )
            )
            continue
        if kind == "numeric":
            cur_sorted[name] = _sorted_finite(cur[name])
            cur_missing[name] = len(cur) - len(cur_sorted[name])
        else:
            cur_counts[name], cur_missing[name] = _category_counts(cur[name])
        _quality(result, name, kind, prof, len(cur), cur_missing[name], cur_sorted, cur_counts, settings)
    timings["quality"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    evidently_only: dict[str, tuple[str, float]] = {}
    for name, kind in columns.items():
        if name not in cur.columns:
            continue
        if kind == "numeric":
            ref_v, cur_v = prof.sorted_values[name], cur_sorted[name]
            n_ref, n_cur = len(ref_v), len(cur_v)
            n_unique = _n_unique_union(ref_v, cur_v, settings.numeric_as_categorical_max_unique)
        else:
            n_ref, n_cur = sum(prof.category_counts[name].values()), sum(cur_counts[name].values())
            n_unique = len(prof.category_counts[name])
        if n_ref < settings.min_rows or n_cur < settings.min_rows:
            result.skipped[name] = f"too few non-missing values (reference {n_ref}, current {n_cur})"
            continue
        method, threshold = _method_for(name, kind, n_unique, settings)
        if method not in FAST_METHODS:
            evidently_only[name] = (method, threshold)
            continue
        if kind == "numeric":
            score, drifted, bound, exact = numeric_drift(ref_v, cur_v, method, threshold)
        else:
            score = categorical_drift(prof.category_counts[name], cur_counts[name], method)
            drifted, bound, exact = score >= threshold, 0.0, True
        result.features[name] = FeatureDrift(
            name=name,
            kind=kind,
            method=method,
            threshold=threshold,
            score=score,
            drifted=bool(drifted),
            error_bound=bound,
            exact=exact,
            n_reference=n_ref,
            n_current=n_cur,
        )

    if score_column and score_column in prof.extra and score_column in cur.columns:
        ref_v, cur_v = prof.extra[score_column], _sorted_finite(cur[score_column])
        if len(ref_v) >= settings.min_rows and len(cur_v) >= settings.min_rows:
            method, threshold = settings.prediction_method, settings.prediction_threshold
            score, drifted, bound, exact = numeric_drift(ref_v, cur_v, method, threshold)
            result.prediction_drift = FeatureDrift(
                name=score_column,
                kind="numeric",
                method=method,
                threshold=threshold,
                score=score,
                drifted=bool(drifted),
                error_bound=bound,
                exact=exact,
                n_reference=len(ref_v),
                n_current=len(cur_v),
            )
    if target_column and target_column in prof.extra and target_column in cur.columns:
        ref_v, cur_v = prof.extra[target_column], _sorted_finite(cur[target_column])
        if len(ref_v) and len(cur_v):
            rr, cr = float(ref_v.mean()), float(cur_v.mean())
            result.target_drift = TargetDrift(
                column=target_column,
                reference_rate=rr,
                current_rate=cr,
                abs_change=abs(cr - rr),
                threshold=settings.target_rate_threshold,
                drifted=abs(cr - rr) >= settings.target_rate_threshold,
            )
    timings["drift_statistics"] = time.perf_counter() - t2

    if served is not None and offline is not None:
        _skew(result, served, offline, list(skew_keys), columns, settings)

    if (html and out_dir is not None) or evidently_only:
        t3 = time.perf_counter()
        _evidently_report(result, prof, cur, columns, evidently_only, settings, out_dir, stem, html)
        timings["evidently_report"] = time.perf_counter() - t3

    scored = list(result.features.values())
    result.drift_share = sum(f.drifted for f in scored) / len(scored) if scored else 0.0
    result.dataset_drift = bool(scored) and result.drift_share >= settings.drift_share_threshold
    _verdict(result)
    return _finish(result, out_dir, stem, timings, t0)


def _quality(
    result: DriftResult,
    name: str,
    kind: ColumnKind,
    prof: ReferenceProfile,
    n: int,
    n_missing: int,
    cur_sorted: Mapping[str, np.ndarray],
    cur_counts: Mapping[str, Mapping[str, int]],
    settings: DriftSettings,
) -> None:
    q = ColumnQuality(
        missing_share_reference=prof.missing.get(name, 0) / max(prof.n_rows, 1),
        missing_share=n_missing / n,
    )
    limit = settings.max_missing_share + q.missing_share_reference
    if q.missing_share > limit:
        result.quality_failures.append(
            QualityFailure(
                check="missing_share",
                column=name,
                value=q.missing_share,
                limit=limit,
                message=f"{name}: {q.missing_share:.1%} missing (reference {q.missing_share_reference:.1%})",
            )
        )
    if kind == "numeric":
        ref_v, cur_v = prof.sorted_values[name], cur_sorted[name]
        if len(ref_v) and len(cur_v):
            span = ref_v[-1] - ref_v[0]
            lo = ref_v[0] - settings.out_of_range_margin * span
            hi = ref_v[-1] + settings.out_of_range_margin * span
            outside = (
                np.searchsorted(cur_v, lo, side="left") + len(cur_v) - np.searchsorted(cur_v, hi, "right")
            )
            q.out_of_range_share = float(outside) / len(cur_v)
            exempt = any(fnmatch.fnmatch(name, pat) for pat in settings.out_of_range_exempt)
            if not exempt and q.out_of_range_share > settings.max_out_of_range_share:
                result.quality_failures.append(
                    QualityFailure(
                        check="out_of_range",
                        column=name,
                        value=q.out_of_range_share,
                        limit=settings.max_out_of_range_share,
                        message=f"{name}: {q.out_of_range_share:.1%} of values outside "
                        f"[{lo:.4g}, {hi:.4g}] (reference range with {settings.out_of_range_margin:.0%} margin)",
                    )
                )
    else:
        ref_c, cur_c = prof.category_counts[name], cur_counts[name]
        total = sum(cur_c.values())
        if total:
            unseen = sum(v for k, v in cur_c.items() if k not in ref_c)
            q.unseen_category_share = unseen / total
            exempt = any(fnmatch.fnmatch(name, pat) for pat in settings.unseen_category_exempt)
            if not exempt and q.unseen_category_share > settings.max_unseen_category_share:
                result.quality_failures.append(
                    QualityFailure(
                        check="unseen_categories",
                        column=name,
                        value=q.unseen_category_share,
                        limit=settings.max_unseen_category_share,
                        message=f"{name}: {q.unseen_category_share:.1%} of values are categories "
                        "never seen in the reference",
                    )
                )
    result.quality[name] = q


def _skew(
    result: DriftResult,
    served: pd.DataFrame,
    offline: pd.DataFrame,
    keys: list[str],
    columns: Mapping[str, ColumnKind],
    settings: DriftSettings,
) -> None:
    for frame, what in ((served, "served"), (offline, "offline")):
        missing = [k for k in keys if k not in frame.columns]
        if missing:
            raise ValueError(f"skew check: key columns {missing} missing from the {what} features")
    shared = [c for c in columns if c in served.columns and c in offline.columns and c not in keys]
    joined = served[keys + shared].merge(
        offline[keys + shared].drop_duplicates(keys), on=keys, how="inner", suffixes=("_served", "_offline")
    )
    if joined.empty:
        return
    for name in shared:
        a, b = joined[f"{name}_served"], joined[f"{name}_offline"]
        both_missing = a.isna() & b.isna()
        if columns[name] == "numeric":
            av, bv = (
                a.to_numpy(dtype=np.float64, na_value=np.nan),
                b.to_numpy(dtype=np.float64, na_value=np.nan),
            )
            diff = np.abs(av - bv)
            ok = (diff <= settings.skew_atol + settings.skew_rtol * np.abs(bv)) | both_missing.to_numpy()
            finite = diff[np.isfinite(diff)]
            max_diff = float(finite.max()) if len(finite) else None
        else:
            ok = ((a.astype(str) == b.astype(str)) | both_missing).to_numpy()
            max_diff = None
        stat = SkewStat(n_joined=len(joined), mismatch_share=float(1.0 - ok.mean()), max_abs_diff=max_diff)
        result.skew[name] = stat
        if stat.mismatch_share > settings.max_skew_share:
            result.quality_failures.append(
                QualityFailure(
                    check="skew",
                    column=name,
                    value=stat.mismatch_share,
                    limit=settings.max_skew_share,
                    message=f"{name}: {stat.mismatch_share:.1%} of {len(joined)} served values differ "
                    "from the offline features for the same keys",
                )
            )


def _evidently_report(
    result: DriftResult,
    prof: ReferenceProfile,
    cur: pd.DataFrame,
    columns: Mapping[str, ColumnKind],
    evidently_only: Mapping[str, tuple[str, float]],
    settings: DriftSettings,
    out_dir: Path | str | None,
    stem: str | None,
    html: bool,
) -> None:
    """Run Evidently on bounded samples (or on full columns for methods only Evidently has)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import (
        MissingValueCount,
        OutRangeValueCount,
        RowCount,
        ValueDrift,
    )

    present = [c for c in columns if c in cur.columns]
    extras = [
        c
        for c in (settings.score_column, settings.target_column)
        if c and c in cur.columns and c not in columns
    ]
    ref_sample = prof.sample if prof.sample is not None else pd.DataFrame(columns=present)
    ref_sample = ref_sample[[c for c in present + extras if c in ref_sample.columns]]
    cur_sample = stratified_sample(cur, settings.max_sample_rows, settings.target_column, 0, present + extras)
    if evidently_only:
        # Methods without a fast path are computed by Evidently on the full current window; the reference
        # profile holds only a sample, so these columns are as exact as the sample allows.
        cur_sample = cur[present + extras]
    result.report_sample_rows = {"reference": len(ref_sample), "current": len(cur_sample)}

    numeric = [c for c in present if columns[c] == "numeric"] + [
        c for c in extras if c == settings.score_column
    ]
    categorical = [c for c in present if columns[c] == "categorical"]
    categorical += [c for c in extras if c == settings.target_column]
    ref_sample, cur_sample = ref_sample.copy(), cur_sample.copy()
    for c in categorical:
        ref_sample[c] = ref_sample[c].astype(str).where(ref_sample[c].notna())
        cur_sample[c] = cur_sample[c].astype(str).where(cur_sample[c].notna())
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)

    methods: dict[str, tuple[str, float]] = {n: (f.method, f.threshold) for n, f in result.features.items()}
    methods.update(evidently_only)
    metrics: list[Any] = [RowCount()]
    # No DriftedColumnsCount: it recomputes every column's drift (about half the report's cost) and, on a
    # sample, could show a count that contradicts the full-data verdict in the JSON.
    for name, (method, threshold) in methods.items():
        metrics.append(ValueDrift(column=name, method=method, threshold=threshold))
    if result.prediction_drift is not None:
        pd_ = result.prediction_drift
        metrics.append(ValueDrift(column=pd_.name, method=pd_.method, threshold=pd_.threshold))
    for name in present:
        metrics.append(MissingValueCount(column=name))
        if columns[name] == "numeric" and len(prof.sorted_values.get(name, ())):
            v = prof.sorted_values[name]
            span = v[-1] - v[0]
            lo = float(v[0] - settings.out_of_range_margin * span)
            hi = float(v[-1] + settings.out_of_range_margin * span)
            metrics.append(OutRangeValueCount(column=name, left=lo, right=hi))

    snapshot = Report(metrics).run(
        Dataset.from_pandas(cur_sample, data_definition=definition),
        Dataset.from_pandas(ref_sample, data_definition=definition),
    )
    values = _value_drift_by_column(snapshot.dict())
    for name, feat in result.features.items():
        feat.report_score = values.get(name)
    if result.prediction_drift is not None:
        result.prediction_drift.report_score = values.get(result.prediction_drift.name)
    for name, (method, threshold) in evidently_only.items():
        score = values.get(name)
        if score is None:
            result.skipped[name] = f"Evidently returned no value for method {method!r}"
            continue
        drifted = score < threshold if _is_p_value(method) else score >= threshold
        result.features[name] = FeatureDrift(
            name=name,
            kind=columns[name],
            method=method,
            threshold=threshold,
            score=score,
            drifted=drifted,
            exact=len(ref_sample) == prof.n_rows,
            report_score=score,
            n_reference=len(ref_sample),
            n_current=len(cur_sample),
        )
    if html and out_dir is not None:
        path = Path(out_dir) / f"{stem or _stem(result)}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.html")
        snapshot.save_html(str(tmp))
        os.replace(tmp, path)
        result.html_path = path


def _is_p_value(method: str) -> bool:
    # Evidently's statistical tests return p-values (drift when below the threshold); distances do not.
    return "p_value" in method.lower() or method in {
        "ks",
        "chisquare",
        "z",
        "t_test",
        "mannw",
        "anderson",
        "cramer_von_mises",
        "fisher_exact",
        "g_test",
        "es",
    }


def _value_drift_by_column(snapshot: dict[str, Any]) -> dict[str, float]:
    """ValueDrift values keyed by column, found by metric type in the snapshot (never by position)."""
    out: dict[str, float] = {}
    for metric in snapshot.get("metrics", []):
        config = metric.get("config", {})
        if str(config.get("type", "")).endswith(":ValueDrift") and isinstance(
            metric.get("value"), int | float
        ):
            out[str(config["column"])] = float(metric["value"])
    return out


def _verdict(result: DriftResult) -> None:
    drift_reasons = []
    if result.dataset_drift:
        drift_reasons.append(
            f"{len(result.drifted_features)}/{len(result.features)} features drifted "
            f"(share {result.drift_share:.2f} >= {result.drift_share_threshold:.2f}): "
            + ", ".join(result.drifted_features)
        )
    if result.prediction_drift is not None and result.prediction_drift.drifted:
        p = result.prediction_drift
        drift_reasons.append(f"prediction drift on {p.name} ({p.method} {p.score:.3g} >= {p.threshold:.3g})")
    if result.target_drift is not None and result.target_drift.drifted:
        t = result.target_drift
        drift_reasons.append(f"target rate {t.reference_rate:.3f} -> {t.current_rate:.3f}")
    if result.quality_failures:
        result.verdict = "quality_failure"
        result.reason = "; ".join(f.message for f in result.quality_failures)
        if drift_reasons:
            result.reason += "; also " + "; ".join(drift_reasons)
    elif drift_reasons:
        result.verdict = "drift"
        result.reason = "; ".join(drift_reasons)
    else:
        result.verdict = "ok"
        drifted = result.drifted_features
        result.reason = f"{len(drifted)}/{len(result.features)} features drifted" + (
            f" ({', '.join(drifted)}), below the dataset threshold" if drifted else ""
        )


def _stem(result: DriftResult) -> str:
    return "drift-" + result.created_at.strftime("%Y%m%dT%H%M%S%fZ")


def _finish(
    result: DriftResult, out_dir: Path | str | None, stem: str | None, timings: dict[str, float], t0: float
) -> DriftResult:
    timings["total"] = time.perf_counter() - t0
    result.timings_s = {k: round(v, 4) for k, v in timings.items()}
    if out_dir is not None:
        result.json_path = Path(out_dir) / f"{stem or _stem(result)}.json"
        result.save(result.json_path)
    log.info("drift check: %s — %s", result.verdict, result.reason)
    return result


def write_pipeline_outputs(
    result: DriftResult, report_path: str, summary_path: str, title: str
) -> dict[str, float]:
    """Write a check's KFP artifacts and return the metrics to log (shared by the pipeline components).

    ``report_path`` gets the Evidently HTML report (or a page saying why there is none), ``summary_path`` a
    Markdown page: the verdict, its reason, the quality failures and a row per feature. The returned metrics
    are the drift share, the number of quality failures and each feature's drift score (``drift_<name>``).
    """
    if result.html_path:
        Path(report_path).write_bytes(Path(result.html_path).read_bytes())
    else:
        Path(report_path).write_text(f"<html><body><p>No report: {result.reason}</p></body></html>")
    metrics = {
        "drift_share": float(result.drift_share),
        "quality_failures": float(len(result.quality_failures)),
    }
    rows = ["| feature | method | score | threshold | drifted |", "|---|---|---|---|---|"]
    for name, feature in sorted(result.features.items()):
        metrics[f"drift_{name}"] = float(feature.score)
        rows.append(
            f"| {name} | {feature.method} | {feature.score:.4f} | {feature.threshold} | {feature.drifted} |"
        )
    failures = [f"- {failure.message}" for failure in result.quality_failures] or ["- none"]
    lines = [f"# {title}: {result.verdict}", "", result.reason, "", "Quality failures:", *failures, "", *rows]
    Path(summary_path).write_text("\n".join(lines) + "\n")
    return metrics
