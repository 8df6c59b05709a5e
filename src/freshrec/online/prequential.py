"""Prequential (test-then-train) evaluation: every event is scored before the model learns from it.

Keeps a sliding window of the most recent (label, prediction) pairs for windowed logloss/AUC, running
totals for the whole stream, and one record per micro-batch for the run report and plots.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np

from freshrec.training.metrics import auc, logloss


@dataclass
class BatchRecord:
    """Prequential figures of one micro-batch, scored before training on it."""

    batch: int
    n: int
    events_total: int
    first_event_time: str
    last_event_time: str
    logloss: float
    auc: float
    mean_prediction: float
    ctr: float
    window_logloss: float
    window_auc: float

    def to_dict(self) -> dict:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }


@dataclass
class PrequentialMetrics:
    """Sliding-window and whole-stream prequential metrics.

    Args:
        window: how many of the most recent scored events the windowed metrics cover.
        keep_all: keep every (label, prediction) pair so that the whole-stream AUC is exact
            (the replay benchmark needs it; a long-running learner should not).
    """

    window: int = 5000
    keep_all: bool = False
    n: int = 0
    loss_sum: float = 0.0
    records: list[BatchRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._labels: deque[float] = deque(maxlen=self.window)
        self._preds: deque[float] = deque(maxlen=self.window)
        self._all_labels: list[np.ndarray] = []
        self._all_preds: list[np.ndarray] = []

    def update(
        self, labels: np.ndarray, preds: np.ndarray, first_time: str = "", last_time: str = ""
    ) -> BatchRecord:
        """Add one scored micro-batch and return its record."""
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        p = np.asarray(preds, dtype=np.float64).reshape(-1)
        if y.shape != p.shape:
            raise ValueError(f"labels and predictions differ in length: {y.shape} vs {p.shape}")
        batch_loss = logloss(y, p)
        if y.size:
            self.loss_sum += batch_loss * y.size
        self.n += int(y.size)
        self._labels.extend(y.tolist())
        self._preds.extend(p.tolist())
        if self.keep_all:
            self._all_labels.append(y)
            self._all_preds.append(p)
        record = BatchRecord(
            batch=len(self.records),
            n=int(y.size),
            events_total=self.n,
            first_event_time=first_time,
            last_event_time=last_time,
            logloss=batch_loss,
            auc=auc(y, p),
            mean_prediction=float(p.mean()) if p.size else float("nan"),
            ctr=float(y.mean()) if y.size else float("nan"),
            window_logloss=self.window_logloss(),
            window_auc=self.window_auc(),
        )
        self.records.append(record)
        return record

    def window_logloss(self) -> float:
        return logloss(np.fromiter(self._labels, float), np.fromiter(self._preds, float))

    def window_auc(self) -> float:
        return auc(np.fromiter(self._labels, float), np.fromiter(self._preds, float))

    def mean_logloss(self) -> float:
        """Whole-stream logloss (exact, from the running sum)."""
        return self.loss_sum / self.n if self.n else float("nan")

    def stream_auc(self) -> float:
        """Whole-stream AUC (needs ``keep_all``; otherwise the windowed AUC)."""
        if not self.keep_all:
            return self.window_auc()
        if not self._all_labels:
            return float("nan")
        return auc(np.concatenate(self._all_labels), np.concatenate(self._all_preds))

    def all_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (label, prediction) pair kept so far (``keep_all``), in stream order."""
        if not self._all_labels:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(self._all_labels), np.concatenate(self._all_preds)

    def state(self) -> dict:
        """What a checkpoint keeps: totals and the window, so metrics continue across restarts."""
        return {
            "n": self.n,
            "loss_sum": self.loss_sum,
            "window_labels": list(self._labels),
            "window_preds": list(self._preds),
        }

    def restore(self, state: dict) -> None:
        self.n = int(state.get("n", 0))
        self.loss_sum = float(state.get("loss_sum", 0.0))
        self._labels.clear()
        self._preds.clear()
        self._labels.extend(state.get("window_labels", []))
        self._preds.extend(state.get("window_preds", []))
