"""The rendered objects of a rehearsal: load, index, resolve references the way Kubernetes does.

Everything here works on plain dicts as ``kubectl kustomize`` prints them. A reference that Kubernetes
would refuse at pod creation (a ConfigMap, Secret, PersistentVolumeClaim or ServiceAccount that does not
exist in the pod's namespace, a key missing from a ConfigMap) raises :class:`Broken`, whose message names
both ends: the object that refers and the object it refers to.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# kind -> (apiVersion group, plural, namespaced) for the built-in kinds a rehearsal meets.
BUILTIN_KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("", "namespaces", False),
    "ServiceAccount": ("", "serviceaccounts", True),
    "ConfigMap": ("", "configmaps", True),
    "Secret": ("", "secrets", True),
    "Service": ("", "services", True),
    "Pod": ("", "pods", True),
    "PersistentVolumeClaim": ("", "persistentvolumeclaims", True),
    "Endpoints": ("", "endpoints", True),
    "Event": ("", "events", True),
    "Deployment": ("apps", "deployments", True),
    "StatefulSet": ("apps", "statefulsets", True),
    "DaemonSet": ("apps", "daemonsets", True),
    "ReplicaSet": ("apps", "replicasets", True),
    "Job": ("batch", "jobs", True),
    "CronJob": ("batch", "cronjobs", True),
    "Role": ("rbac.authorization.k8s.io", "roles", True),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings", True),
    "ClusterRole": ("rbac.authorization.k8s.io", "clusterroles", False),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io", "clusterrolebindings", False),
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies", True),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets", True),
    "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers", True),
    "CustomResourceDefinition": ("apiextensions.k8s.io", "customresourcedefinitions", False),
}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Rollout", "Job", "CronJob")


class Broken(Exception):
    """A connection that does not meet. ``ends`` names both sides; ``kind`` classifies the break."""

    def __init__(self, kind: str, writer: str, reader: str, detail: str) -> None:
        super().__init__(f"[{kind}] {writer} -> {reader}: {detail}")
        self.kind = kind
        self.writer = writer
        self.reader = reader
        self.detail = detail


def ref(obj: dict[str, Any]) -> str:
    """``Kind ns/name`` of an object (for messages)."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}"


def kustomize(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize PATH`` as a list of objects.

    Raises:
        RuntimeError: kubectl is missing or the build fails (its stderr is in the message).
    """
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is not on PATH: the rehearsal builds overlays with `kubectl kustomize`")
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{proc.stderr.strip()}")
    return load_yaml_documents(proc.stdout)


def load_yaml_documents(text: str) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(text, Loader=loader) if d]


@dataclass(frozen=True)
class KindInfo:
    group: str
    version: str
    plural: str
    namespaced: bool


class Objects:
    """The rendered objects by (kind, namespace, name), with Kubernetes' lookups."""

    def __init__(self, docs: Iterable[dict[str, Any]], crd_files: Iterable[Path] = ()) -> None:
        self.kinds: dict[str, KindInfo] = {
            k: KindInfo(g, "v1", p, n) for k, (g, p, n) in BUILTIN_KINDS.items()
        }
        for path in crd_files:
            for crd in load_yaml_documents(Path(path).read_text()):
                if crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                served = [v["name"] for v in spec["versions"] if v.get("served", True)]
                self.kinds[spec["names"]["kind"]] = KindInfo(
                    spec["group"], served[0], spec["names"]["plural"], spec.get("scope") == "Namespaced"
                )
        self.by_key: dict[tuple[str, str, str], dict[str, Any]] = {}
        for doc in docs:
            self.add(doc)

    def add(self, doc: dict[str, Any]) -> None:
        meta = doc.setdefault("metadata", {})
        info = self.kinds.get(doc.get("kind", ""))
        if info is not None and info.namespaced:
            meta.setdefault("namespace", "default")
        self.by_key[(doc["kind"], meta.get("namespace") or "", meta["name"])] = doc

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self.by_key.values()))

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [o for o in self.by_key.values() if o["kind"] in kinds]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.by_key.get((kind, namespace or "", name))

    def require(self, kind: str, namespace: str, name: str, referrer: str, what: str) -> dict[str, Any]:
        """The object, or :class:`Broken` naming the referrer and what it looked for."""
        obj = self.get(kind, namespace, name)
        if obj is None:
            near = sorted(f"{ns}/{n}" for k, ns, n in self.by_key if k == kind)
            raise Broken(
                "missing-reference",
                referrer,
                f"{kind} {namespace}/{name}",
                f"{what} refers to {kind} {name!r} in namespace {namespace!r}, which the render does not "
                f"contain (it has: {', '.join(near) or 'none'})",
            )
        return obj

    def namespaces(self) -> set[str]:
        out = {o["metadata"]["name"] for o in self.of_kind("Namespace")}
        return out | {ns for _, ns, _ in self.by_key if ns}


