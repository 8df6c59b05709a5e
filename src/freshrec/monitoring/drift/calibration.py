"""Drift thresholds calibrated from the stream's own window-to-window variation.

A fixed threshold (Wasserstein 0.1, half the features) says nothing about how much a feature moves from
one window to the next when nothing is wrong: on MovieLens every window "drifted". Here the reference
profile is compared with earlier windows of the same size from the history it came from (the *null
windows*: nothing was wrong then, or the model trained on it would not be in production), and each
threshold is set where a window like those would cross it with probability ``false_alarm_rate``:

* per feature, the log drift score of the null windows is fitted by a normal distribution (scores are
  positive and right-skewed), and the threshold is its ``1 - false_alarm_rate`` quantile, never below the
  largest null score;
* for the dataset, each feature's score is standardised by its null fit, and the mean of the largest
  fifth of them (at least two) is the *dataset score* (in null standard deviations). A real shift moves a group of
  features together (new users: their age, occupation and the years of what they rate), which a mean over
  all features would dilute; the mean of the top few stays calm for one noisy feature. Its threshold is
  again the null quantile of the same statistic, so correlation between features is accounted for;
* for the predictions, the null shift of the expected logloss sets how far it may move.

Because the null windows are at lags of 1..N windows from the reference, slow changes that the stream
always has (growth the normalisation does not remove, weekly rhythm) are inside the thresholds, and a
window that moves more than the stream ever did in its history crosses them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from freshrec.config import DriftSettings

if TYPE_CHECKING:
    from freshrec.monitoring.drift.profile import ReferenceProfile

_EPS = 1e-6  # a score of exactly 0 (identical windows) still has a logarithm
_MIN_SIGMA = 0.1  # log-score spread floor: a near-constant null score must not give a hair trigger
_MIN_DATASET_SIGMA = 0.1
_MIN_LOGLOSS_SHIFT = 0.005  # nats


class FeatureNull(BaseModel):
    """The null distribution of one feature's drift score (log-normal fit) and its threshold."""

    mu: float
    sigma: float
    threshold: float
    max_null: float
    windows: int

    def z(self, score: float) -> float:
        """The score in null standard deviations of its logarithm (about 0 for a typical window)."""
        return (math.log(max(score, 0.0) + _EPS) - self.mu) / self.sigma


class DriftCalibration(BaseModel):
    """Thresholds for one reference profile and one window size, at a chosen false-alarm rate."""

    false_alarm_rate: float
    window_rows: int
    windows: int
    features: dict[str, FeatureNull] = Field(default_factory=dict)
    top_k: int = 1  # the dataset score is the mean of the top_k standardised feature scores
    dataset_mean: float = 0.0
    dataset_sigma: float = 1.0
    dataset_threshold: float = 0.0
    dataset_null_scores: list[float] = Field(default_factory=list)
    expected_logloss_threshold: float | None = None
    # (min, max) of each numeric feature over the whole history: the range the model was trained on, which
    # the out-of-range check uses instead of the (shorter) reference window's.
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
    growth_origin: str | None = None
    profile_key: str | None = None

    def dataset_score(self, scores: Mapping[str, float]) -> float:
        """Mean of the ``top_k`` largest standardised log scores of the calibrated features in ``scores``."""
        zs = sorted((self.features[n].z(s) for n, s in scores.items() if n in self.features), reverse=True)
        return float(np.mean(zs[: self.top_k])) if zs else 0.0

    def save(self, path: Path | str) -> Path:
        """Write as JSON (temp file, then rename)."""
        from freshrec.monitoring.drift.result import _write_json

        return _write_json(path, self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: Path | str) -> DriftCalibration:
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path} is not a drift calibration: {exc}") from exc


def _z_quantile(false_alarm_rate: float) -> float:
    from scipy.stats import norm

    if not 0.0 < false_alarm_rate < 0.5:
        raise ValueError(f"false_alarm_rate must be in (0, 0.5), got {false_alarm_rate}")
    return float(norm.ppf(1.0 - false_alarm_rate))


