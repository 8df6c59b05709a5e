"""The canary plan: YAML round trip, validation errors, and the Argo rendering."""

from __future__ import annotations

import pytest
import yaml

from freshrec.rollout.plan import (
    JOB_TEMPLATE,
    PROMETHEUS_TEMPLATE,
    AnalysisStep,
    CanaryPlan,
    PauseStep,
    SetWeightStep,
    default_plan,
    load_plan,
)


def test_default_plan_shape():
    plan = default_plan()
    weights = [s.set_weight for s in plan.steps if isinstance(s, SetWeightStep)]
    assert weights == [10, 50, 100]
    kinds = [type(s).__name__ for s in plan.steps]
    # Every weight below 100 is followed by a pause and an analysis before the next weight.
    assert kinds == ["SetWeightStep", "PauseStep", "AnalysisStep"] * 2 + ["SetWeightStep"]


def test_yaml_round_trip(tmp_path):
    plan = CanaryPlan.default()
    path = tmp_path / "plan.yaml"
    path.write_text(plan.to_yaml())
    assert load_plan(path) == plan
    assert load_plan(None) == plan


def test_load_custom_plan(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "steps": [
                    {"set_weight": 5},
                    {"pause": {"duration_s": 60, "until_clicks": 30}},
                    {"analysis": {"checks": ["logloss", "ctr"]}},
                ]
            }
        )
    )
    plan = load_plan(path)
    assert isinstance(plan.steps[1], PauseStep) and plan.steps[1].pause.until_clicks == 30
    assert isinstance(plan.steps[2], AnalysisStep) and plan.steps[2].analysis.checks == ("logloss", "ctr")
    argo = plan.to_argo_steps()
    assert argo[0] == {"setWeight": 5}
    assert argo[1] == {"pause": {"duration": "60s"}}
    # Only the online-quality Job: no Prometheus check was asked for.
    assert argo[2]["analysis"]["templates"] == [{"templateName": JOB_TEMPLATE}]
    assert {"name": "checks", "value": "logloss,ctr"} in argo[2]["analysis"]["args"]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"set_weight": 150}, {"analysis": {}}], "less than or equal to 100"),
        ([{"set_weight": 10}, {"pause": {"until_clicks": 10}}, {"analysis": {}}], "duration_s"),
        ([{"set_weight": 10}, {"analysis": {"checks": ["auc"]}}], "auc"),
        ([{"set_weight": 10}, {"analysis": {"checks": []}}], "at least one check"),
        ([{"set_weight": 10}], "at least one analysis step"),
        ([{"set_weight": 0}, {"analysis": {}}], "weight above 0"),
        ([{"set_weight": 10}, {"setWeight": 20}, {"analysis": {}}], "steps.1"),
    ],
)
def test_invalid_plans_name_the_problem(tmp_path, steps, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"steps": steps}))
    with pytest.raises(ValueError, match=message) as info:
        load_plan(path)
    assert str(path) in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_plan(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- set_weight: 10\n")
    with pytest.raises(ValueError, match="mapping"):
        load_plan(bad)


def test_argo_rendering_of_default_plan():
    argo = default_plan().to_argo_steps()
    assert [next(iter(s)) for s in argo] == [
        "setWeight",
        "pause",
        "analysis",
        "setWeight",
        "pause",
        "analysis",
        "setWeight",
    ]
    analysis = argo[2]["analysis"]
    assert analysis["templates"] == [{"templateName": PROMETHEUS_TEMPLATE}, {"templateName": JOB_TEMPLATE}]
    args = {a["name"]: a for a in analysis["args"]}
    assert args["canary-hash"]["valueFrom"] == {"podTemplateHashValue": "Latest"}
    assert args["stable-hash"]["valueFrom"] == {"podTemplateHashValue": "Stable"}
    assert "freshrec.io/model-version" in args["canary-version"]["valueFrom"]["fieldRef"]["fieldPath"]
