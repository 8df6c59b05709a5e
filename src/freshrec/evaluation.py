"""Offline evaluation of CTR scores and the blessing policy that decides whether a candidate may ship.

:func:`evaluate` takes a frame with ``user_id``, ``item_id``, ``label`` and ``score`` (the predicted click
probability) and returns the metrics overall and per slice. :func:`bless` applies the declarative policy
(:class:`freshrec.config.BlessingSettings`) to a candidate's metrics and, when there is one, to the
production model's metrics on the same window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from freshrec.config import BlessingSettings
from freshrec.io import atomic_write_json
from freshrec.training.metrics import compute_metrics


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
        return atomic_write_json(path, self.to_dict(), indent=1)


def _clean(d: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: undefined metrics (e.g. AUC of a one-class slice) become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


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
