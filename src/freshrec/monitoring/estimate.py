"""Performance without labels: confidence-based performance estimation (CBPE) for a CTR model.

Labels (clicks) arrive late; until they do, the only evidence of how the model does is its own scores.
CBPE (as NannyML implements it for binary classifiers) uses them: once the scores are calibrated, a score
``q`` *is* the probability of a click, so the expected value of any metric on a window follows from the
scores alone. Here:

* calibration: a map from the served score to the observed click rate, fitted on the latest labelled
  rows (every window once its labels are in): Platt scaling (a logistic fit on the score's logit, two
  parameters: stable on a few thousand rows) by default, or isotonic regression (NannyML's default, which
  needs more rows than one window gives); the model's own calibration error (ECE) is reported with it;
* expected logloss of the served scores ``p``: ``-mean(q ln p + (1 - q) ln(1 - p))`` with ``q`` the
  calibrated probability (the loss the scores will turn out to have, if the mapping still holds);
* expected AUC: the ROC curve whose true/false positives at each threshold are the expected ones
  (cumulative sums of ``q`` and ``1 - q`` in score order), integrated;
* expected CTR: ``mean(q)``.

The estimate holds under covariate shift (the inputs change, the mapping from score to click rate does
not). When the labels' meaning changes (a broken click join, flipped labels), the estimate stays where
it was and the realised figures move: a gap between the two is itself evidence of *which* side broke.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from pydantic import BaseModel

_CLIP = 1e-7


class Estimate(BaseModel):
    """Expected figures of one window, from its scores only."""

    n: int
    logloss: float
    auc: float
    ctr: float
    mean_score: float
    calibration_rows: int  # labelled rows the calibration was fitted on
    calibration_error: float  # ECE of the raw scores on those rows


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def realised(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(logloss, AUC, CTR) of scores against labels; NaN where undefined (one class only)."""
    from freshrec.evaluation import auc, logloss

    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(scores, dtype=np.float64)
    if len(y) == 0:
        return float("nan"), float("nan"), float("nan")
    both = len(np.unique(y)) == 2
    return (
        float(logloss(y, p)),
        float(auc(y, p)) if both else float("nan"),
        float(y.mean()),
    )


def expected_auc(scores: np.ndarray, q: np.ndarray) -> float:
    """AUC of the expected ROC curve: each row counts ``q`` as a positive and ``1 - q`` as a negative."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    s, q = np.asarray(scores)[order], np.asarray(q, dtype=np.float64)[order]
    pos, neg = q.sum(), (1 - q).sum()
    if pos <= 0 or neg <= 0:
        return float("nan")
    # Rows with equal scores form one step of the curve (a tie is half a win, as in the realised AUC).
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.r_[0.0, np.cumsum(q)[last]] / pos
    fp = np.r_[0.0, np.cumsum(1 - q)[last]] / neg
    return float(np.sum(np.diff(fp) * (tp[1:] + tp[:-1]) / 2))


class PerformanceEstimator:
    """CBPE with a rolling calibration: ``observe`` labelled rows, ``estimate`` a window's scores.

    Args:
        max_rows: labelled rows kept for the calibration (the most recent ones).
        min_rows: fewer labelled rows than this and ``estimate`` returns ``None``.
    """

    def __init__(self, max_rows: int = 20_000, min_rows: int = 500, method: str = "platt") -> None:
        if method not in ("platt", "isotonic"):
            raise ValueError(f"calibration method must be 'platt' or 'isotonic', got {method!r}")
        self.max_rows = max_rows
        self.min_rows = min_rows
        self.method = method
        self._scores: deque[np.ndarray] = deque()
        self._labels: deque[np.ndarray] = deque()
        self._rows = 0
        self._model: Any = None
        self._ece = float("nan")

    @property
    def rows(self) -> int:
        return self._rows

    def observe(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add labelled rows (their labels have arrived); the oldest fall out beyond ``max_rows``."""
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64)
        keep = np.isfinite(scores) & np.isfinite(labels)
        if not keep.any():
            return
        self._scores.append(scores[keep])
        self._labels.append(labels[keep])
        self._rows += int(keep.sum())
        while self._rows - len(self._scores[0]) >= self.max_rows and len(self._scores) > 1:
            self._rows -= len(self._scores.popleft())
            self._labels.popleft()
        self._model = None  # refit on the next estimate

    def _fit(self) -> None:
        from freshrec.evaluation import expected_calibration_error

        p = np.concatenate(self._scores)[-self.max_rows :]
        y = np.concatenate(self._labels)[-self.max_rows :]
        self._ece = float(expected_calibration_error(y, p))
        if self.method == "isotonic" or len(np.unique(y)) < 2:
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=_CLIP, y_max=1 - _CLIP, out_of_bounds="clip").fit(p, y)
            self._model = iso.predict
            return
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e4).fit(_logit(p)[:, None], y)
        self._model = lambda s: lr.predict_proba(_logit(s)[:, None])[:, 1]

    def estimate(self, scores: np.ndarray) -> Estimate | None:
        """The expected logloss, AUC and CTR of ``scores``; ``None`` before ``min_rows`` labelled rows."""
        scores = np.asarray(scores, dtype=np.float64)
        scores = scores[np.isfinite(scores)]
        if self._rows < self.min_rows or len(scores) == 0:
            return None
        if self._model is None:
            self._fit()
        q = np.clip(self._model(scores), _CLIP, 1 - _CLIP)
        p = np.clip(scores, _CLIP, 1 - _CLIP)
        loss = -np.mean(q * np.log(p) + (1 - q) * np.log1p(-p))
        return Estimate(
            n=len(scores),
            logloss=float(loss),
            auc=expected_auc(scores, q),
            ctr=float(q.mean()),
            mean_score=float(p.mean()),
            calibration_rows=min(self._rows, self.max_rows),
            calibration_error=self._ece,
        )
