"""Evaluation metrics against independent references, slices, and the blessing policy (table-driven)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from freshrec.config import BlessingSettings
from freshrec.evaluation import BlessingError, bless, compare, evaluate
from freshrec.training.metrics import expected_calibration_error, group_auc, ranking_at_k


def _frame(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = rng.random(n)
    label = (rng.random(n) < score).astype(int)
    return pd.DataFrame(
        {
            "user_id": [f"u{x}" for x in rng.integers(0, 50, n)],
            "item_id": [f"i{x}" for x in rng.integers(0, 80, n)],
            "label": label,
            "score": score,
            "item_genres": rng.choice(["Action|Drama", "Comedy", "", "Drama"], n),
        }
    )


def test_global_metrics_match_sklearn_and_definitions():
    df = _frame()
    m = evaluate(df).metrics
    assert m["auc"] == pytest.approx(roc_auc_score(df.label, df.score))
    assert m["logloss"] == pytest.approx(log_loss(df.label, df.score))
    assert m["ctr"] == pytest.approx(df.label.mean()) and m["mean_prediction"] == pytest.approx(
        df.score.mean()
    )
    pred = df.score >= 0.5
    tp = (pred & (df.label == 1)).sum()
    assert m["precision"] == pytest.approx(tp / pred.sum())
    assert m["recall"] == pytest.approx(tp / (df.label == 1).sum())
    assert m["accuracy"] == pytest.approx((pred == (df.label == 1)).mean())
    assert m["n"] == len(df)
    assert m["ece"] < 0.05  # labels drawn from the scores: well calibrated


def test_gauc_is_impression_weighted_over_users_with_both_classes():
    users = np.array(["a"] * 4 + ["b"] * 2 + ["c"] * 3)
    y = np.array([1, 0, 1, 0, 1, 0, 1, 1, 1])
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.3, 0.6, 0.5, 0.4, 0.2])
    auc_a = roc_auc_score(y[:4], p[:4])  # 0.5
    auc_b = roc_auc_score(y[4:6], p[4:6])  # 0.0
    assert group_auc(users, y, p) == pytest.approx((4 * auc_a + 2 * auc_b) / 6)  # c has one class: skipped


def test_ndcg_and_recall_at_k():
    users = np.array(["a"] * 3 + ["b"] * 2 + ["c"])
    y = np.array([0, 1, 1, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.5])
    ndcg, recall = ranking_at_k(users, y, p, k=2)
    # a: ranks 0.9(0), 0.8(1), 0.1(1): dcg = 1/log2(3); idcg = 1 + 1/log2(3); recall 1/2
    # b: ranks 0.7(0), 0.2(1): dcg = 1/log2(3); idcg = 1; recall 1; c has no click: skipped
    nd_a = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg == pytest.approx((nd_a + 1 / math.log2(3)) / 2)
    assert recall == pytest.approx((0.5 + 1.0) / 2)


def test_ece_of_a_biased_model():
    y = np.array([0, 0, 1, 1])
    assert expected_calibration_error(y, np.array([0.05, 0.05, 0.95, 0.95])) == pytest.approx(0.05)
    assert expected_calibration_error(y, np.full(4, 0.9)) == pytest.approx(0.4)


def test_slices_new_returning_users_items_and_genres():
    df = _frame()
    known_users = {f"u{k}" for k in range(25)}
    rep = evaluate(df, known_users=known_users, known_items={"i1", "i2"})
    s = rep.slices
    assert s["new_users"]["n"] + s["returning_users"]["n"] == len(df)
    assert s["returning_users"]["n"] == df.user_id.isin(known_users).sum()
    assert s["known_items"]["n"] == df.item_id.isin({"i1", "i2"}).sum()
    assert s["genre=Drama"]["n"] == df.item_genres.str.contains("Drama").sum()
    sub = df[df.item_genres.str.contains("Drama")]
    assert s["genre=Drama"]["auc"] == pytest.approx(roc_auc_score(sub.label, sub.score))
    json.dumps(rep.to_dict())  # JSON-safe, NaN → null


def test_bad_scores_and_missing_columns_are_refused():
    df = _frame(50)
    df.loc[7, "score"] = 1.5
    with pytest.raises(ValueError, match="row 7"):
        evaluate(df)
    with pytest.raises(ValueError, match="lacks column 'score'"):
        evaluate(df.drop(columns=["score"]))


def test_compare_is_candidate_minus_production():
    assert compare({"auc": 0.75, "logloss": 0.6, "n": 10}, {"auc": 0.7, "logloss": 0.65}) == pytest.approx(
        {"auc": 0.05, "logloss": -0.05}
    )


POLICY = BlessingSettings(
    min_auc=0.6, max_logloss=0.7, max_auc_drop=0.005, max_logloss_increase=0.01, max_calibration_error=0.1
)
GOOD = {"auc": 0.74, "logloss": 0.62, "ece": 0.03}


@pytest.mark.parametrize(
    ("name", "candidate", "production", "blessed", "failed"),
    [
        ("first model, good", GOOD, None, True, []),
        ("first model, below floor", {"auc": 0.55, "logloss": 0.69, "ece": 0.02}, None, False, ["auc_floor"]),
        ("first model, poorly calibrated", {**GOOD, "ece": 0.2}, None, False, ["calibration"]),
        ("better than production", GOOD, {"auc": 0.72, "logloss": 0.64}, True, []),
        ("slightly worse, within allowance", GOOD, {"auc": 0.744, "logloss": 0.615}, True, []),
        ("worse AUC", GOOD, {"auc": 0.76, "logloss": 0.62}, False, ["auc_vs_production"]),
        ("worse logloss", GOOD, {"auc": 0.74, "logloss": 0.6}, False, ["logloss_vs_production"]),
        (
            "worse on everything",
            {"auc": 0.58, "logloss": 0.75, "ece": 0.12},
            {"auc": 0.74, "logloss": 0.62},
            False,
            ["auc_floor", "logloss_ceiling", "calibration", "auc_vs_production", "logloss_vs_production"],
        ),
    ],
)
def test_blessing_policy(name, candidate, production, blessed, failed):
    verdict = bless(candidate, production, POLICY)
    assert verdict.blessed is blessed, name
    assert [c.name for c in verdict.checks if not c.passed] == failed
    assert len(verdict.checks) == (3 if production is None else 5)
    saved = json.loads(json.dumps(verdict.to_dict()))
    assert saved["blessed"] is blessed and saved["policy"]["min_auc"] == 0.6
    assert {c["name"]: c["value"] for c in saved["checks"]}["auc_floor"] == candidate["auc"]
    if not blessed:
        assert any(f in r for r in saved["reasons"] for f in failed)


@pytest.mark.parametrize(
    ("candidate", "production", "message"),
    [
        ({"auc": 0.7, "logloss": 0.6}, None, r"candidate metrics lack \['ece'\]"),
        (GOOD, {"auc": 0.7}, r"production metrics lack \['logloss'\]"),
        ({**GOOD, "auc": float("nan")}, None, "not finite"),
        ({**GOOD, "auc": None}, None, r"lack \['auc'\]"),
    ],
)
def test_blessing_refuses_missing_metrics(candidate, production, message):
    with pytest.raises(BlessingError, match=message):
        bless(candidate, production, POLICY)
