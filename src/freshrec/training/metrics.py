"""The metric functions of freshrec: every module that scores predictions imports them from here.

Offline evaluation (:mod:`freshrec.evaluation`), training's validation figures, the prequential scoring of
the online learner, the export guard, the loop's window table and the benchmarks all use these, so a
figure means the same thing wherever it is reported. Inputs are label and probability arrays (any array
like); undefined figures (AUC of one class, anything of no rows) are NaN, never an exception.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = [
    "METRICS",
    "auc",
    "compute_metrics",
    "expected_calibration_error",
    "group_auc",
    "logloss",
    "logloss_rows",
    "ranking_at_k",
]

METRICS = (
    "auc",
    "gauc",
    "logloss",
    "ece",
    "mean_prediction",
    "ctr",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "ndcg_at_10",
    "recall_at_10",
    "n",
)
EPS = 1e-7  # predictions are clipped to [EPS, 1 - EPS] so a confident mistake stays finite


def logloss_rows(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of each row (natural log), e.g. for a test of two arms' losses."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(preds, dtype=np.float64).reshape(-1), EPS, 1.0 - EPS)
    return -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))


def logloss(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean binary cross-entropy (natural log); NaN for no rows."""
    rows = logloss_rows(labels, preds)
    return float(np.mean(rows)) if rows.size else math.nan


def auc(labels: np.ndarray, preds: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties get average ranks); NaN when only one class is present."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(preds, dtype=np.float64).reshape(-1)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(p.size, dtype=np.float64)
    # Average ranks over ties so that a constant predictor scores exactly 0.5.
    _, first, counts = np.unique(p[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def expected_calibration_error(labels: np.ndarray, preds: np.ndarray, bins: int = 10) -> float:
    """ECE over ``bins`` equal-width probability bins, weighted by the share of rows in each bin."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(preds, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    idx = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, weights=p, minlength=bins) - np.bincount(idx, weights=y, minlength=bins))
    return float(gap.sum() / len(y)) if count.sum() else math.nan


def group_auc(users: np.ndarray, labels: np.ndarray, preds: np.ndarray) -> float:
    """GAUC: per-user AUC averaged with impression weights, over users who have both classes."""
    df = pd.DataFrame(
        {"u": users, "y": np.asarray(labels, dtype=np.float64), "p": np.asarray(preds, dtype=np.float64)}
    )
    df["r"] = df.groupby("u")["p"].rank(method="average")
    g = df.groupby("u").agg(n=("y", "size"), pos=("y", "sum"))
    g["rank_pos"] = df[df["y"] == 1].groupby("u")["r"].sum()
    g = g[(g["pos"] > 0) & (g["pos"] < g["n"])]
    if g.empty:
        return math.nan
    neg = g["n"] - g["pos"]
    per_user = (g["rank_pos"] - g["pos"] * (g["pos"] + 1) / 2) / (g["pos"] * neg)
    return float(np.average(per_user, weights=g["n"]))


def ranking_at_k(
    users: np.ndarray, labels: np.ndarray, preds: np.ndarray, k: int = 10
) -> tuple[float, float]:
    """Mean NDCG@k and Recall@k over users with at least one click in the window.

    Each user's impressions in the window are ranked by score; Recall@k is clicks in the top k divided by
    the user's clicks in the window.
    """
    df = pd.DataFrame(
        {"u": users, "y": np.asarray(labels, dtype=np.float64), "p": np.asarray(preds, dtype=np.float64)}
    )
    df = df.sort_values(["u", "p"], ascending=[True, False], kind="stable")
    df["rank"] = df.groupby("u").cumcount()
    top = df[df["rank"] < k]
    dcg = (top["y"] / np.log2(top["rank"] + 2)).groupby(top["u"]).sum()
    hits = top.groupby("u")["y"].sum()
    pos = df.groupby("u")["y"].sum()
    pos = pos[pos > 0]
    if pos.empty:
        return math.nan, math.nan
    discounts = np.cumsum(1 / np.log2(np.arange(k) + 2))
    idcg = discounts[np.minimum(pos.to_numpy(), k).astype(int) - 1]
    ndcg = dcg.reindex(pos.index).to_numpy() / idcg
    recall = hits.reindex(pos.index).to_numpy() / pos.to_numpy()
    return float(ndcg.mean()), float(recall.mean())


def compute_metrics(
    labels: np.ndarray, preds: np.ndarray, users: np.ndarray | None = None, threshold: float = 0.5
) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one set of rows (the per-user ones need ``users``)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(preds, dtype=np.float64)
    pred = p >= threshold
    tp = float(np.sum(pred & (y == 1)))
    fp = float(np.sum(pred & (y == 0)))
    fn = float(np.sum(~pred & (y == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    out = {
        "auc": auc(y, p),
        "gauc": group_auc(users, y, p) if users is not None else math.nan,
        "logloss": logloss(y, p),
        "ece": expected_calibration_error(y, p),
        "mean_prediction": float(p.mean()) if len(p) else math.nan,
        "ctr": float(y.mean()) if len(y) else math.nan,
        "accuracy": float(np.mean(pred == (y == 1))) if len(y) else math.nan,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "n": float(len(y)),
    }
    if users is not None:
        out["ndcg_at_10"], out["recall_at_10"] = ranking_at_k(users, y, p, 10)
    else:
        out["ndcg_at_10"] = out["recall_at_10"] = math.nan
    return out
