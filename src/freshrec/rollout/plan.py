"""The canary plan: one declarative list of steps shared by the local controller and Argo Rollouts.

A plan is written once (YAML or :func:`default_plan`) and used twice: the
:class:`~freshrec.rollout.controller.LocalCanaryController` walks it on the local gateway's weights, and
:meth:`CanaryPlan.to_argo_steps` renders it as the ``spec.strategy.canary.steps`` of the TF Serving
``Rollout`` in ``manifests/base``. A test keeps the manifest equal to the default plan's rendering.

YAML form::

    steps:
      - set_weight: 10
      - pause: {duration_s: 300, until_clicks: 200}
      - analysis: {checks: [error_rate, latency_p99, score_shift, logloss, ctr]}
      - set_weight: 100
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CheckName = Literal["error_rate", "latency_p99", "score_shift", "logloss", "ctr"]
ALL_CHECKS: tuple[str, ...] = ("error_rate", "latency_p99", "score_shift", "logloss", "ctr")
# Checks measured by Prometheus from TF Serving's own metrics vs. checks that need predictions joined
# with clicks (run in the cluster as a Job executing `freshrec rollout analyze`).
PROMETHEUS_CHECKS: frozenset[str] = frozenset({"error_rate", "latency_p99"})
JOB_CHECKS: frozenset[str] = frozenset({"score_shift", "logloss", "ctr"})
# AnalysisTemplate names in manifests/base/rollout/analysistemplates.yaml.
PROMETHEUS_TEMPLATE = "ctr-serving-latency-errors"
JOB_TEMPLATE = "ctr-serving-online-quality"
# Where the Rollout carries the model version (see freshrec.rollout.k8s.MODEL_VERSION_ANNOTATION).
CANARY_VERSION_FIELD = "spec.template.metadata.annotations['freshrec.io/model-version']"
# The Service Prometheus scrapes TF Serving through (its `service` label in the analysis queries).
METRICS_SERVICE = "ctr-serving-metrics"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PauseSpec(_Strict):
    """Wait before the next step: a fixed time, or until enough clicks (at most ``duration_s``)."""

    # Always required, also with until_clicks (then it is the maximum wait): Argo cannot count clicks,
    # and an unbounded pause would stall a rollout that gets no traffic forever.
    duration_s: float = Field(gt=0)
    until_clicks: int | None = Field(default=None, gt=0)


class AnalysisSpec(_Strict):
    """Compare canary with stable on these checks (all by default)."""

    checks: tuple[CheckName, ...] = ALL_CHECKS

    @model_validator(mode="after")
    def _non_empty(self) -> AnalysisSpec:
        if not self.checks:
            raise ValueError("analysis needs at least one check")
        return self


class SetWeightStep(_Strict):
    set_weight: int = Field(ge=0, le=100)


class PauseStep(_Strict):
    pause: PauseSpec


class AnalysisStep(_Strict):
    analysis: AnalysisSpec


Step = SetWeightStep | PauseStep | AnalysisStep


class CanaryPlan(_Strict):
    """An ordered list of canary steps. Reaching the end of the list promotes the canary."""

    steps: tuple[Step, ...]

    @model_validator(mode="after")
    def _starts_with_weight(self) -> CanaryPlan:
        if not self.steps:
            raise ValueError("a canary plan needs at least one step")
        weights = [s.set_weight for s in self.steps if isinstance(s, SetWeightStep)]
        if not weights or weights[0] == 0:
            raise ValueError("a canary plan needs a set_weight step with a weight above 0")
        if not any(isinstance(s, AnalysisStep) for s in self.steps):
            raise ValueError("a canary plan needs at least one analysis step")
        return self

    @classmethod
    def default(cls) -> CanaryPlan:
        """10 % → wait → analyse → 50 % → wait → analyse → 100 %."""
        return cls(
            steps=(
                SetWeightStep(set_weight=10),
                PauseStep(pause=PauseSpec(duration_s=300, until_clicks=200)),
                AnalysisStep(analysis=AnalysisSpec()),
                SetWeightStep(set_weight=50),
                PauseStep(pause=PauseSpec(duration_s=600, until_clicks=500)),
                AnalysisStep(analysis=AnalysisSpec()),
                SetWeightStep(set_weight=100),
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form (unset fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_argo_steps(
        self,
        prometheus_template: str = PROMETHEUS_TEMPLATE,
        job_template: str = JOB_TEMPLATE,
        metrics_service: str = METRICS_SERVICE,
    ):
        """Render the plan as Argo Rollouts ``spec.strategy.canary.steps``.

        ``pause.until_clicks`` has no Argo equivalent: the pause lasts ``duration_s`` and the next
        analysis passes it as ``min-clicks`` to the analysis Job, which waits (``--max-wait-s``) until each
        arm has that many clicks before it judges. An analysis step runs the Prometheus template for the
        error/latency checks and the Job template for the online-quality checks; the namespace comes from the
        Rollout itself (``metadata.namespace``), so a kustomize ``namespace:`` moves the queries with it.
        """
        out: list[dict[str, Any]] = []
        clicks = 0
        for step in self.steps:
            if isinstance(step, SetWeightStep):
                out.append({"setWeight": step.set_weight})
            elif isinstance(step, PauseStep):
                out.append({"pause": {"duration": f"{int(step.pause.duration_s)}s"}})
                clicks = step.pause.until_clicks or 0
            else:
                checks = list(step.analysis.checks)
                templates = []
                if PROMETHEUS_CHECKS.intersection(checks):
                    templates.append({"templateName": prometheus_template})
                if JOB_CHECKS.intersection(checks):
                    templates.append({"templateName": job_template})
                out.append(
                    {
                        "analysis": {
                            "templates": templates,
                            "args": [
                                {"name": "checks", "value": ",".join(checks)},
                                {"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}},
                                {"name": "stable-hash", "valueFrom": {"podTemplateHashValue": "Stable"}},
                                {
                                    "name": "namespace",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                                },
                                {"name": "service", "value": metrics_service},
                                # The analysis Job splits joined predictions by this model version.
                                {
                                    "name": "canary-version",
                                    "valueFrom": {"fieldRef": {"fieldPath": CANARY_VERSION_FIELD}},
                                },
                                {"name": "min-clicks", "value": str(clicks)},
                            ],
                        }
                    }
                )
                clicks = 0
        return out


def default_plan() -> CanaryPlan:
    """The plan used when ``settings.rollout.plan_file`` is not set."""
    return CanaryPlan.default()


def load_plan(path: Path | str | None) -> CanaryPlan:
    """Load a plan from YAML, or the default plan when ``path`` is None.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a valid plan (the message names the file and the bad step).
    """
    if path is None:
        return default_plan()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"canary plan file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"canary plan {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"canary plan {path} must be a mapping with a 'steps' list")
    try:
        return CanaryPlan.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"canary plan {path} is invalid: {exc}") from exc
