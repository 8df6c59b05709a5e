"""The export guard: a version learned online reaches serving only if it is at least as good as the one
it replaces, on the same recent events, and numerically sane.

Checks (each named, so alerts and reports read them by name):

- ``finite_weights``: no NaN/inf in any weight;
- ``prediction_mean``: the candidate's mean prediction on recent events is inside the configured bounds;
- ``recent_logloss``: the candidate's prequential logloss on the events since the last export is not worse
  than the serving version's on the very same events by more than ``guard_max_logloss_increase``;
- ``recent_auc``: the candidate's prequential AUC on those events is at least ``guard_min_auc``. A model
  that ranks recent events worse than chance means corrupted labels (a label flip learned from the
  stream looks *better* than serving on the flipped events by logloss, so logloss alone misses it);
- ``reference_logloss``: on a reservoir of events learned before the serving version was exported, the
  candidate is not worse than serving by more than ``guard_max_reference_logloss_increase`` (catches a
  learner that has been pulled away from everything it knew).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from freshrec.training.metrics import auc, logloss


@dataclass
class GuardCheck:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str


@dataclass
class GuardResult:
    """Verdict of one guard evaluation."""

    passed: bool
    checks: dict[str, GuardCheck] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        """Messages of the failed checks."""
        return [c.message for c in self.checks.values() if not c.passed]

    def to_dict(self) -> dict:
        def clean(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else float(x)

        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "checks": {
                k: {
                    "passed": c.passed,
                    "value": clean(c.value),
                    "threshold": clean(c.threshold),
                    "message": c.message,
                }
                for k, c in self.checks.items()
            },
        }


@dataclass
class GuardPolicy:
    """Thresholds (taken from ``settings.online``)."""

    max_logloss_increase: float = 0.02
    prediction_mean_bounds: tuple[float, float] = (0.02, 0.98)
    min_auc: float = 0.5
    max_reference_logloss_increase: float = 0.05

    @classmethod
    def from_settings(cls, online_settings) -> GuardPolicy:
        return cls(
            max_logloss_increase=online_settings.guard_max_logloss_increase,
            prediction_mean_bounds=tuple(online_settings.guard_prediction_mean_bounds),
            min_auc=online_settings.guard_min_auc,
            max_reference_logloss_increase=online_settings.guard_max_reference_logloss_increase,
        )


def weights_finite(weights: Sequence[np.ndarray]) -> bool:
    """True when every weight array is free of NaN and inf."""
    return all(bool(np.isfinite(np.asarray(w, dtype=np.float64)).all()) for w in weights)


def check_guard(
    policy: GuardPolicy,
    labels: np.ndarray,
    candidate_preds: np.ndarray,
    serving_preds: np.ndarray,
    weights: Sequence[np.ndarray] | None = None,
    reference: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> GuardResult:
    """Decide whether the candidate may replace the serving version.

    Args:
        policy: thresholds.
        labels: labels of the recent events (those since the last export).
        candidate_preds: the learner's prequential predictions on them (made before training on each).
        serving_preds: the serving version's predictions on the same events.
        weights: the candidate's weights (for the NaN/inf check); skipped when None.
        reference: optional (labels, candidate_preds, serving_preds) on the reference reservoir.
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    cand = np.asarray(candidate_preds, dtype=np.float64).reshape(-1)
    serv = np.asarray(serving_preds, dtype=np.float64).reshape(-1)
    if not (y.shape == cand.shape == serv.shape):
        raise ValueError(
            f"guard inputs differ in length: labels {y.shape}, candidate {cand.shape}, serving {serv.shape}"
        )
    checks: dict[str, GuardCheck] = {}

    if weights is not None:
        ok = weights_finite(weights)
        checks["finite_weights"] = GuardCheck(
            "finite_weights",
            ok,
            None,
            None,
            "weights are finite" if ok else "NaN or inf in the model weights",
        )

    lo, hi = policy.prediction_mean_bounds
    mean = float(cand.mean()) if cand.size else float("nan")
    ok = math.isfinite(mean) and lo <= mean <= hi
    checks["prediction_mean"] = GuardCheck(
        "prediction_mean",
        ok,
        mean,
        None,
        f"mean prediction {mean:.4f} {'within' if ok else 'outside'} [{lo}, {hi}]",
    )

    cand_loss, serv_loss = logloss(y, cand), logloss(y, serv)
    increase = cand_loss - serv_loss
    ok = math.isfinite(cand_loss) and increase <= policy.max_logloss_increase
    checks["recent_logloss"] = GuardCheck(
        "recent_logloss",
        ok,
        increase,
        policy.max_logloss_increase,
        f"recent logloss {cand_loss:.4f} vs serving {serv_loss:.4f} on {y.size} events "
        f"(increase {increase:+.4f}, allowed {policy.max_logloss_increase})",
    )

    cand_auc = auc(y, cand)
    # One-class windows have no AUC; that is not evidence against the candidate.
    ok = (not math.isfinite(cand_auc)) or cand_auc >= policy.min_auc
    checks["recent_auc"] = GuardCheck(
        "recent_auc",
        ok,
        cand_auc,
        policy.min_auc,
        f"recent AUC {cand_auc:.4f} (floor {policy.min_auc})",
    )

    if reference is not None and len(reference[0]):
        ry, rc, rs = (np.asarray(a, dtype=np.float64).reshape(-1) for a in reference)
        r_inc = logloss(ry, rc) - logloss(ry, rs)
        ok = math.isfinite(r_inc) and r_inc <= policy.max_reference_logloss_increase
        checks["reference_logloss"] = GuardCheck(
            "reference_logloss",
            ok,
            r_inc,
            policy.max_reference_logloss_increase,
            f"reference logloss increase {r_inc:+.4f} on {ry.size} earlier events "
            f"(allowed {policy.max_reference_logloss_increase})",
        )

    return GuardResult(passed=all(c.passed for c in checks.values()), checks=checks)
