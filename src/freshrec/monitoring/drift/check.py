"""The check: a reference window against a current window, on full data.

The verdicts come from :mod:`freshrec.monitoring.drift.statistics` (Evidently's definitions, computed
with numpy on every row). Evidently itself is run on a bounded, stratified sample of both windows only
to render the HTML report (:mod:`freshrec.monitoring.drift.report`); its per-column values are kept in
the result as ``report_score`` for cross-checking. This is what makes a check over millions of rows take
seconds instead of minutes (Evidently works in memory on pandas: evidently issues #763, #1526). Only the
columns the model uses are read.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from freshrec.config import DriftSettings
from freshrec.monitoring.drift.profile import (
    ReferenceProfile,
    _category_counts,
    _sorted_finite,
    cached_profile,
    normalise_growth,
    read_frame,
    resolve_columns,
    type_family,
)
from freshrec.monitoring.drift.report import _evidently_report
from freshrec.monitoring.drift.result import (
    Calibration,
    ColumnKind,
    ColumnQuality,
    DriftResult,
    ExpectedLogloss,
    FeatureDrift,
    QualityFailure,
    SkewStat,
    TargetDrift,
    _stem,
)
from freshrec.monitoring.drift.statistics import (
    FAST_METHODS,
    _n_unique_union,
    categorical_drift,
    numeric_drift,
)

if TYPE_CHECKING:
    from freshrec.monitoring.drift.calibration import DriftCalibration

log = logging.getLogger(__name__)


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


def build_reference_profile(
    reference: pd.DataFrame | Path | str,
    columns_or_spec: Any,
    settings: DriftSettings | None = None,
    *,
    growth_origin: pd.Timestamp | str | None = None,
    score_column: str | None = None,
    target_column: str | None = None,
    profile_cache_dir: Path | None = None,
    cache_key: str | None = None,
) -> ReferenceProfile:
    """The profile :func:`check_drift` builds from a reference window (cached when a key is given).

    Build it once and pass it to every later check of the same reference (the monitor does).
    """
    settings = settings or DriftSettings()
    score_column = score_column if score_column is not None else settings.score_column
    target_column = target_column if target_column is not None else settings.target_column
    origin = None if growth_origin is None else pd.to_datetime(growth_origin, utc=True).isoformat()
    extras = [c for c in (score_column, target_column) if c]
    # With no columns named, identifiers and the score/label columns are not features.
    exclude = [*extras, *settings.ignore_columns]
    frame = reference if isinstance(reference, pd.DataFrame) else read_frame(reference)
    frame = normalise_growth(frame, settings.growth_columns, origin)
    common: dict[str, Any] = dict(
        extra_columns=extras,
        sample_rows=settings.max_sample_rows,
        stratify=target_column,
        seed=settings.seed,
        growth_origin=origin,
    )
    if profile_cache_dir is not None and cache_key:
        return cached_profile(frame, columns_or_spec, profile_cache_dir, cache_key, exclude=exclude, **common)
    return ReferenceProfile.build(frame, resolve_columns(columns_or_spec, frame, exclude=exclude), **common)


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
    calibration: DriftCalibration | None = None,
    growth_origin: pd.Timestamp | str | None = None,
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
        calibration: thresholds fitted on the stream's own null windows (:func:`~.calibration.calibrate`);
            they replace the fixed per-feature thresholds and the drift share, and set how far the expected
            logloss may move.
        growth_origin: the stream's first event: columns matching ``settings.growth_columns`` are
            compared per hour of history (:func:`~.profile.normalise_growth`); a given profile must have
            been built with the same origin.
    """
    settings = drift_settings or DriftSettings()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    score_column = score_column if score_column is not None else settings.score_column
    target_column = target_column if target_column is not None else settings.target_column
    cur = current if isinstance(current, pd.DataFrame) else read_frame(current)
    origin = None if growth_origin is None else pd.to_datetime(growth_origin, utc=True).isoformat()
    cur = normalise_growth(cur, settings.growth_columns, origin)
    if isinstance(reference, ReferenceProfile):
        prof = reference
        if (prof.growth_origin or None) != origin:
            raise ValueError(
                f"the reference profile was built with growth origin {prof.growth_origin}, "
                f"the check was given {origin}: both windows must be normalised from the same time"
            )
    else:
        prof = build_reference_profile(
            reference,
            columns_or_spec,
            settings,
            growth_origin=origin,
            score_column=score_column,
            target_column=target_column,
            profile_cache_dir=profile_cache_dir,
            cache_key=cache_key,
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
        _schema(result, name, prof, cur[name])
        _quality(
            result,
            name,
            kind,
            prof,
            len(cur),
            cur_missing[name],
            cur_sorted,
            cur_counts,
            settings,
            calibration,
        )
    _entity_joins(result, cur, settings)
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
            ref_h, cur_h = expected_logloss(ref_v), expected_logloss(cur_v)
            limit = settings.prediction_logloss_threshold
            if calibration is not None and calibration.expected_logloss_threshold is not None:
                limit = calibration.expected_logloss_threshold
            result.expected_logloss = ExpectedLogloss(
                reference=ref_h,
                current=cur_h,
                shift=cur_h - ref_h,
                threshold=limit,
                drifted=abs(cur_h - ref_h) >= limit,
                calibrated=calibration is not None and calibration.expected_logloss_threshold is not None,
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

    if calibration is not None:
        _apply_calibration(result, calibration)
    scored = list(result.features.values())
    result.drift_share = sum(f.drifted for f in scored) / len(scored) if scored else 0.0
    if result.calibration is not None:
        result.dataset_drift = result.calibration.dataset_score >= result.calibration.dataset_threshold
    else:
        result.dataset_drift = bool(scored) and result.drift_share >= settings.drift_share_threshold
    _verdict(result)
    return _finish(result, out_dir, stem, timings, t0)


def expected_logloss(scores: np.ndarray) -> float:
    """Mean binary entropy of the scores: the logloss they expect if they are calibrated (nats)."""
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log1p(-p)))) if len(p) else float("nan")


