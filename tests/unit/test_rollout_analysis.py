"""Canary analysis, table-driven: each case builds both arms from known click probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from freshrec.config import RolloutSettings
from freshrec.rollout.analysis import ArmStats, analyze, split_arms

SETTINGS = RolloutSettings()


def arm(
    name: str, n: int, seed: int, *, score: str = "true", ctr_scale: float = 1.0, version: int = 1
) -> pd.DataFrame:
    """``n`` predictions of one arm. Labels are drawn from known probabilities p; the model's score is
    ``true`` (= p), ``noisy`` (p blurred), ``inverted`` (1 - p) or ``constant`` (0.5)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 5, size=n) * ctr_scale
    label = (rng.random(n) < p).astype("int8")
    scores = {
        "true": p,
        "noisy": np.clip(p + rng.normal(0, 0.15, n), 0.01, 0.99),
        "inverted": 1 - p,
        "constant": np.full(n, 0.5),
    }[score]
    return pd.DataFrame(
        {"arm": name, "model_version": version, "score": scores, "label": pd.array(label, dtype="Int8")}
    )


def joined(stable: pd.DataFrame, canary: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([stable, canary], ignore_index=True)


GOOD_STATS = {
    "stable": {"requests": 2000, "errors": 2, "latency_p50_ms": 5.0, "latency_p99_ms": 20.0},
    "canary": {"requests": 500, "errors": 0, "latency_p50_ms": 5.0, "latency_p99_ms": 22.0},
}

CASES = {
    # name: (stable frame, canary frame, stats, expected verdict, {check: expected status})
    "clear win": (
        arm("stable", 4000, 1, score="noisy"),
        arm("canary", 4000, 2, score="true", version=2),
        GOOD_STATS,
        "pass",
        {
            "logloss": "pass",
            "ctr": "pass",
            "score_shift": "pass",
            "error_rate": "pass",
            "latency_p99": "pass",
        },
    ),
    "clear loss (inverted scores)": (
        arm("stable", 4000, 3),
        arm("canary", 4000, 4, score="inverted", version=2),
        GOOD_STATS,
        "fail",
        {"logloss": "fail", "score_shift": "fail"},
    ),
    "too few clicks": (
        arm("stable", 60, 5),
        arm("canary", 60, 6, score="noisy", version=2),
        GOOD_STATS,
        "inconclusive",
        {"logloss": "inconclusive", "ctr": "inconclusive"},
    ),
    "high error rate": (
        arm("stable", 4000, 7),
        arm("canary", 4000, 8, version=2),
        {**GOOD_STATS, "canary": {"requests": 500, "errors": 40, "latency_p99_ms": 20.0}},
        "fail",
        {"error_rate": "fail", "logloss": "pass"},
    ),
    "slow canary": (
        arm("stable", 4000, 9),
        arm("canary", 4000, 10, version=2),
        {**GOOD_STATS, "canary": {"requests": 500, "errors": 0, "latency_p99_ms": 250.0}},
        "fail",
        {"latency_p99": "fail", "error_rate": "pass"},
    ),
    "CTR drop": (
        arm("stable", 6000, 11),
        arm("canary", 6000, 12, ctr_scale=0.6, version=2),
        GOOD_STATS,
        "fail",
        {"ctr": "fail"},
    ),
    "few canary requests": (
        arm("stable", 4000, 13),
        arm("canary", 4000, 14, version=2),
        {**GOOD_STATS, "canary": {"requests": 20, "errors": 0, "latency_p99_ms": 20.0}},
        "inconclusive",
        {"error_rate": "inconclusive"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_analysis_table(case):
    stable, canary, stats, verdict, statuses = CASES[case]
    result = analyze(joined(stable, canary), stats, SETTINGS)
    got = {c.name: c.status for c in result.checks}
    assert result.verdict == verdict, (case, result.to_dict())
    for name, status in statuses.items():
        assert got[name] == status, (case, name, result.check(name).detail)
    if verdict != "pass":
        assert result.reasons


def test_logloss_worse_but_not_significant_is_inconclusive():
    """A canary whose logloss is beyond the margin on a small sample is not failed on noise."""
    s = RolloutSettings(min_clicks=20)
    stable, canary = arm("stable", 300, 21), arm("canary", 300, 22, score="noisy", version=2)
    result = analyze(joined(stable, canary), None, s, ["logloss"])
    c = result.check("logloss")
    assert c.canary - c.stable > s.max_logloss_increase
    assert c.p_value >= s.alpha
    assert c.status == "inconclusive" and result.verdict == "inconclusive"
    # The same effect on a large sample is significant.
    big = analyze(
        joined(arm("stable", 20000, 23), arm("canary", 20000, 24, score="noisy", version=2)),
        None,
        s,
        ["logloss"],
    )
    assert big.check("logloss").status == "fail"


def test_constant_scores_fail_score_shift():
    result = analyze(
        joined(arm("stable", 2000, 31), arm("canary", 2000, 32, score="constant")),
        None,
        SETTINGS,
        ["score_shift"],
    )
    assert result.verdict == "fail"
    assert result.check("score_shift").canary == pytest.approx(0.5)


def test_error_rate_fails_early_when_the_limit_is_already_exceeded():
    """5 errors in 10 requests is over 1 % of even min_requests: fail now, do not wait."""
    result = analyze(None, {"canary": {"requests": 10, "errors": 5}}, SETTINGS, ["error_rate"])
    assert result.verdict == "fail"


def test_unlabelled_predictions_are_ignored_and_nothing_measured_is_inconclusive():
    frame = joined(arm("stable", 4000, 41), arm("canary", 4000, 42, version=2))
    frame["label"] = pd.array([pd.NA] * len(frame), dtype="Int8")
    result = analyze(frame, None, SETTINGS)
    assert result.verdict == "inconclusive"
    assert result.counts["canary"]["predictions"] == 0
    # No data source at all: skipped checks only, which is not a pass.
    assert analyze(None, None, SETTINGS, ["error_rate", "latency_p99"]).verdict == "inconclusive"


def test_split_by_model_version():
    frame = joined(arm("stable", 100, 51, version=3), arm("canary", 100, 52, version=4))
    frame["arm"] = "unknown"  # in the cluster the arm is the pod, not logged
    arms = split_arms(frame, canary_version=4)
    assert len(arms["canary"]) == 100 and len(arms["stable"]) == 100
    with pytest.raises(ValueError, match="model_version"):
        split_arms(frame.drop(columns="model_version"), canary_version=4)


def test_unknown_check_and_to_dict():
    with pytest.raises(ValueError, match="auc"):
        analyze(None, None, SETTINGS, ["auc"])
    result = analyze(
        joined(arm("stable", 4000, 61), arm("canary", 4000, 62)),
        {"canary": ArmStats(500, 0, 5.0, 20.0)},
        SETTINGS,
    )
    d = result.to_dict()
    assert d["verdict"] == "pass"
    assert {c["name"] for c in d["checks"]} == {"error_rate", "latency_p99", "score_shift", "logloss", "ctr"}
    assert all(c["passed"] is True for c in d["checks"])
    assert d["counts"]["canary"]["requests"] == 500


def clustered_arm(name: str, clicking_requests: int, requests: int = 60, items: int = 20) -> pd.DataFrame:
    """Every item of a request has the same outcome: the extreme of correlated impressions."""
    label = np.repeat((np.arange(requests) < clicking_requests).astype("int8"), items)
    return pd.DataFrame(
        {
            "arm": name,
            "request_id": np.repeat([f"{name}-r{i}" for i in range(requests)], items),
            "score": np.full(requests * items, 0.45),
            "label": pd.array(label, dtype="Int8"),
        }
    )


def test_ctr_test_accounts_for_requests():
    """A 20 % CTR drop over 60 requests per arm is significant only if 1200 rows were independent."""
    frame = joined(clustered_arm("stable", 30), clustered_arm("canary", 24))
    clustered = analyze(frame, None, SETTINGS, ["ctr"]).check("ctr")
    naive = analyze(frame.drop(columns="request_id"), None, SETTINGS, ["ctr"]).check("ctr")
    assert clustered.canary == pytest.approx(0.4) and clustered.stable == pytest.approx(0.5)
    assert naive.status == "fail" and naive.p_value < 0.01
    assert clustered.status == "inconclusive" and clustered.p_value > SETTINGS.alpha


def test_cluster_se_of_singletons_is_the_iid_se():
    from freshrec.rollout.analysis import mean_and_se

    v = np.random.default_rng(0).normal(size=500)
    m1, se1 = mean_and_se(v)
    m2, se2 = mean_and_se(v, np.arange(500))
    assert m1 == pytest.approx(m2) and se1 == pytest.approx(se2)
    assert se1 == pytest.approx(v.std(ddof=1) / np.sqrt(500))
