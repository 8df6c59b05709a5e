"""Served quality over delayed labels: the served scores joined with the clicks that followed.

Each window's label-joined logloss, AUC and CTR are compared with the served stream's own recent past (the
*baseline*: the previous windows, not a figure from training time, which cold start and seasonality move
away from). A drop pages only when it is both large (``max_logloss_increase``, ``ctr_collapse_ratio``)
and statistically clear (one-sided tests at ``alpha`` with ``min_labels`` on each side), so that a window
of unlucky users does not wake anyone. Two sizes: an increase past ``max_logloss_increase`` is a
*degradation* (a ticket and a retraining reason: later windows of a stream do get harder, cold start,
a moving click rate), one past ``page_logloss_increase`` a *jump* that pages (broken labels, a broken
model or inputs).

* logloss: Welch's t-test on the per-row losses (window vs baseline);
* CTR: a two-proportion z-test;
* AUC below 0.5 (the scores rank clicks *under* non-clicks): Hanley-McNeil's standard error; the
  evidence says so, because it points at the labels (or a join that pairs the wrong rows).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from pydantic import BaseModel

_CLIP = 1e-7


class ServedQuality(BaseModel):
    """One window's label-joined figures against the baseline, with the tests' outcomes."""

    n: int
    logloss: float
    auc: float
    ctr: float
    baseline_n: int
    baseline_logloss: float
    baseline_auc: float
    baseline_ctr: float
    logloss_increase: float
    logloss_p_value: float
    ctr_ratio: float
    ctr_p_value: float
    auc_inverted_p_value: float
    logloss_dropped: bool  # a jump: pages
    logloss_degraded: bool  # significant, smaller: a ticket, and retraining
    ctr_collapsed: bool
    ranking_inverted: bool
    enough_labels: bool


def row_losses(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row logloss of scores against 0/1 labels (the mean is the logloss)."""
    p = np.clip(np.asarray(scores, dtype=np.float64), _CLIP, 1 - _CLIP)
    y = np.asarray(labels, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def _auc_se(auc: float, n_pos: float, n_neg: float) -> float:
    """Hanley & McNeil (1982) standard error of an AUC."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (
        n_pos * n_neg
    )
    return math.sqrt(max(var, 1e-12))


class ServedQualityMonitor:
    """Keeps the baseline windows and tests each new window against them.

    Args:
        baseline_windows: windows in the baseline (the most recent ones that did not drop).
        min_labels: labelled rows needed in the window and in the baseline before anything is concluded.
        max_logloss_increase: a significant increase past this is a degradation (a ticket).
        page_logloss_increase: a significant increase past this is a jump (a page).
        ctr_collapse_ratio: a window CTR below this fraction of the baseline CTR is a collapse.
        alpha: one-sided significance level of every test.
    """

    def __init__(
        self,
        baseline_windows: int = 3,
        min_labels: int = 200,
        max_logloss_increase: float = 0.05,
        page_logloss_increase: float = 0.15,
        ctr_collapse_ratio: float = 0.5,
        alpha: float = 0.001,
    ) -> None:
        self.baseline_windows = baseline_windows
        self.min_labels = min_labels
        self.max_logloss_increase = max_logloss_increase
        self.page_logloss_increase = page_logloss_increase
        self.ctr_collapse_ratio = ctr_collapse_ratio
        self.alpha = alpha
        self._baseline: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=baseline_windows)

    def seed(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Start the baseline from labelled served rows seen before monitoring began (e.g. the reference)."""
        self._baseline.append((np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)))

    def check(self, scores: np.ndarray, labels: np.ndarray) -> ServedQuality | None:
        """Test a window against the baseline, then add it to the baseline unless it dropped.

        Returns ``None`` when the window has no labelled rows.
        """
        from scipy import stats

        from freshrec.monitoring.estimate import realised

        p = np.asarray(scores, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        keep = np.isfinite(p) & np.isfinite(y)
        p, y = p[keep], y[keep]
        if len(y) == 0:
            return None
        bp = np.concatenate([b[0] for b in self._baseline]) if self._baseline else np.zeros(0)
        by = np.concatenate([b[1] for b in self._baseline]) if self._baseline else np.zeros(0)
        loss, auc, ctr = realised(p, y)
        b_loss, b_auc, b_ctr = realised(bp, by) if len(by) else (math.nan, math.nan, math.nan)
        enough = len(y) >= self.min_labels and len(by) >= self.min_labels
        p_loss = p_ctr = p_inv = 1.0
        if enough:
            lw, lb = row_losses(p, y), row_losses(bp, by)
            p_loss = float(stats.ttest_ind(lw, lb, equal_var=False, alternative="greater").pvalue)
            pooled = (y.sum() + by.sum()) / (len(y) + len(by))
            se = math.sqrt(max(pooled * (1 - pooled) * (1 / len(y) + 1 / len(by)), 1e-12))
            p_ctr = float(stats.norm.sf((b_ctr - ctr) / se))
            if math.isfinite(auc):
                p_inv = float(stats.norm.sf((0.5 - auc) / _auc_se(auc, y.sum(), len(y) - y.sum())))
        increase = loss - b_loss
        ratio = ctr / b_ctr if b_ctr and math.isfinite(b_ctr) and b_ctr > 0 else math.nan
        out = ServedQuality(
            n=len(y),
            logloss=loss,
            auc=auc,
            ctr=ctr,
            baseline_n=len(by),
            baseline_logloss=b_loss,
            baseline_auc=b_auc,
            baseline_ctr=b_ctr,
            logloss_increase=increase,
            logloss_p_value=p_loss,
            ctr_ratio=ratio,
            ctr_p_value=p_ctr,
            auc_inverted_p_value=p_inv,
            logloss_dropped=enough and increase > self.page_logloss_increase and p_loss < self.alpha,
            logloss_degraded=enough and increase > self.max_logloss_increase and p_loss < self.alpha,
            ctr_collapsed=enough and ratio < self.ctr_collapse_ratio and p_ctr < self.alpha,
            ranking_inverted=enough and math.isfinite(auc) and auc < 0.5 and p_inv < self.alpha,
            enough_labels=enough,
        )
        if not (out.logloss_dropped or out.ctr_collapsed or out.ranking_inverted):
            self._baseline.append((p, y))  # a broken window must not become the new normal (a slow one may)
        return out
