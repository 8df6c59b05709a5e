"""Error feedback in retraining: weight (or repeat) the rows the served model scored badly.

The prediction log (:mod:`freshrec.serving.predlog`) holds what serving scored; joined with the clicks
(:func:`~freshrec.serving.predlog.join_clicks`) each logged impression that reached the training set has a
served logloss. Its ratio to the mean served logloss of all joined rows, capped to ``[1 / cap, cap]``
(``training.feedback.max_weight``), is the row's sample weight (mode ``weight``); mode ``augment`` appends
``floor(weight) - 1`` extra copies of each row instead (at most ``cap - 1``), for trainers without sample
weights. The joined rows' weights average exactly 1 (see :func:`feedback_weights`), so the change is
*which* recent rows count, not how much recent data counts. Rows without a logged prediction keep weight 1.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from freshrec.config import FeedbackSettings, Settings
from freshrec.training.metrics import logloss_rows

log = logging.getLogger(__name__)

KEYS = ["user_id", "item_id", "event_timestamp"]


@dataclass
class FeedbackSummary:
    """What the feedback did to a training set (logged as training metrics)."""

    mode: str
    rows: int  # training rows before augmentation
    joined: int  # rows with a logged prediction
    served_logloss: float  # mean served logloss of the joined rows (NaN: none)
    capped: int  # joined rows whose ratio hit the cap (either end)
    max_weight: float  # the largest weight given (or copies + 1)
    added: int  # rows appended by augmentation

    def to_dict(self) -> dict[str, float]:
        """The counts and figures as floats (NaN ones left out: a metrics store may refuse them)."""
        return {k: float(v) for k, v in asdict(self).items() if k != "mode" and not math.isnan(float(v))}


def served_logloss(frame: pd.DataFrame, predictions: pd.DataFrame, window_s: float) -> np.ndarray:
    """The served model's logloss on each row of ``frame`` (NaN where no prediction was logged for it).

    A row is matched with the predictions whose click join (``join_clicks`` over ``window_s``) lands on
    its (user_id, item_id, event_timestamp); of several, the latest served one (what the user saw last).
    The loss uses the row's own label.

    Raises:
        ValueError: ``frame`` or ``predictions`` lacks a needed column.
    """
    from freshrec.serving.predlog import join_clicks

    missing = [c for c in [*KEYS, "label"] if c not in frame.columns]
    if missing:
        raise ValueError(f"feedback: the training frame lacks column(s) {missing}")
    if "score" not in predictions.columns:
        raise ValueError("feedback: the predictions lack column 'score'")
    out = np.full(len(frame), np.nan)
    if frame.empty or predictions.empty:
        return out
    events = frame[[*KEYS, "label"]].copy()
    events["event_timestamp"] = pd.to_datetime(events["event_timestamp"], utc=True)
    joined = join_clicks(predictions, events, window_s)
    joined = joined[joined["event_timestamp"].notna()]
    if joined.empty:
        return out
    latest = (
        joined.sort_values("served_at", kind="stable")
        .drop_duplicates(KEYS, keep="last")[[*KEYS, "score"]]
        .astype({"user_id": str, "item_id": str})
    )
    rows = events.assign(_row=np.arange(len(events))).astype({"user_id": str, "item_id": str})
    hit = rows.merge(latest, on=KEYS, how="inner")
    out[hit["_row"].to_numpy()] = logloss_rows(hit["label"].to_numpy(), hit["score"].to_numpy())
    return out


def feedback_weights(losses: np.ndarray, max_weight: float) -> np.ndarray:
    """Sample weights from per-row served losses; 1 where the loss is NaN (no logged prediction).

    A joined row weighs ``loss / m`` capped to ``[1 / max_weight, max_weight]``, with ``m`` chosen so that
    the joined rows' weights average exactly 1 (``m`` is the mean loss when nothing is capped): one
    confident mistake is capped instead of raising the mean and so lightening every other row.
    """
    losses = np.asarray(losses, dtype=np.float64)
    weights = np.ones(len(losses))
    known = ~np.isnan(losses)
    loss = losses[known]
    if not known.any() or not loss.max() > 0:
        return weights
    lo, hi = 1.0 / max_weight, max_weight

    def mean_weight(log_m: float) -> float:
        return float(np.clip(loss / math.exp(log_m), lo, hi).mean())

    # mean_weight falls as m grows: bisect log m between bounds where it is >= 1 and <= 1.
    floor = float(loss[loss > 0].min())
    a, b = math.log(floor / hi), math.log(float(loss.max()) / lo)
    for _ in range(100):
        mid = (a + b) / 2
        a, b = (mid, b) if mean_weight(mid) > 1.0 else (a, mid)
    weights[known] = np.clip(loss / math.exp((a + b) / 2), lo, hi)
    return weights


def apply_feedback(
    frame: pd.DataFrame, predictions: pd.DataFrame, settings: FeedbackSettings, window_s: float
) -> tuple[pd.DataFrame, np.ndarray | None, FeedbackSummary]:
    """The training rows and sample weights that ``settings.mode`` asks for.

    Returns ``(frame, None, summary)`` when the mode is ``off``; ``(frame, weights, summary)`` for
    ``weight``; ``(frame + extra copies of the hard rows, None, summary)`` for ``augment`` (the copies are
    appended; training shuffles).
    """
    summary = FeedbackSummary(settings.mode, len(frame), 0, math.nan, 0, 1.0, 0)
    if settings.mode == "off":
        return frame, None, summary
    losses = served_logloss(frame, predictions, window_s)
    known = ~np.isnan(losses)
    summary.joined = int(known.sum())
    if not summary.joined:
        log.info("feedback %s: no training row has a logged prediction; plain training", settings.mode)
        return frame, None, summary
    summary.served_logloss = float(losses[known].mean())
    weights = feedback_weights(losses, settings.max_weight)
    cap = settings.max_weight
    summary.capped = int(np.sum(known & ((weights >= cap) | (weights <= 1.0 / cap)))) if cap > 1 else 0
    if settings.mode == "weight":
        summary.max_weight = float(weights.max())
        out: tuple[pd.DataFrame, np.ndarray | None] = (frame, weights)
    else:
        copies = np.floor(np.maximum(weights, 1.0) + 1e-9).astype(int) - 1
        summary.added = int(copies.sum())
        summary.max_weight = float(copies.max() + 1)
        extra = frame.iloc[np.repeat(np.arange(len(frame)), copies)]
        out = (pd.concat([frame, extra], ignore_index=True), None)
    log.info(
        "feedback %s: %d of %d rows have a logged prediction (served logloss %.4f), %d capped, %d added",
        settings.mode,
        summary.joined,
        summary.rows,
        summary.served_logloss,
        summary.capped,
        summary.added,
    )
    return out[0], out[1], summary


def feedback_training_frame(
    source: pd.DataFrame | str | Path, settings: Settings
) -> tuple[pd.DataFrame | str | Path, np.ndarray | None, FeedbackSummary]:
    """:func:`apply_feedback` with the prediction log under ``settings.predictions_dir``.

    ``source`` (a frame or a Parquet path) is returned untouched when ``training.feedback.mode`` is off, so
    plain training keeps reading the file column by column.
    """
    from freshrec.serving.predlog import read_predictions

    fb = settings.training.feedback
    if fb.mode == "off":
        return source, None, FeedbackSummary("off", -1, 0, math.nan, 0, 1.0, 0)
    frame = source if isinstance(source, pd.DataFrame) else pd.read_parquet(source)
    window = fb.click_window_s if fb.click_window_s is not None else settings.rollout.click_window_s
    start = None
    if len(frame):
        first = pd.to_datetime(frame["event_timestamp"], utc=True).min()
        start = (first - pd.Timedelta(seconds=window)).to_pydatetime()
    predictions = read_predictions(settings.predictions_dir, start=start)
    return apply_feedback(frame, predictions, fb, window)
