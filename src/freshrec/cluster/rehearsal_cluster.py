"""The rehearsal's one-node cluster: objects, network, API server, services, controllers, stand-ins.

:class:`Cluster` owns everything that lives for one rehearsal: the rendered objects, the loopback API
server, the network namespaces and Service proxies, the pods and the claims' folders, and the platform
stand-ins a real cluster would have installed — named so in the report:

- ``kubernetes.default`` (the API server, https on the Service's ClusterIP:443);
- ``prometheus-operated.monitoring:9090`` (empty answers) and ``prometheus-pushgateway.monitoring:9091``;
- ``ml-pipeline.kubeflow:8888`` (the KFP API; runs execute the compiled YAML) and KFP's default
  ``pipeline-runner`` service account in the pipeline namespace;
- Services that select pods of a ``redis:*`` or ``postgres:*`` image (or are ``ExternalName``s named
  for them) are backed by this machine's Redis and PostgreSQL instead of running those images.

Workload controllers are played only as far as the rehearsal needs: a Deployment/StatefulSet gets its
pods (replicas capped at ``max_replicas``: the rehearsal checks wiring, not capacity), a Job runs its pod
to completion with ``backoffLimit`` retries, a CronJob is triggered on demand (``kubectl create job
--from=cronjob/...``), a Rollout is driven by :class:`~freshrec.cluster.rehearsal_argo.RolloutController`.
"""

from __future__ import annotations

import copy
import logging
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from freshrec.cluster.rehearsal_api import ApiServer, check_rbac_references, write_service_account_files
from freshrec.cluster.rehearsal_net import Network, hosts_file, resolv_conf
from freshrec.cluster.rehearsal_objects import (
    Broken,
    Objects,
    check_service_monitors,
    instantiate_pod,
    pod_templates,
    ref,
    selector_matches,
    service_links,
)
from freshrec.cluster.rehearsal_pods import Images, Pod
from freshrec.cluster.rehearsal_prom import StandIns

log = logging.getLogger(__name__)

EXTERNAL_IMAGES = {"redis": ("127.0.0.1", 6379), "postgres": ("127.0.0.1", 5432)}


def _stand_in_service(name: str, namespace: str, port: int, note: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"rehearsal.freshrec.io/stand-in": note},
        },
        "spec": {"ports": [{"name": "api", "port": port, "targetPort": port}]},
    }