def pod_templates(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template (``{metadata, spec}``) of a workload object, or None."""
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Rollout", "Job", "ReplicaSet"):
        return spec.get("template")
    if kind == "CronJob":
        return ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
    if kind == "Pod":
        return {"metadata": obj.get("metadata", {}), "spec": spec}
    return None


def config_data(obj: dict[str, Any]) -> dict[str, bytes]:
    """A ConfigMap's or Secret's data as bytes per key (Secret ``data`` is base64, ``stringData`` plain)."""
    out: dict[str, bytes] = {}
    if obj["kind"] == "Secret":
        for k, v in (obj.get("data") or {}).items():
            out[k] = base64.b64decode(v)
        for k, v in (obj.get("stringData") or {}).items():
            out[k] = str(v).encode()
    else:
        for k, v in (obj.get("data") or {}).items():
            out[k] = str(v).encode()
        for k, v in (obj.get("binaryData") or {}).items():
            out[k] = base64.b64decode(v)
    return out


_FIELD = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def field_value(pod: dict[str, Any], path: str, referrer: str) -> str:
    """A downward-API ``fieldRef`` of a pod (``metadata.name``, ``metadata.annotations['k']``, ...)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": status.get("podIP"),
    }
    if path in simple and simple[path] is not None:
        return str(simple[path])
    m = _FIELD.match(path)
    if m:
        value = (meta.get(m.group(1)) or {}).get(m.group(2))
        # Kubernetes gives "" for a missing label/annotation: a consumer that needs it must check.
        return "" if value is None else str(value)
    raise Broken(
        "bad-field-ref", referrer, f"pod field {path}", f"fieldRef {path!r} is not a downward-API field"
    )


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command, args and env values (``$$`` escapes; unknown kept)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)


def _quantity(value: str, divisor: str = "1") -> str:
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}

    def parse(q: str) -> float:
        m = re.match(r"^([0-9.]+)([a-zA-Z]*)$", str(q))
        if not m or m.group(2) not in units:
            raise ValueError(f"not a quantity: {q}")
        return float(m.group(1)) * units[m.group(2)]

    import math

    return str(math.ceil(parse(value) / parse(divisor)))


