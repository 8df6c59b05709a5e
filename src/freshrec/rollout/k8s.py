"""Cluster mode: drive the Argo Rollouts ``Rollout`` of TF Serving with the official ``kubernetes`` client.

A model version reaches the cluster as a change of the Rollout's pod template: the annotation
``freshrec.io/model-version`` (read by the pods through the downward API, which renders TF Serving's
model config for that version). Argo Rollouts sees a new pod template hash and starts the canary that the
Rollout's ``spec.strategy.canary.steps`` describe (rendered from the same :class:`CanaryPlan` the local
controller uses). This module patches the template, follows ``status`` until the rollout is Healthy
(promoted), Degraded/aborted (rolled back) or Paused, and offers the promote/abort actions that
``kubectl argo rollouts`` performs (the same patches on the ``status`` subresource).

It also loads CRD ``openAPIV3Schema``s so objects can be validated before they are written
(:func:`load_crd_schemas`, :func:`validate_custom_object`), which the manifest tests use too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

GROUP = "argoproj.io"
VERSION = "v1alpha1"
ROLLOUTS = "rollouts"
ANALYSIS_RUNS = "analysisruns"
MODEL_VERSION_ANNOTATION = "freshrec.io/model-version"

Outcome = Literal["promoted", "aborted", "paused"]


class RolloutTimeout(TimeoutError):
    """The rollout did not settle within the time allowed."""


class ClusterError(RuntimeError):
    """The cluster cannot be reached or refused a request; the message is one line a person can act on."""


def explain_api_error(exc: BaseException) -> str | None:
    """One line for a Kubernetes API failure (unreachable, 401/403/404 ...); None if ``exc`` is not one."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        reason = ""
        try:
            import json

            reason = json.loads(exc.body or "{}").get("message", "")
        except (ValueError, TypeError):
            reason = (exc.body or "")[:200] if isinstance(exc.body, str) else ""
        what = {
            401: "not authenticated (check the kubeconfig's credentials)",
            403: "forbidden: the identity lacks a verb on this object (see the freshrec-deployer Role)",
            404: "not found (is Argo Rollouts installed, and is this the namespace of the Rollout?)",
        }.get(exc.status, f"HTTP {exc.status} {exc.reason}")
        return f"Kubernetes API: {what}" + (f": {reason}" if reason else "")
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | OSError):
        return f"Kubernetes API unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


@dataclass(frozen=True)
class RolloutStatus:
    """The parts of ``Rollout.status`` a deploy step acts on."""

    phase: str | None
    message: str
    generation: int | None
    observed_generation: int | None
    current_step_index: int | None
    steps: int
    aborted: bool
    paused: bool
    analysis_status: str | None
    analysis_run: str | None
    stable_rs: str | None
    current_pod_hash: str | None
    model_version: str | None
    canary_weight: int | None = None

    @property
    def observed(self) -> bool:
        """The controller has seen the latest spec (otherwise the phase is stale)."""
        return self.generation is not None and self.observed_generation == self.generation

    @property
    def completed(self) -> bool:
        """Healthy and fully promoted: the current pods are the stable pods."""
        return (
            self.observed
            and self.phase == "Healthy"
            and not self.aborted
            and self.stable_rs is not None
            and self.stable_rs == self.current_pod_hash
        )

    @classmethod
    def from_object(cls, obj: dict[str, Any], annotation: str = MODEL_VERSION_ANNOTATION) -> RolloutStatus:
        st = obj.get("status") or {}
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        steps = ((spec.get("strategy") or {}).get("canary") or {}).get("steps") or []
        analysis = (st.get("canary") or {}).get("currentStepAnalysisRunStatus") or {}
        annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
        return cls(
            phase=st.get("phase"),
            message=st.get("message", ""),
            generation=_int_or_none(meta.get("generation")),
            observed_generation=_int_or_none(st.get("observedGeneration")),
            current_step_index=st.get("currentStepIndex"),
            steps=len(steps),
            aborted=bool(st.get("abort")),
            paused=bool(st.get("pauseConditions")) or bool(spec.get("paused")),
            analysis_status=analysis.get("status"),
            analysis_run=analysis.get("name"),
            stable_rs=st.get("stableRS"),
            current_pod_hash=st.get("currentPodHash"),
            model_version=annotations.get(annotation),
            canary_weight=_int_or_none(
                ((st.get("canary") or {}).get("weights") or {}).get("canary", {}).get("weight")
            ),
        )


def _int_or_none(x: Any) -> int | None:
    # Argo stores status.observedGeneration as a string.
    try:
        return None if x is None else int(x)
    except (TypeError, ValueError):
        return None


def make_api_client(
    host: str | None = None, kubeconfig: str | None = None, context: str | None = None
) -> Any:
    """A ``kubernetes.client.ApiClient``: explicit host, else in-cluster config, else kubeconfig.

    Raises:
        ClusterError: no in-cluster service account and no usable kubeconfig.
    """
    from kubernetes import client, config

    if host:
        cfg = client.Configuration()
        cfg.host = host
        return client.ApiClient(cfg)
    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    import os

    # Read $KUBECONFIG now: the client library reads it once, when it is first imported.
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
    try:
        config.load_kube_config(config_file=kubeconfig, context=context)
    except (config.ConfigException, OSError) as exc:
        where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
        raise ClusterError(
            f"no Kubernetes credentials: not in a pod with a service account, and {where} is missing or "
            f"unusable ({str(exc).splitlines()[0][:160]}); pass --kubeconfig/--context or --api-server"
        ) from None
    return client.ApiClient()


