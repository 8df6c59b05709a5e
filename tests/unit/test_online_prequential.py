"""Prequential metrics and the export guard: exact numbers on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from freshrec.online.guard import GuardPolicy, check_guard, weights_finite
from freshrec.online.prequential import PrequentialMetrics
from freshrec.training.metrics import auc, logloss


def test_auc_and_logloss_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.round(rng.random(500), 2)  # rounding makes ties, which must get average ranks
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert logloss(y, p) == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), abs=1e-9)
    assert auc(np.ones(3), np.array([0.1, 0.2, 0.3])) != auc(np.ones(3), np.array([0.1, 0.2, 0.3]))  # NaN
    assert auc(np.array([0, 1, 0, 1]), np.full(4, 0.5)) == 0.5


def test_window_forgets_old_events_and_totals_do_not():
    m = PrequentialMetrics(window=4, keep_all=True)
    m.update(np.array([1, 0, 1, 0]), np.array([0.1, 0.9, 0.2, 0.8]))  # perfectly wrong
    rec = m.update(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.8, 0.2]))  # perfectly right
    assert rec.window_auc == 1.0  # only the last 4 events
    assert m.stream_auc() == pytest.approx(0.5)
    assert m.n == 8 and rec.events_total == 8
    assert m.mean_logloss() == pytest.approx((logloss([1, 0, 1, 0], [0.1, 0.9, 0.2, 0.8]) + rec.logloss) / 2)
    state = m.state()
    fresh = PrequentialMetrics(window=4)
    fresh.restore(state)
    assert fresh.window_auc() == 1.0 and fresh.n == 8
    with pytest.raises(ValueError, match="differ in length"):
        m.update(np.array([1, 0]), np.array([0.5]))


def _policy() -> GuardPolicy:
    return GuardPolicy(max_logloss_increase=0.02, prediction_mean_bounds=(0.05, 0.95), min_auc=0.5)


def test_guard_passes_a_better_candidate_and_names_each_check():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    serving = np.clip(0.5 + (y - 0.5) * 0.2 + rng.normal(0, 0.1, 400), 0.01, 0.99)
    candidate = np.clip(0.5 + (y - 0.5) * 0.4 + rng.normal(0, 0.1, 400), 0.01, 0.99)
    res = check_guard(_policy(), y, candidate, serving, weights=[np.ones((2, 2))])
    assert res.passed, res.reasons
    assert set(res.checks) == {"finite_weights", "prediction_mean", "recent_logloss", "recent_auc"}
    assert res.to_dict()["passed"] is True


def test_guard_fails_worse_candidate_nan_weights_and_flipped_ranking():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    good = np.clip(0.5 + (y - 0.5) * 0.4 + rng.normal(0, 0.1, 400), 0.01, 0.99)
    worse = np.clip(good + rng.normal(0, 0.3, 400), 0.01, 0.99)
    res = check_guard(_policy(), y, worse, good)
    assert not res.passed and not res.checks["recent_logloss"].passed
    assert any("recent logloss" in r for r in res.reasons)

    res = check_guard(_policy(), y, good, good, weights=[np.array([1.0, math.nan])])
    assert not res.passed and not res.checks["finite_weights"].passed
    assert not weights_finite([np.array([np.inf])])

    flipped = 1.0 - good  # ranks recent events backwards: learned from flipped labels
    res = check_guard(_policy(), y, flipped, flipped)
    assert not res.checks["recent_auc"].passed

    res = check_guard(_policy(), y, np.full(400, 0.99), np.full(400, 0.99))
    assert not res.checks["prediction_mean"].passed


def test_guard_reference_check_catches_forgetting():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    good = np.clip(0.5 + (y - 0.5) * 0.5, 0.01, 0.99)
    res = check_guard(_policy(), y, good, good, reference=(y, 1 - good, good))
    assert not res.passed and not res.checks["reference_logloss"].passed
    with pytest.raises(ValueError, match="differ in length"):
        check_guard(_policy(), y, good[:10], good)
