"""Argo Rollouts' analysis rules as the rehearsal applies them, and the rendered templates judged by them.

The rules are those of argo-rollouts ``utils/evaluate`` (a measurement from ``successCondition`` and
``failureCondition``; an expression error is an Error measurement) and ``analysis/analysis.go`` (a metric's
phase from its measurements: failureLimit, inconclusiveLimit, consecutiveErrorLimit, count; the run's
phase is the worst). Expressions are expr-lang's syntax; the Prometheus result is a list of floats, empty
when the query returned no samples — what the rehearsal's Prometheus stand-in always answers.
"""

from __future__ import annotations

import math

import pytest

from freshrec.cluster.rehearsal_prom import Expr, ExprError, assess_metric, evaluate_measurement, worst


@pytest.mark.parametrize(
    ("source", "result", "expected"),
    [
        ("len(result) == 0 || isNaN(result[0]) || result[0] <= 0.01", [], True),
        ("len(result) > 0 && !isNaN(result[0]) && result[0] <= 0.01", [], False),
        ("result[0] <= 100 and result[0] >= 0", [50.0], True),
        ("not (result[0] > 1)", [0.5], True),
        ("all(result, {# < 1})", [0.2, 0.9], True),
        ("any(result, {# > 1})", [0.2, 0.9], False),
        ("asInt(result[0]) == 3", [3.7], True),
        ("isNaN(result[0])", [math.nan], True),
        ("result[0] / 0 > 1e9", [1.0], True),
    ],
)
def test_expressions(source, result, expected):
    assert Expr(source)({"result": result, **_env()}) is expected


def _env():
    from freshrec.cluster.rehearsal_prom import condition_env

    return {k: v for k, v in condition_env(None).items() if k != "result"}


def test_index_out_of_range_and_bad_syntax_are_errors():
    with pytest.raises(ExprError, match="index out of range"):
        Expr("result[0] > 1")({"result": [], **_env()})
    with pytest.raises(ExprError):
        Expr("result[0] >")
    with pytest.raises(ExprError, match="unknown name"):
        Expr("results[0] > 1")({"result": [1.0], **_env()})


def test_measurements_follow_argo():
    both = {
        "successCondition": "len(result) > 0 && result[0] <= 1",
        "failureCondition": "len(result) > 0 && result[0] > 1",
    }
    assert evaluate_measurement(both, [])[0] == "Inconclusive"  # neither holds on no data
    assert evaluate_measurement(both, [0.5])[0] == "Successful"
    assert evaluate_measurement(both, [2.0])[0] == "Failed"
    only_success = {"successCondition": "result[0] <= 1"}
    assert evaluate_measurement(only_success, [2.0])[0] == "Failed"  # not success = failure
    phase, msg = evaluate_measurement(only_success, [])
    assert phase == "Error" and "no data returned from the metric provider" in msg
    assert evaluate_measurement({}, [])[0] == "Successful"


def test_metric_and_run_phases():
    metric = {"count": 5, "failureLimit": 1}
    assert assess_metric(metric, ["Successful", "Failed"]) == "Running"
    assert assess_metric(metric, ["Failed", "Failed"]) == "Failed"
    assert assess_metric(metric, ["Successful"] * 5) == "Successful"
    assert assess_metric(metric, ["Inconclusive"]) == "Inconclusive"  # inconclusiveLimit 0
    assert assess_metric(metric, ["Error"] * 5) == "Error"  # consecutiveErrorLimit 4
    assert worst(["Successful", "Inconclusive"]) == "Inconclusive"
    assert worst(["Inconclusive", "Failed"]) == "Failed"