class ArgoRolloutDriver:
    """Deploys model versions to an Argo Rollouts ``Rollout`` and follows it."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        name: str,
        *,
        annotation: str = MODEL_VERSION_ANNOTATION,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.name = name
        self.annotation = annotation
        self.clock = clock
        self.sleep = sleep

    def get(self) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, ROLLOUTS, self.name)

    def status(self) -> RolloutStatus:
        return RolloutStatus.from_object(self.get(), self.annotation)

    def deploy(self, version: int) -> RolloutStatus:
        """Set the model version on the pod template, which starts a canary of that version.

        A merge patch on one annotation: it leaves the rest of the template (and other writers' fields)
        alone, and patching the same version twice is a no-op for Argo (same pod template hash).
        """
        if int(version) < 1:
            raise ValueError(f"model version must be a positive integer, got {version!r}")
        body = {"spec": {"template": {"metadata": {"annotations": {self.annotation: str(int(version))}}}}}
        obj = self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, ROLLOUTS, self.name, body
        )
        log.info(
            "rollout %s/%s: model version %s deployed (generation %s)",
            self.namespace,
            self.name,
            version,
            obj["metadata"].get("generation"),
        )
        return RolloutStatus.from_object(obj, self.annotation)

    def promote(self, full: bool = False) -> None:
        """Resume a paused canary (next step), or skip all remaining steps with ``full=True``."""
        if full:
            self._patch_status({"status": {"promoteFull": True}})
            return
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, ROLLOUTS, self.name, {"spec": {"paused": False}}
        )
        self._patch_status({"status": {"pauseConditions": None}})

    def abort(self) -> None:
        """Send all traffic back to stable and scale the canary down (Argo sets phase Degraded)."""
        self._patch_status({"status": {"abort": True}})

    def analysis_run(self, name: str) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, ANALYSIS_RUNS, name)

    def _patch_status(self, body: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, ROLLOUTS, self.name, body
        )

    def wait(
        self,
        version: int | None = None,
        timeout_s: float = 1800.0,
        poll_s: float = 5.0,
        stop_on_pause: bool = False,
        on_status: Callable[[RolloutStatus], None] | None = None,
    ) -> tuple[Outcome, RolloutStatus]:
        """Poll until the rollout completes (promoted), is aborted/Degraded, or (optionally) pauses.

        Raises:
            RolloutTimeout: not settled after ``timeout_s``; the message carries the last status.
        """
        deadline = self.clock() + timeout_s
        last: RolloutStatus | None = None
        while True:
            st = self.status()
            if st != last and on_status:
                on_status(st)
            last = st
            if version is not None and st.model_version != str(int(version)):
                # Someone deployed another version meanwhile: this deploy can no longer succeed.
                return "aborted", st
            if st.observed:
                if st.aborted or st.phase == "Degraded":
                    return "aborted", st
                if st.completed:
                    return "promoted", st
                if stop_on_pause and st.phase == "Paused":
                    return "paused", st
            if self.clock() >= deadline:
                raise RolloutTimeout(
                    f"rollout {self.namespace}/{self.name} not settled after {timeout_s:g} s: phase={st.phase} "
                    f"step={st.current_step_index}/{st.steps} analysis={st.analysis_status} message={st.message!r}"
                )
            self.sleep(poll_s)

    def deploy_and_wait(
        self,
        version: int,
        timeout_s: float = 1800.0,
        poll_s: float = 5.0,
        on_status: Callable[[RolloutStatus], None] | None = None,
    ) -> tuple[Outcome, RolloutStatus]:
        """Deploy ``version`` and follow it to promotion or abort (aborting it on timeout)."""
        self.deploy(version)
        try:
            return self.wait(version, timeout_s=timeout_s, poll_s=poll_s, on_status=on_status)
        except RolloutTimeout:
            # Leave the last good state serving rather than a half-analysed canary.
            self.abort()
            raise


# --- CRD schemas -----------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Close objects the way the API server prunes them: unknown fields become validation errors.

    A structural CRD schema drops unknown fields silently on write; in tests we want a typo such as
    ``setweight`` to fail loudly instead, so every object with ``properties`` that does not preserve
    unknown fields gets ``additionalProperties: false``.
    """
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def load_crd_schemas(paths: Iterable[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(apiVersion, kind): openAPIV3Schema}`` for every served version of the CRDs in ``paths``."""
    import yaml

    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in paths:
        # The C loader: the CRD files are large (the HTTPRoute CRD alone is 400 kB).
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        for doc in yaml.load_all(Path(path).read_text(), Loader=loader):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for v in doc["spec"]["versions"]:
                if v.get("served", True) and "schema" in v:
                    out[(f"{group}/{v['name']}", kind)] = _strict(v["schema"]["openAPIV3Schema"])
    return out


def validate_custom_object(obj: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Validate ``obj`` against its CRD schema.

    Raises:
        KeyError: no CRD schema for the object's apiVersion/kind.
        ValueError: the object does not match; the message names the object and the field path.
    """
    import jsonschema

    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    if key not in schemas:
        raise KeyError(f"no CRD schema for {key[0]} {key[1]}")
    # The CRD schema leaves metadata as a plain object: the API server validates it itself.
    validator = jsonschema.Draft7Validator(schemas[key])
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        name = (obj.get("metadata") or {}).get("name", "?")
        lines = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors[:10]]
        raise ValueError(f"{key[1]} {name} does not match the {key[0]} CRD schema:\n  " + "\n  ".join(lines))