def null_windows(history: pd.DataFrame, window_rows: int, max_windows: int) -> list[pd.DataFrame]:
    """The last ``max_windows`` consecutive windows of ``window_rows`` rows of ``history`` (time order kept)."""
    if window_rows <= 0:
        raise ValueError("window_rows must be positive")
    n = min(len(history) // window_rows, max_windows)
    start = len(history) - n * window_rows
    return [history.iloc[start + i * window_rows : start + (i + 1) * window_rows] for i in range(n)]


def calibrate(
    reference: ReferenceProfile,
    history: pd.DataFrame,
    columns_or_spec: Any,
    settings: DriftSettings | None = None,
    *,
    window_rows: int,
    max_windows: int = 20,
    false_alarm_rate: float = 0.01,
    score_column: str | None = None,
    min_windows: int = 4,
    top_share: float = 0.2,
) -> DriftCalibration:
    """Fit the thresholds on the null windows of ``history`` (rows before the reference, time-ordered).

    Args:
        reference: the profile later checks compare with.
        history: earlier rows of the same stream, with the same columns (and scores, for the expected
            logloss), in time order; usually the part of the training window before the reference.
        columns_or_spec: the checked columns (as for :func:`~.check.check_drift`).
        window_rows: rows per monitored window (the same size the checks will see).
        max_windows: at most this many null windows (the most recent ones).
        false_alarm_rate: the chance that a window like the null ones crosses a threshold.
        min_windows: fewer null windows than this is an error (a quantile of three points is a guess).
        top_share: the share of features whose standardised scores make the dataset score.

    Raises:
        ValueError: the history holds fewer than ``min_windows`` windows.
    """
    from freshrec.monitoring.drift.check import check_drift

    settings = settings or DriftSettings()
    z = _z_quantile(false_alarm_rate)
    windows = null_windows(history, window_rows, max_windows)
    if len(windows) < min_windows:
        raise ValueError(
            f"cannot calibrate drift thresholds: the history has {len(history)} rows, "
            f"{len(windows)} window(s) of {window_rows}; at least {min_windows} needed"
        )
    scores: dict[str, list[float]] = {}
    per_window: list[dict[str, float]] = []
    shifts: list[float] = []
    for window in windows:
        result = check_drift(
            reference,
            window,
            columns_or_spec,
            settings,
            None,
            html=False,
            score_column=score_column,
            target_column="",
            growth_origin=reference.growth_origin,
        )
        per_window.append({name: feat.score for name, feat in result.features.items()})
        for name, feat in result.features.items():
            scores.setdefault(name, []).append(feat.score)
        if result.expected_logloss is not None:
            shifts.append(result.expected_logloss.shift)

    features: dict[str, FeatureNull] = {}
    for name, values in scores.items():
        if len(values) < min_windows:
            continue
        logs = np.log(np.asarray(values) + _EPS)
        mu, sigma = float(logs.mean()), max(float(logs.std(ddof=1)), _MIN_SIGMA)
        threshold = max(math.exp(mu + z * sigma) - _EPS, float(np.max(values)))
        features[name] = FeatureNull(
            mu=mu, sigma=sigma, threshold=threshold, max_null=float(np.max(values)), windows=len(values)
        )
    cal = DriftCalibration(
        false_alarm_rate=false_alarm_rate,
        window_rows=window_rows,
        windows=len(windows),
        features=features,
        top_k=min(len(features), max(2, round(top_share * len(features)))) if features else 1,
        growth_origin=reference.growth_origin,
        profile_key=reference.key,
    )
    from freshrec.monitoring.drift.profile import _sorted_finite, normalise_growth

    normalised = normalise_growth(history, settings.growth_columns, reference.growth_origin)
    for name, values in reference.sorted_values.items():
        if name in normalised.columns and len(values):
            past = _sorted_finite(normalised[name])
            lo = min(float(values[0]), float(past[0])) if len(past) else float(values[0])
            hi = max(float(values[-1]), float(past[-1])) if len(past) else float(values[-1])
            cal.ranges[name] = (lo, hi)
    null_d = [cal.dataset_score(window_scores) for window_scores in per_window]
    cal.dataset_mean = float(np.mean(null_d))
    cal.dataset_sigma = max(float(np.std(null_d, ddof=1)), _MIN_DATASET_SIGMA)
    cal.dataset_threshold = max(cal.dataset_mean + z * cal.dataset_sigma, float(np.max(null_d)))
    cal.dataset_null_scores = [round(d, 4) for d in null_d]
    if len(shifts) >= min_windows:
        arr = np.asarray(shifts)
        z2 = _z_quantile(false_alarm_rate / 2)
        spread = abs(float(arr.mean())) + z2 * max(float(arr.std(ddof=1)), 0.0)
        cal.expected_logloss_threshold = max(spread, float(np.abs(arr).max()), _MIN_LOGLOSS_SHIFT)
    return cal
