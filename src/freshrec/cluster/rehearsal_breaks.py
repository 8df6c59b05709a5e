"""Injected breaks: one rendered object changed per kind of mismatch the rehearsal must catch.

Each ``break_*`` edits the rendered documents of an overlay in place and returns two strings, one naming
each end of the connection it breaks; the rehearsal of the edited render must fail with a message that
names both (``freshrec rehearse --rows`` counts them as ``cluster rehearsal: injected breaks caught``).
They are chosen to be caught early — by the static checks, the platform stage or the first pod that uses
the object — so that running all of them stays short.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from freshrec.cluster.rehearsal_objects import pod_templates


def _obj(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _container(obj, name=None):
    cs = pod_templates(obj)["spec"]["containers"]
    return next(c for c in cs if name is None or c["name"] == name)


def break_subpath(docs):
    """The TF Serving pods read the model repository one folder off from where the push writes."""
    rollout = _obj(docs, "Rollout", "ctr-serving")
    for m in _container(rollout, "tfserving")["volumeMounts"]:
        if m["name"] == "models":
            m["subPath"] = "elsewhere"
    for m in _container(rollout, "model-config")["volumeMounts"]:
        if m["name"] == "models":
            m["subPath"] = "elsewhere"
    return ("ctr-serving", "model")


def break_configmap(docs):
    """The settings ConfigMap renamed: every envFrom reference to it dangles."""
    _obj(docs, "ConfigMap", "freshrec-settings")["metadata"]["name"] = "freshrec-settings-v2"
    return ("freshrec-settings", "freshrec-settings")


def break_namespace(docs):
    """One workload moved to a namespace nobody creates."""
    _obj(docs, "Deployment", "ranking-gateway")["metadata"]["namespace"] = "freshrec-staging"
    return ("ranking-gateway", "freshrec-staging")


def break_image(docs):
    """The gateway pinned to another build of the project image than the pipeline's."""
    c = _container(_obj(docs, "Deployment", "ranking-gateway"))
    c["image"] = c["image"].rsplit(":", 1)[0] + ":0.0.9"
    return ("ranking-gateway", "pipeline")


def break_empty_analysis(docs):
    """The old error-rate condition: an empty Prometheus result counts as a pass."""
    tpl = _obj(docs, "AnalysisTemplate", "ctr-serving-latency-errors")
    tpl["spec"]["metrics"][0]["successCondition"] = "len(result) == 0 || result[0] <= 0.01"
    tpl["spec"]["metrics"][0].pop("failureCondition", None)
    return ("Prometheus", "ctr-serving-latency-errors")


def break_rolebinding(docs):
    """The deployer binding names a Role that is not rendered."""
    _obj(docs, "Role", "freshrec-deployer")["metadata"]["name"] = "freshrec-deploy"
    return ("freshrec-deployer", "freshrec-deployer")


def break_role_verb(docs):
    """The deployer Role loses ``patch`` on the Rollout: the pipeline's rollout task cannot hand over."""
    role = _obj(docs, "Role", "freshrec-deployer")
    for rule in role["rules"]:
        if "rollouts" in rule["resources"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "patch"]
    return ("freshrec-pipeline", "ctr-serving")


def break_pvc(docs):
    """The model claim renamed: the Rollout's volume names a claim that does not exist."""
    _obj(docs, "PersistentVolumeClaim", "freshrec-models")["metadata"]["name"] = "freshrec-model-store"
    return ("ctr-serving", "freshrec-models")


def break_service_port(docs):
    """The stream feature job's metrics Service points at a container port nobody listens on."""
    svc = _obj(docs, "Service", "freshrec-stream-features")
    for port in svc["spec"]["ports"]:
        port["targetPort"] = "http-metrics"
    return ("freshrec-stream-features", "http-metrics")


BREAKS = {
    "namespace": break_namespace,
    "image": break_image,
    "empty-analysis": break_empty_analysis,
    "rbac-reference": break_rolebinding,
    "rbac-verb": break_role_verb,
    "configmap": break_configmap,
    "pvc": break_pvc,
    "path": break_subpath,
    "service-port": break_service_port,
}


def rehearse_breaks(
    docs: list[dict[str, Any]], work_root: Path, bootstrap: Path, overlay: str = "local"
) -> list[dict[str, Any]]:
    """Rehearse ``docs`` once per break; for each: kind, both ends, caught (failed naming both), failure."""
    from freshrec.cluster.rehearsal import Rehearsal

    out = []
    for kind, fn in sorted(BREAKS.items()):
        broken = copy.deepcopy(docs)
        one_end, other_end = fn(broken)
        report = Rehearsal(overlay, docs=broken, work_root=work_root / kind, bootstrap_cache=bootstrap).run()
        f = report.failure or {}
        ends = f"{f.get('writer')} | {f.get('reader')} | {f.get('detail')}"
        caught = (
            not report.ok and f.get("kind") != "rehearsal-error" and one_end in ends and other_end in ends
        )
        out.append({"kind": kind, "ends": (one_end, other_end), "caught": caught, "failure": f,
                    "wall_s": report.wall_s, "summary": report.summary()})  # fmt: skip
    return out
