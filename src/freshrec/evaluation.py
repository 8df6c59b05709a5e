"""Offline evaluation of CTR scores and the blessing policy that decides whether a candidate may ship.

:func:`evaluate` takes a frame with ``user_id``, ``item_id``, ``label`` and ``score`` (the predicted click
probability) and returns the metrics overall and per slice. :func:`bless` applies the declarative policy
(:class:`freshrec.config.BlessingSettings`) to a candidate's metrics and, when there is one, to the
production model's metrics on the same window.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from freshrec.config import BlessingSettings

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
_EPS = 1e-7


class BlessingError(ValueError):
    """The blessing policy cannot be applied (e.g. a metric it needs is missing or not a number)."""


@dataclass
class EvaluationReport:
    """Metrics on an evaluation window, overall and per slice."""

    metrics: dict[str, float]
    slices: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": _clean(self.metrics), "slices": {k: _clean(v) for k, v in self.slices.items()}}

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path


def _clean(d: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: undefined metrics (e.g. AUC of a one-class slice) become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# ---------------------------------------------------------------------------- metrics


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (rank formulation, ties averaged); NaN when only one class is present."""
    y = np.asarray(y, dtype=np.float64)
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = pd.Series(np.asarray(p, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else math.nan


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE over ``bins`` equal-width probability bins, weighted by the share of rows in each bin."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    idx = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, weights=p, minlength=bins) - np.bincount(idx, weights=y, minlength=bins))
    return float(gap.sum() / len(y)) if count.sum() else math.nan


def group_auc(users: np.ndarray, y: np.ndarray, p: np.ndarray) -> float:
    """GAUC: per-user AUC averaged with impression weights, over users who have both classes."""
    df = pd.DataFrame(
        {"u": users, "y": np.asarray(y, dtype=np.float64), "p": np.asarray(p, dtype=np.float64)}
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


def ranking_at_k(users: np.ndarray, y: np.ndarray, p: np.ndarray, k: int = 10) -> tuple[float, float]:
    """Mean NDCG@k and Recall@k over users with at least one click in the window.

    Each user's impressions in the window are ranked by score; Recall@k is clicks in the top k divided by
    the user's clicks in the window.
    """
    df = pd.DataFrame(
        {"u": users, "y": np.asarray(y, dtype=np.float64), "p": np.asarray(p, dtype=np.float64)}
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
    y: np.ndarray, p: np.ndarray, users: np.ndarray | None = None, threshold: float = 0.5
) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one set of rows."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
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


def evaluate(
    frame: pd.DataFrame,
    known_users: Iterable[str] | None = None,
    known_items: Iterable[str] | None = None,
    score_column: str = "score",
    label_column: str = "label",
    top_genres: int = 5,
) -> EvaluationReport:
    """Metrics of the scores in ``frame`` overall and per slice.

    Slices: ``new_users`` / ``returning_users`` (by ``known_users``, e.g. the training window's users),
    ``new_items`` / ``known_items`` (by ``known_items``), and ``genre=<g>`` for the ``top_genres`` most
    frequent genres when the frame has ``item_genres``.

    Raises:
        ValueError: a required column is missing or scores are outside [0, 1] / not finite.
    """
    for col in ("user_id", score_column, label_column):
        if col not in frame.columns:
            raise ValueError(f"evaluation frame lacks column {col!r} (has {list(frame.columns)})")
    p = pd.to_numeric(frame[score_column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(p) | (p < 0) | (p > 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"column {score_column!r} must hold probabilities; row {row} has {p[row]!r}")
    y = pd.to_numeric(frame[label_column], errors="coerce").to_numpy(dtype=np.float64)
    users = frame["user_id"].astype(str).to_numpy()
    report = EvaluationReport(metrics=compute_metrics(y, p, users))

    masks: dict[str, np.ndarray] = {}
    if known_users is not None:
        known = np.isin(users, np.asarray(list(known_users), dtype=str))
        masks["new_users"], masks["returning_users"] = ~known, known
    if known_items is not None and "item_id" in frame.columns:
        known = np.isin(frame["item_id"].astype(str).to_numpy(), np.asarray(list(known_items), dtype=str))
        masks["new_items"], masks["known_items"] = ~known, known
    if "item_genres" in frame.columns and top_genres > 0:
        genres = frame["item_genres"].fillna("").astype(str)
        counts = genres.str.split("|").explode()
        counts = counts[counts != ""].value_counts()
        for g in counts.index[:top_genres]:
            masks[f"genre={g}"] = genres.str.split("|").apply(lambda gs, g=g: g in gs).to_numpy()
    for name, mask in masks.items():
        if mask.any():
            report.slices[name] = compute_metrics(y[mask], p[mask], users[mask])
        else:
            report.slices[name] = {"n": 0.0}
    return report


def compare(candidate: dict[str, float], production: dict[str, float]) -> dict[str, float]:
    """``candidate - production`` for every metric both have (same window)."""
    return {
        k: float(candidate[k]) - float(production[k])
        for k in candidate
        if k in production and _finite(candidate[k]) and _finite(production[k])
    }


# --------------------------------------------------------------------------- blessing


@dataclass
class Check:
    """One rule of the policy and the numbers behind its verdict."""

    name: str
    value: float
    threshold: float
    passed: bool
    rule: str


@dataclass
class Blessing:
    """The verdict on a candidate, with every check and number behind it."""

    blessed: bool
    reasons: list[str]
    checks: list[Check]
    candidate: dict[str, float]
    production: dict[str, float] | None
    policy: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "blessed": self.blessed,
            "reasons": list(self.reasons),
            "checks": [asdict(c) for c in self.checks],
            "candidate": _clean(dict(self.candidate)),
            "production": _clean(dict(self.production)) if self.production is not None else None,
            "policy": dict(self.policy),
        }


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(float(x))


def _need(metrics: dict[str, Any], names: tuple[str, ...], whose: str) -> dict[str, float]:
    missing = [n for n in names if n not in metrics or metrics[n] is None]
    if missing:
        raise BlessingError(
            f"cannot bless: {whose} metrics lack {missing} (have {sorted(metrics)}); evaluate the model on the window first"
        )
    bad = [n for n in names if not _finite(metrics[n])]
    if bad:
        raise BlessingError(
            f"cannot bless: {whose} metrics {bad} are not finite numbers "
            f"({ {n: metrics[n] for n in bad} }); the window may hold a single class"
        )
    return {n: float(metrics[n]) for n in names}


def bless(
    candidate_metrics: dict[str, Any],
    production_metrics: dict[str, Any] | None,
    policy: BlessingSettings | None = None,
) -> Blessing:
    """Apply the blessing policy.

    Floors always apply (``auc >= min_auc``, ``logloss <= max_logloss``, ``ece <= max_calibration_error``).
    With a production model, measured on the same window, the candidate may also lose at most
    ``max_auc_drop`` AUC and gain at most ``max_logloss_increase`` logloss. Without one (the first model),
    the floors alone decide.

    Raises:
        BlessingError: a metric the policy needs is missing or not a finite number.
    """
    policy = policy or BlessingSettings()
    cand = _need(candidate_metrics, ("auc", "logloss", "ece"), "candidate")
    checks = [
        Check("auc_floor", cand["auc"], policy.min_auc, cand["auc"] >= policy.min_auc, "auc >= min_auc"),
        Check(
            "logloss_ceiling",
            cand["logloss"],
            policy.max_logloss,
            cand["logloss"] <= policy.max_logloss,
            "logloss <= max_logloss",
        ),
        Check(
            "calibration",
            cand["ece"],
            policy.max_calibration_error,
            cand["ece"] <= policy.max_calibration_error,
            "ece <= max_calibration_error",
        ),
    ]
    prod = None
    if production_metrics is not None:
        prod = _need(production_metrics, ("auc", "logloss"), "production")
        auc_floor = prod["auc"] - policy.max_auc_drop
        ll_ceiling = prod["logloss"] + policy.max_logloss_increase
        checks += [
            Check(
                "auc_vs_production",
                cand["auc"],
                auc_floor,
                cand["auc"] >= auc_floor,
                "auc >= production auc - max_auc_drop",
            ),
            Check(
                "logloss_vs_production",
                cand["logloss"],
                ll_ceiling,
                cand["logloss"] <= ll_ceiling,
                "logloss <= production logloss + max_logloss_increase",
            ),
        ]
    reasons = [f"{c.name}: {c.value:.4f} fails {c.rule} ({c.threshold:.4f})" for c in checks if not c.passed]
    if not reasons:
        reasons = [
            "first model: passes the floors"
            if prod is None
            else "passes the floors and the production comparison"
        ]
    return Blessing(
        blessed=all(c.passed for c in checks),
        reasons=reasons,
        checks=checks,
        candidate={k: v for k, v in candidate_metrics.items() if _finite(v)},
        production={k: v for k, v in production_metrics.items() if _finite(v)}
        if production_metrics
        else None,
        policy=policy.model_dump(),
    )