class Cluster:
    """See the module docstring."""

    def __init__(
        self,
        docs: Iterable[dict[str, Any]],
        *,
        repo: Path,
        root: Path,
        crd_files: Iterable[Path],
        project_image: str,
        pipeline_namespace: str | None = None,
        kfp_service: tuple[str, str, int] = ("ml-pipeline", "kubeflow", 8888),
        max_replicas: int = 1,
        time_scale: float = 0.01,
        max_restarts: int = 3,
    ) -> None:
        from freshrec.rollout.k8s import load_crd_schemas

        self.run_id = secrets.token_hex(3)
        self.root = root
        self.repo = repo
        crd_files = list(crd_files)
        self.objects = Objects(copy.deepcopy(list(docs)), crd_files)
        self.schemas = load_crd_schemas(crd_files)
        self.images = Images(repo, project_image)
        self.pipeline_namespace = pipeline_namespace
        # Where the KFP API stand-in listens: the layout's KFP Service (Kubeflow's namespace), not the
        # profile namespace the runs execute in.
        self.kfp_service = kfp_service
        self.max_replicas = max_replicas
        self.time_scale = time_scale
        self.probe_time_scale = min(1.0, max(0.05, time_scale * 10))
        self.max_restarts = max_restarts
        self.pods: dict[str, Pod] = {}
        self.stand_ins = StandIns()
        self.notes: list[str] = []
        self.network: Network | None = None
        self.api: ApiServer | None = None
        self.kfp: Any = None
        self.traversable = self._traversable()
        self._lock = threading.Lock()
        self._externals: dict[tuple[str, str], tuple[str, int, str]] = {}
        self.network_preludes: dict[str, Any] = {}
        self.mesh_listeners: dict[tuple[str, int], dict[str, Any]] = {}

    @staticmethod
    def _traversable() -> list[str]:
        out = []
        for p in {Path(sys.executable).resolve(), Path(sys.executable).parent}:
            for parent in p.parents:
                if str(parent) != "/":
                    out.append(str(parent))
        return sorted(set(out))

    # --- platform ----------------------------------------------------------------------------------
    def _add_platform_objects(self) -> None:
        add = self.objects.add
        namespaces = {o["metadata"]["name"] for o in self.objects.of_kind("Namespace")}
        for ns in ("default", "monitoring", "kube-system"):
            if ns not in namespaces:
                add(
                    {
                        "apiVersion": "v1",
                        "kind": "Namespace",
                        "metadata": {
                            "name": ns,
                            "annotations": {"rehearsal.freshrec.io/stand-in": "platform"},
                        },
                    }
                )
        add(_stand_in_service("kubernetes", "default", 443, "the loopback API server"))
        add(
            _stand_in_service(
                "prometheus-operated", "monitoring", 9090, "Prometheus API stand-in (empty results)"
            )
        )
        add(_stand_in_service("prometheus-pushgateway", "monitoring", 9091, "Pushgateway stand-in"))
        if self.pipeline_namespace:
            kfp_name, kfp_ns, kfp_port = self.kfp_service
            for ns in dict.fromkeys((self.pipeline_namespace, kfp_ns)):
                if ns not in namespaces:
                    namespaces.add(ns)
                    add(
                        {
                            "apiVersion": "v1",
                            "kind": "Namespace",
                            "metadata": {
                                "name": ns,
                                "annotations": {"rehearsal.freshrec.io/stand-in": "Kubeflow"},
                            },
                        }
                    )
            add(_stand_in_service(kfp_name, kfp_ns, kfp_port, "KFP API stand-in"))
            if self.objects.get("ServiceAccount", self.pipeline_namespace, "pipeline-runner") is None:
                add(
                    {
                        "apiVersion": "v1",
                        "kind": "ServiceAccount",
                        "metadata": {
                            "name": "pipeline-runner",
                            "namespace": self.pipeline_namespace,
                            "annotations": {
                                "rehearsal.freshrec.io/stand-in": "KFP's default run identity (no freshrec RBAC)"
                            },
                        },
                    }
                )

    def static_checks(self) -> None:
        """What ``kubectl apply`` of the render would refuse, or leave dangling, before any pod runs.

        Raises:
            Broken: an object in a namespace the render does not create; a binding to a missing Role or SA.
        """
        namespaces = {o["metadata"]["name"] for o in self.objects.of_kind("Namespace")}
        for obj in self.objects:
            ns = obj["metadata"].get("namespace")
            if ns and ns not in namespaces:
                raise Broken(
                    "namespace", ref(obj), f"Namespace {ns}",
                    f"{ref(obj)} is in namespace {ns!r}, which neither the render nor the platform creates "
                    f"(namespaces: {sorted(namespaces)})",
                )  # fmt: skip
        check_rbac_references(self.objects)
        check_service_monitors(self.objects)

    def up(self) -> None:
        """Network, API server, stand-ins and a proxy for every Service (no workloads yet)."""
        self._add_platform_objects()
        self.static_checks()
        self.root.mkdir(parents=True, exist_ok=True)
        self.network = Network(self.run_id)
        net = self.network
        net.preludes.update(self.network_preludes)
        api_ip = net.reserve_service_ip(1)
        self.api = ApiServer(
            self.objects, self.schemas, self.root / "apiserver",
            names=["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"],
            ips=[api_ip],
        )  # fmt: skip
        self.api_address = (api_ip, 443)
        for svc in self.objects.of_kind("Service"):
            spec = svc.setdefault("spec", {})
            key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
            if key == ("default", "kubernetes"):
                spec["clusterIP"] = api_ip
                continue
            if spec.get("clusterIP") == "None":
                continue
            spec["clusterIP"] = net.service_ip()
        self.api.store.update({k: copy.deepcopy(o) for k, o in self._stored_services().items()})
        net.in_cluster_thread(lambda: self.api.listen(api_ip, 443))
        self._serve_stand_ins()
        self.mesh_listeners = self._mesh_listeners()
        for svc in self.objects.of_kind("Service"):
            self._expose(svc)
        if self.mesh_listeners:
            self._start_mesh()

    def _stored_services(self) -> dict[tuple[str, str, str, str], dict[str, Any]]:
        return {
            ("", "services", s["metadata"]["namespace"], s["metadata"]["name"]): s
            for s in self.objects.of_kind("Service")
        }

    def _serve_stand_ins(self) -> None:
        from freshrec.cluster.rehearsal_kfp import KfpApi

        net = self.network
        for name, ns, fn in (
            ("prometheus-operated", "monitoring", self.stand_ins.serve_prometheus),
            ("prometheus-pushgateway", "monitoring", self.stand_ins.serve_pushgateway),
        ):
            svc = self.objects.get("Service", ns, name)
            ip, port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"]
            net.in_cluster_thread(lambda fn=fn, ip=ip, port=port: fn(ip, port))
        if self.pipeline_namespace:
            self.kfp = KfpApi(self, self.pipeline_namespace)
            kfp_name, kfp_ns, kfp_port = self.kfp_service
            svc = self.objects.get("Service", kfp_ns, kfp_name)
            net.in_cluster_thread(lambda: self.kfp.listen(svc["spec"]["clusterIP"], kfp_port))

    def _expose(self, svc: dict[str, Any]) -> None:
        spec = svc["spec"]
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        if (svc["metadata"].get("annotations") or {}).get("rehearsal.freshrec.io/stand-in") or spec.get(
            "clusterIP"
        ) in (None, "None"):
            return
        for port in spec.get("ports") or []:
            if (spec["clusterIP"], int(port["port"])) in self.mesh_listeners:
                continue  # the mesh's data plane listens here (routes attached to this Service)
            self.network.expose(
                f"{ns}/{name}",
                spec["clusterIP"],
                int(port["port"]),
                lambda ns=ns, name=name, port=port: self.endpoints(ns, name, port),
            )

    # --- the mesh (GAMMA routes) ---------------------------------------------------------------------
    def _mesh_listeners(self) -> dict[tuple[str, int], dict[str, Any]]:
        """(ClusterIP, port) of every Service port an HTTPRoute/GRPCRoute is attached to, with the route."""
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for route in self.objects.of_kind("GRPCRoute", "HTTPRoute"):
            ns = route["metadata"]["namespace"]
            for parent in route["spec"].get("parentRefs") or []:
                if parent.get("kind") != "Service" or parent.get("group", "") not in ("", "core"):
                    continue
                svc = self.objects.require(
                    "Service", parent.get("namespace", ns), parent["name"], ref(route), "parentRefs"
                )
                for port in svc["spec"].get("ports") or []:
                    if parent.get("port") is not None and int(parent["port"]) != int(port["port"]):
                        continue
                    grpc_port = "h2c" in str(port.get("appProtocol", "")) or "grpc" in str(
                        port.get("name", "")
                    )
                    if (route["kind"] == "GRPCRoute") != grpc_port and parent.get("port") is None:
                        continue
                    out[(svc["spec"]["clusterIP"], int(port["port"]))] = {
                        "route": (route["kind"], ns, route["metadata"]["name"]),
                        "service": f"{svc['metadata']['namespace']}/{svc['metadata']['name']}",
                        "protocol": "grpc" if route["kind"] == "GRPCRoute" else "http",
                    }
        return out

    def _start_mesh(self) -> None:
        import json
        import subprocess

        folder = self.root / "mesh"
        folder.mkdir(parents=True, exist_ok=True)
        self.mesh_log = folder / "calls.jsonl"
        config = {
            "routes_file": str(folder / "routes.json"),
            "log_file": str(self.mesh_log),
            "ready_file": str(folder / "ready"),
            "listeners": [
                {"ip": ip, "port": port, "protocol": m["protocol"]}
                for (ip, port), m in self.mesh_listeners.items()
            ],
        }
        (folder / "config.json").write_text(json.dumps(config))
        self._write_routes()
        log_file = (folder / "mesh.log").open("ab")
        self.mesh_proc = subprocess.Popen(
            ["nsenter", f"--net={self.network.cluster_netns_path}", "--", sys.executable, "-m", "freshrec.cluster.rehearsal_mesh", str(folder / "config.json")],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not (folder / "ready").exists():
            if self.mesh_proc.poll() is not None or time.monotonic() > deadline:
                raise Broken(
                    "mesh",
                    "the rehearsal's mesh data plane",
                    "GAMMA routes",
                    (folder / "mesh.log").read_text()[-3000:],
                )
            time.sleep(0.1)
        threading.Thread(target=self._routes_loop, name="mesh-routes", daemon=True).start()

    def _routes_loop(self) -> None:
        while self.mesh_proc.poll() is None:
            try:
                self._write_routes()
            except Exception:  # a transient read of a half-updated object: the next round rewrites it
                log.exception("mesh routes")
            time.sleep(0.3)

    def _write_routes(self) -> None:

        table: dict[str, list[dict[str, Any]]] = {}
        for (ip, port), m in self.mesh_listeners.items():
            kind, ns, name = m["route"]
            route = self.api.get(kind, ns, name) if self.api else None
            backends = []
            for rule in ((route or {}).get("spec") or {}).get("rules") or []:
                for b in rule.get("backendRefs") or []:
                    svc = self.api.store.get(("", "services", b.get("namespace", ns), b["name"]))
                    if svc is None:
                        continue
                    sport = next(
                        (
                            p
                            for p in svc["spec"].get("ports") or []
                            if int(p["port"]) == int(b.get("port", p["port"]))
                        ),
                        None,
                    )
                    eps = (
                        [
                            f"{a}:{n}"
                            for a, n, _ in self.endpoints(svc["metadata"]["namespace"], b["name"], sport)
                        ]
                        if sport
                        else []
                    )
                    backends.append(
                        {
                            "service": f"{svc['metadata']['namespace']}/{b['name']}",
                            "weight": int(b.get("weight", 1)),
                            "endpoints": eps,
                        }
                    )
            table[f"{ip}:{port}"] = backends
        from freshrec.io import atomic_write_json

        atomic_write_json(self.root / "mesh" / "routes.json", table, indent=None)

    def mesh_calls(self) -> list[dict[str, Any]]:
        """The calls the mesh routed (one JSON object per call)."""
        import json

        path = getattr(self, "mesh_log", None)
        if path is None or not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def endpoints(self, namespace: str, name: str, port: dict[str, Any]) -> list[tuple[str, int, str]]:
        """The ready backends of a Service port now (its selector as stored in the API: Argo edits it)."""
        svc = self.api.store.get(("", "services", namespace, name)) or {}
        selector = (svc.get("spec") or {}).get("selector")
        external = self._external_backend(namespace, name, svc)
        if external is not None:
            return [external]
        out = []
        for pod in list(self.pods.values()):
            if pod.namespace != namespace or not pod.ready or not selector_matches(selector, pod.labels):
                continue
            target = port.get("targetPort", port["port"])
            try:
                number = pod.container_port(target)
            except Broken:
                continue  # kube-proxy has no endpoint for a pod without that port name
            out.append((pod.net.ip, number, pod.name))
        return out

    def _external_backend(
        self, namespace: str, name: str, svc: dict[str, Any]
    ) -> tuple[str, int, str] | None:
        """This machine's Redis/PostgreSQL for a Service whose pods would run those images."""
        key = (namespace, name)
        if key in self._externals:
            return self._externals[key]
        spec = svc.get("spec") or {}
        found = None
        if spec.get("type") == "ExternalName":
            for image, addr in EXTERNAL_IMAGES.items():
                if image in spec.get("externalName", ""):
                    found = (*addr, f"host:{image}")
        selector = spec.get("selector")
        for obj in self.objects.of_kind("Deployment", "StatefulSet"):
            tpl = pod_templates(obj) or {}
            if obj["metadata"]["namespace"] != namespace or not selector_matches(
                selector, (tpl.get("metadata") or {}).get("labels") or {}
            ):
                continue
            for c in (tpl.get("spec") or {}).get("containers") or []:
                repo = c.get("image", "").split("@")[0].rsplit(":", 1)[0].split("/")[-1]
                if repo in EXTERNAL_IMAGES:
                    found = (*EXTERNAL_IMAGES[repo], f"host:{repo}")
        if found:
            self._externals[key] = found
        return found

    def externally_backed(self, obj: dict[str, Any]) -> bool:
        """Whether a workload is one whose Service the local Redis/PostgreSQL stands in for."""
        for c in ((pod_templates(obj) or {}).get("spec") or {}).get("containers") or []:
            repo = c.get("image", "").split("@")[0].rsplit(":", 1)[0].split("/")[-1]
            if repo in EXTERNAL_IMAGES:
                return True
        return False

    # --- kubelet services for pods -------------------------------------------------------------------
    def claim_dir(self, namespace: str, claim: str, referrer: str) -> Path:
        pvc = self.objects.require(
            "PersistentVolumeClaim", namespace, claim, referrer, "persistentVolumeClaim"
        )
        path = self.root / "volumes" / namespace / pvc["metadata"]["name"]
        if not path.exists():
            path.mkdir(parents=True)
            path.chmod(0o755)  # a fresh volume: root-owned, not writable for others (fsGroup changes that)
        return path

    def write_sa_files(self, folder: Path, namespace: str, service_account: str) -> None:
        write_service_account_files(
            folder, self.api.token_for(namespace, service_account), self.api.tls.ca_pem, namespace
        )

    def kubelet_env(self, namespace: str, spec: dict[str, Any]) -> dict[str, str]:
        env = {"KUBERNETES_SERVICE_HOST": self.api_address[0], "KUBERNETES_SERVICE_PORT": "443", "KUBERNETES_SERVICE_PORT_HTTPS": "443",
               "KUBERNETES_PORT": f"tcp://{self.api_address[0]}:443"}  # fmt: skip
        if spec.get("enableServiceLinks", True):
            env = {**service_links(self.objects, namespace), **env}
        return env

    def write_pod_etc(self, pod: Pod) -> None:
        services = []
        for svc in self.objects.of_kind("Service"):
            ip = svc["spec"].get("clusterIP")
            if ip and ip != "None":
                services.append((svc["metadata"]["name"], svc["metadata"]["namespace"], [ip]))
            elif ip == "None":
                ips = [
                    p.net.ip
                    for p in self.pods.values()
                    if p.net
                    and p.namespace == svc["metadata"]["namespace"]
                    and selector_matches(svc["spec"].get("selector"), p.labels)
                ]
                services.append((svc["metadata"]["name"], svc["metadata"]["namespace"], ips))
        hosts_file(pod.root / "hosts", pod.name, pod.net.ip, pod.namespace, services)
        resolv_conf(pod.root / "resolv.conf", pod.namespace)
        (pod.root / "hostname").write_text(pod.name + "\n")

    # --- workloads ---------------------------------------------------------------------------------
    def run_pod(self, pod: dict[str, Any], owner: str) -> Pod:
        """Create and start a pod (admission errors raise :class:`Broken`)."""
        p = Pod(self, pod, owner)
        with self._lock:
            if p.name in self.pods:
                p.name = pod["metadata"]["name"] = f"{p.name}-{secrets.token_hex(2)}"
                p.root = self.root / "pods" / p.namespace / p.name
            self.pods[p.name] = p
        try:
            p.start()
        except Broken:
            self.pods.pop(p.name, None)
            raise
        return p

    def start_workload(
        self,
        obj: dict[str, Any],
        replicas: int | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        suffix: str = "",
    ) -> list[Pod]:
        """Pods for a Deployment/StatefulSet/Rollout template (replicas capped at ``max_replicas``)."""
        template = pod_templates(obj)
        if template is None:
            raise Broken("workload", ref(obj), "pod template", "has no pod template")
        selector = (obj.get("spec") or {}).get("selector")
        tlabels = (template.get("metadata") or {}).get("labels") or {}
        if selector is not None and not selector_matches(selector, tlabels):
            raise Broken(
                "selector",
                ref(obj),
                "its pod template",
                f"spec.selector {selector} does not match the template's labels {tlabels}",
            )
        wanted = (obj.get("spec") or {}).get("replicas", 1) if replicas is None else replicas
        n = min(int(wanted), self.max_replicas)
        if n < wanted:
            self.note(
                f"{ref(obj)}: {wanted} replicas rendered, {n} run (the rehearsal checks wiring, not capacity)"
            )
        pods = []
        for i in range(n):
            name = f"{obj['metadata']['name']}{suffix}-{i if obj['kind'] == 'StatefulSet' else secrets.token_hex(2)}"
            pods.append(self.run_pod(instantiate_pod(obj, template, name, labels, annotations), ref(obj)))
        return pods

    def run_job(
        self,
        owner: dict[str, Any],
        template: dict[str, Any],
        name: str,
        timeout_s: float,
        backoff_limit: int | None = None,
        backoff_s: float = 0.0,
    ) -> Pod:
        """Run a Job's pod to completion, retrying up to ``backoffLimit`` times; returns the last pod.

        ``backoff_s``: the first delay between attempts, doubled each time (the Job controller's 10 s, 20 s,
        40 s ... shortened by the caller).
        """
        job_spec = (
            (owner.get("spec") or {}).get("jobTemplate", {}).get("spec")
            if owner.get("kind") == "CronJob"
            else owner.get("spec") or {}
        )
        limit = (job_spec or {}).get("backoffLimit", 6) if backoff_limit is None else backoff_limit
        deadline = (job_spec or {}).get("activeDeadlineSeconds")
        for attempt in range(int(limit) + 1):
            pod = self.run_pod(
                instantiate_pod(owner, template, f"{name}-{attempt}", {"job-name": name}),
                f"{ref(owner)} (Job {name})",
            )
            pod.wait(
                lambda p: p.phase in ("Succeeded", "Failed"),
                min(timeout_s, float(deadline or timeout_s)),
                "finished",
            )
            pod.stop()
            if pod.phase == "Succeeded":
                return pod
            if attempt < int(limit):
                time.sleep(backoff_s * 2**attempt)
        return pod

    def run_job_background(self, owner: dict[str, Any], timeout_s: float, backoff_s: float) -> dict[str, Any]:
        """Start a rendered Job as ``kubectl apply`` does (now, retrying with backoff); returns a holder
        whose ``pod`` is set when it has finished (``error`` when it could not run at all)."""
        holder: dict[str, Any] = {"pod": None, "error": None}

        def run() -> None:
            self.network.enter_cluster()
            try:
                holder["pod"] = self.run_job(
                    owner, pod_templates(owner), owner["metadata"]["name"], timeout_s, backoff_s=backoff_s
                )
            except Broken as exc:
                holder["error"] = exc

        holder["thread"] = threading.Thread(target=run, name=f"job-{owner['metadata']['name']}", daemon=True)
        holder["thread"].start()
        return holder

    def trigger_cronjob(self, cronjob: dict[str, Any], timeout_s: float) -> Pod:
        """``kubectl create job --from=cronjob/<name>``: one Job of the CronJob now."""
        template = pod_templates(cronjob)
        return self.run_job(
            cronjob, template, f"{cronjob['metadata']['name']}-manual-{secrets.token_hex(2)}", timeout_s
        )

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def pods_of(self, owner_ref: str) -> list[Pod]:
        return [p for p in self.pods.values() if p.owner == owner_ref]

    # --- teardown ----------------------------------------------------------------------------------
    def down(self, keep: bool = False) -> None:
        for pod in list(self.pods.values()):
            try:
                pod.stop(grace_s=3.0)
            except Exception:  # teardown goes on: a stuck pod must not leave namespaces behind
                log.exception("stopping pod %s", pod.name)
        self.stand_ins.stop()
        mesh = getattr(self, "mesh_proc", None)
        if mesh is not None and mesh.poll() is None:
            mesh.kill()
            mesh.wait(timeout=10)
        if self.kfp is not None:
            self.kfp.stop()
        if self.api is not None:
            self.api.stop()
        if self.network is not None:
            self.network.close()
        if not keep:
            _remove_tree(self.root)


def _remove_tree(path: Path) -> None:
    for _ in range(3):  # a container process still exiting may hold a file for a moment
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.5)
    log.warning("could not remove %s", path)