def container_env(
    objects: Objects,
    pod: dict[str, Any],
    container: dict[str, Any],
    referrer: str,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment Kubernetes gives ``container`` of ``pod``: ``envFrom`` then ``env``, resolved.

    ``base`` holds what the image and the kubelet set first (image ENV, service links).

    Raises:
        Broken: a referenced ConfigMap/Secret or key that does not exist (and is not ``optional``).
    """
    ns = pod["metadata"]["namespace"]
    env = dict(base or {})
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                name, optional = source[key]["name"], source[key].get("optional", False)
                obj = objects.get(kind, ns, name)
                if obj is None:
                    if optional:
                        continue
                    objects.require(kind, ns, name, referrer, f"envFrom of container {container['name']}")
                for k, v in config_data(obj).items():
                    env[prefix + k] = v.decode()
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item or "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), env)
            continue
        vf = item["valueFrom"]
        what = f"env {name} of container {container['name']}"
        if "fieldRef" in vf:
            env[name] = field_value(pod, vf["fieldRef"]["fieldPath"], referrer)
        elif "resourceFieldRef" in vf:
            r = vf["resourceFieldRef"]
            target = next(
                c for c in _all_containers(pod) if c["name"] == r.get("containerName", container["name"])
            )
            kind_, res = r["resource"].split(".", 1)
            value = ((target.get("resources") or {}).get(kind_) or {}).get(res)
            env[name] = _quantity(value, r.get("divisor", "1")) if value is not None else "0"
        else:
            kind = "ConfigMap" if "configMapKeyRef" in vf else "Secret"
            sel = vf["configMapKeyRef" if kind == "ConfigMap" else "secretKeyRef"]
            obj = objects.get(kind, ns, sel["name"])
            if obj is None:
                if sel.get("optional"):
                    continue
                objects.require(kind, ns, sel["name"], referrer, what)
            data = config_data(obj)
            if sel["key"] not in data:
                if sel.get("optional"):
                    continue
                raise Broken(
                    "missing-reference",
                    referrer,
                    ref(obj),
                    f"{what} reads key {sel['key']!r}; {ref(obj)} has keys {sorted(data)}",
                )
            env[name] = data[sel["key"]].decode()
    return env


def _all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod.get("spec") or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def service_links(objects: Objects, namespace: str) -> dict[str, str]:
    """The ``<SVC>_SERVICE_HOST``/``_PORT`` variables kubelet injects for the Services of a namespace.

    Needs ``spec.clusterIP`` on the Services (assigned by the rehearsal's network); headless ones are
    skipped as kubelet skips them.
    """
    env: dict[str, str] = {}
    for svc in objects.of_kind("Service"):
        if svc["metadata"]["namespace"] != namespace:
            continue
        ip = (svc.get("spec") or {}).get("clusterIP")
        if not ip or ip == "None":
            continue
        prefix = svc["metadata"]["name"].upper().replace("-", "_")
        ports = (svc.get("spec") or {}).get("ports") or []
        if not ports:
            continue
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            proto = p.get("protocol", "TCP").lower()
            if p.get("name"):
                env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
            tag = f"{prefix}_PORT_{p['port']}_{proto.upper()}"
            env[tag] = f"{proto}://{ip}:{p['port']}"
            env[f"{tag}_PROTO"] = proto
            env[f"{tag}_PORT"] = str(p["port"])
            env[f"{tag}_ADDR"] = ip
        env[f"{prefix}_PORT"] = f"{ports[0].get('protocol', 'TCP').lower()}://{ip}:{ports[0]['port']}"
    return env


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A label selector (``matchLabels``/``matchExpressions``, or a Service's plain map) against labels."""
    if not selector:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        return all(labels.get(k) == str(v) for k, v in selector.items())
    if any(labels.get(k) != str(v) for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], [str(v) for v in e.get("values") or []]
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def instantiate_pod(
    owner: dict[str, Any],
    template: dict[str, Any],
    name: str,
    extra_labels: dict[str, str] | None = None,
    extra_annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Pod object from a workload's template, as its controller would create it."""
    meta = copy.deepcopy(template.get("metadata") or {})
    meta["name"] = name
    meta["namespace"] = owner["metadata"].get("namespace", "default")
    meta.setdefault("labels", {}).update(extra_labels or {})
    meta.setdefault("annotations", {}).update(extra_annotations or {})
    meta["ownerReferences"] = [{"kind": owner["kind"], "name": owner["metadata"]["name"]}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": copy.deepcopy(template["spec"])}


def mount_for(container: dict[str, Any], path: str) -> tuple[dict[str, Any], str] | None:
    """The volumeMount of ``container`` that holds ``path`` (the longest mountPath prefix), and the rest."""
    best: tuple[str, dict[str, Any]] | None = None
    for m in container.get("volumeMounts") or []:
        mp = m["mountPath"].rstrip("/") or "/"
        inside = path == mp or path.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) > len(best[0])):
            best = (mp, m)
    if best is None:
        return None
    return best[1], path[len(best[0]) :].lstrip("/")


def check_service_monitors(objects: Objects) -> None:
    """Each ServiceMonitor reaches a workload's metrics port: through a Service it selects, by a named port.

    The Prometheus Operator scrapes ``endpoints[].port`` — a *name* of a Service port — of every Service in the
    ServiceMonitor's namespace whose labels match its selector; that Service port's ``targetPort`` must be a
    container port of the pods the Service selects. Any link missing and the target silently never appears.

    Raises:
        Broken: no Service matches, the port name is not on it, or its targetPort is on none of its pods.
    """
    for mon in objects.of_kind("ServiceMonitor"):
        ns = mon["metadata"].get("namespace")
        spec = mon.get("spec") or {}
        services = [
            s
            for s in objects.of_kind("Service")
            if s["metadata"].get("namespace") == ns
            and selector_matches(spec.get("selector"), s["metadata"].get("labels") or {})
        ]
        if not services:
            raise Broken(
                "missing-reference", ref(mon), f"a Service labelled {spec.get('selector')} in {ns}",
                "the ServiceMonitor selects no Service: Prometheus never scrapes its target",
            )  # fmt: skip
        for endpoint in spec.get("endpoints") or []:
            name = endpoint.get("port")
            ports = [
                (s, p) for s in services for p in (s["spec"].get("ports") or []) if p.get("name") == name
            ]
            if not ports:
                raise Broken(
                    "missing-reference", f"{ref(mon)} endpoint port {name!r}", ", ".join(ref(s) for s in services),
                    f"no port named {name!r} on the Service(s) it selects",
                )  # fmt: skip
            for svc, port in ports:
                target = port.get("targetPort", port.get("port"))
                workloads = [
                    w
                    for w in objects
                    if w["metadata"].get("namespace") == ns
                    and (tpl := pod_templates(w)) is not None
                    and selector_matches(
                        svc["spec"].get("selector"), (tpl.get("metadata") or {}).get("labels") or {}
                    )
                ]
                found = [
                    w
                    for w in workloads
                    for c in pod_templates(w)["spec"].get("containers") or []
                    for cp in c.get("ports") or []
                    if target in (cp.get("name"), cp.get("containerPort"))
                ]
                if not found:
                    raise Broken(
                        "missing-reference", f"{ref(svc)} port {name!r} (targetPort {target!r}, scraped by {ref(mon)})",
                        ", ".join(ref(w) for w in workloads) or "no pods",
                        f"targetPort {target!r} is no container port of the pods the Service selects",
                    )  # fmt: skip