def _apply_calibration(result: DriftResult, calibration: DriftCalibration) -> None:
    for name, feat in result.features.items():
        null = calibration.features.get(name)
        if null is not None:
            feat.threshold = null.threshold
            feat.drifted = feat.score >= null.threshold
            feat.calibrated = True
    result.calibration = Calibration(
        false_alarm_rate=calibration.false_alarm_rate,
        windows=calibration.windows,
        dataset_score=calibration.dataset_score({n: f.score for n, f in result.features.items()}),
        dataset_threshold=calibration.dataset_threshold,
    )


def _schema(result: DriftResult, name: str, prof: ReferenceProfile, series: pd.Series) -> None:
    """A column whose stored type changed (numbers now strings, ...) is a broken producer, not drift."""
    before = prof.types.get(name)
    now = type_family(series)
    if before is None or before == now or series.isna().all():
        return  # an old profile without types, or an all-null column (the missing-share check's case)
    example = series.dropna().iloc[0] if series.notna().any() else None
    result.quality_failures.append(
        QualityFailure(
            check="type_change",
            column=name,
            value=1.0,
            limit=0.0,
            message=f"{name}: type changed from {before} to {now} (e.g. {example!r}, dtype {series.dtype})",
        )
    )


def _entity_joins(result: DriftResult, cur: pd.DataFrame, settings: DriftSettings) -> None:
    """Several features of one entity missing on the same rows: its lookup or join stopped matching."""
    for entity, prefix in settings.entity_prefixes.items():
        failing = sorted(
            {
                f.column
                for f in result.quality_failures
                if f.check == "missing_share" and f.column and f.column.startswith(prefix)
            }
        )
        if len(failing) < 2:
            continue
        share = float(cur[failing].isna().all(axis=1).mean())
        if share > settings.max_missing_share:
            result.quality_failures.append(
                QualityFailure(
                    check="entity_join",
                    column=entity,
                    value=share,
                    limit=settings.max_missing_share,
                    message=f"{entity} join: {share:.1%} of rows have none of {', '.join(failing)} "
                    f"(the {entity} lookup or profile join stopped matching)",
                )
            )


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
    calibration: DriftCalibration | None = None,
) -> None:
    q = ColumnQuality(
        missing_share_reference=prof.missing.get(name, 0) / max(prof.n_rows, 1),
        missing_share=n_missing / n,
    )
    n_values = len(cur_sorted[name]) if kind == "numeric" else sum(cur_counts[name].values())
    distinct = (
        int(np.count_nonzero(np.diff(cur_sorted[name])) + 1) if kind == "numeric" else len(cur_counts[name])
    )
    exempt_constant = any(fnmatch.fnmatch(name, pat) for pat in settings.constant_exempt)
    if not exempt_constant and n_values >= settings.min_rows and distinct == 1 and prof.n_unique(name) > 1:
        value = cur_sorted[name][0] if kind == "numeric" else next(iter(cur_counts[name]))
        result.quality_failures.append(
            QualityFailure(
                check="constant",
                column=name,
                value=1.0,
                limit=float(prof.n_unique(name)),
                message=f"{name}: constant ({value!r} on all {n_values} rows; "
                f"{prof.n_unique(name)} distinct values in the reference)",
            )
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
            # The range the model was trained on (whole history) when calibrated, else the reference's.
            first, last = (
                calibration.ranges[name]
                if calibration is not None and name in calibration.ranges
                else (ref_v[0], ref_v[-1])
            )
            span = last - first
            lo = first - settings.out_of_range_margin * span
            hi = last + settings.out_of_range_margin * span
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
                        f"[{lo:.4g}, {hi:.4g}] ({'training' if calibration is not None and name in calibration.ranges else 'reference'} "
                        f"range with {settings.out_of_range_margin:.0%} margin)",
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


def _verdict(result: DriftResult) -> None:
    drift_reasons = []
    cal = result.calibration
    if result.dataset_drift and cal is not None:
        drift_reasons.append(
            f"dataset drift score {cal.dataset_score:.2f} >= {cal.dataset_threshold:.2f} (calibrated on "
            f"{cal.windows} earlier windows, false-alarm rate {cal.false_alarm_rate:g}); "
            f"{len(result.drifted_features)}/{len(result.features)} features past their thresholds: "
            + ", ".join(result.drifted_features)
        )
    elif result.dataset_drift:
        drift_reasons.append(
            f"{len(result.drifted_features)}/{len(result.features)} features drifted "
            f"(share {result.drift_share:.2f} >= {result.drift_share_threshold:.2f}): "
            + ", ".join(result.drifted_features)
        )
    e = result.expected_logloss
    if e is not None and e.drifted:
        drift_reasons.append(
            f"prediction drift moves the expected logloss {e.reference:.4f} -> {e.current:.4f} "
            f"({e.shift:+.4f} nats, limit {e.threshold:.4f})"
        )
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
