"""Kubeflow Pipelines in the rehearsal: a KFP API stand-in and a runner of the compiled YAML.

:class:`KfpApi` answers the v2beta1 REST paths ``kfp.Client`` uses (healthz, experiments, runs), parsing
every body into the ``kfp_server_api`` models and the pipeline spec into the KFP ``PipelineSpec``/
``PlatformSpec`` protos; a run it accepts is executed by :class:`PipelineRunner`, as the KFP backend would
execute it: in the run's namespace (the client's, ``kubeflow`` in single-user mode) as the run's
service account (``service_account`` of the request; KFP's ``pipeline-runner`` when it is empty).

:class:`PipelineRunner` walks the DAG of the **compiled YAML** (not the Python factory): tasks in
dependency order, sub-DAGs, ``triggerPolicy`` conditions, parameters and artifacts between tasks; each
task is a pod built as KFP's driver builds it — the executor's image, command and args with the
executor input (``{{$}}``) filled in by ``kfp.local``'s own helpers, and the ``kubernetes`` platform
spec of that executor applied (PVC mounts with ``subPath``, Secrets/ConfigMaps as env or volumes,
fieldPath env, emptyDirs, node selectors, tolerations, accelerators, pod labels/annotations,
securityContext). Artifacts live in a folder mounted into every task pod at ``/minio/mlpipeline`` (what
KFP's launcher does with the object store, done by a bind mount here). Tasks run one at a time.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlparse

from freshrec.cluster.rehearsal_objects import Broken

log = logging.getLogger(__name__)

API = "/apis/v2beta1"
ARTIFACT_MOUNT = "/minio/mlpipeline"
DEFAULT_RUNNER_SA = "pipeline-runner"


@dataclass
class TaskRecord:
    name: str
    pod: str = ""
    state: str = "PENDING"  # SUCCEEDED | FAILED | SKIPPED
    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str = ""
    mounts: list[str] = field(default_factory=list)
    service_account: str = ""


@dataclass
class RunRecord:
    run_id: str
    name: str
    namespace: str
    service_account: str
    parameters: dict[str, Any]
    state: str = "PENDING"
    error: str = ""
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    broken: Broken | None = None
    # who created it: the identity of the request's bearer token (a service account of the loopback API
    # server), or "" for a caller without one (the user's own `freshrec pipeline submit` from the host)
    submitted_by: str = ""
    held: bool = False  # accepted but not executed (see KfpApi.hold_new_runs)


def _cel(condition: str, parameters: dict[str, Any]) -> bool:
    """KFP's triggerPolicy conditions: ``inputs.parameter_values['x'] <op> <literal>`` joined by &&/||."""

    def atom(text: str) -> bool:
        m = re.fullmatch(r"\s*inputs\.parameter_values\['([^']+)'\]\s*(==|!=)\s*(.+?)\s*", text)
        if not m:
            raise Broken(
                "kfp",
                f"triggerPolicy {condition!r}",
                "the rehearsal's KFP runner",
                "condition form not rehearsed",
            )
        value = json.loads(m.group(3).replace("'", '"'))
        have = parameters.get(m.group(1))
        return (have == value) if m.group(2) == "==" else (have != value)

    return any(all(atom(a) for a in part.split("&&")) for part in condition.split("||"))


class PipelineRunner:
    """Runs a compiled pipeline's tasks as pods of the rehearsal cluster. See the module docstring."""

    def __init__(self, cluster: Any, package: dict[str, Any], platform: dict[str, Any] | None) -> None:
        from google.protobuf import json_format
        from kfp.pipeline_spec import pipeline_spec_pb2

        self.cluster = cluster
        self.package = package
        self.spec = json_format.ParseDict(package, pipeline_spec_pb2.PipelineSpec())
        self.executors = (
            (((platform or {}).get("platforms") or {}).get("kubernetes") or {})
            .get("deploymentSpec", {})
            .get("executors", {})
        )
        self.deployment = package["deploymentSpec"]["executors"]
        self.task_timeout_s = 600.0

    def run(self, record: RunRecord) -> RunRecord:
        """Execute the pipeline; the record says what each task did (its state, outputs, pod)."""
        record.state = "RUNNING"
        root = self.spec.root
        params = {}
        for name, definition in root.input_definitions.parameters.items():
            if name in record.parameters:
                params[name] = record.parameters[name]
            elif definition.HasField("default_value"):
                from google.protobuf import json_format

                params[name] = json_format.MessageToDict(definition.default_value)
        unknown = set(record.parameters) - set(root.input_definitions.parameters)
        if unknown:
            record.state, record.error = "FAILED", f"unknown pipeline parameters {sorted(unknown)}"
            return record
        self._artifacts = self.cluster.root / "kfp" / record.run_id
        self._artifacts.mkdir(parents=True, exist_ok=True)
        self._artifacts.chmod(0o777)
        try:
            self._run_dag(self.package["root"], {"parameters": params, "artifacts": {}}, record, prefix="")
            record.state = (
                "FAILED" if any(t.state == "FAILED" for t in record.tasks.values()) else "SUCCEEDED"
            )
        except Broken as exc:
            record.state, record.error, record.broken = "FAILED", str(exc), exc
        finally:
            record.finished = time.time()
        return record

    # --- the DAG -----------------------------------------------------------------------------------
    def _run_dag(
        self, component: dict[str, Any], inputs: dict[str, Any], record: RunRecord, prefix: str
    ) -> None:
        tasks: dict[str, Any] = component["dag"]["tasks"]
        done: dict[str, dict[str, Any] | None] = {}
        pending = dict(tasks)
        while pending:
            ready = [n for n, t in pending.items() if all(d in done for d in self._deps(t))]
            if not ready:
                raise Broken(
                    "kfp", f"pipeline tasks {sorted(pending)}", "their dependencies", "dependency cycle"
                )
            for name in sorted(ready):
                task = pending.pop(name)
                key = f"{prefix}{name}"
                if any(done.get(d) is None for d in self._deps(task)):
                    done[name] = None
                    record.tasks[key] = TaskRecord(
                        key, state="SKIPPED", reason="an upstream task did not run"
                    )
                    continue
                resolved = self._resolve(task, inputs, done)
                condition = (task.get("triggerPolicy") or {}).get("condition")
                if condition and not _cel(condition, resolved["parameters"]):
                    done[name] = None
                    record.tasks[key] = TaskRecord(
                        key, state="SKIPPED", reason=f"condition false: {condition}"
                    )
                    continue
                comp = self.package["components"][task["componentRef"]["name"]]
                if "dag" in comp:
                    self._run_dag(comp, resolved, record, prefix=f"{key}/")
                    done[name] = {"parameters": {}, "artifacts": {}}
                else:
                    done[name] = self._run_task(key, task, comp, resolved, record)
                    if done[name] is None:
                        return  # a failed task stops the run (KFP's default: no further tasks start)

    @staticmethod
    def _deps(task: dict[str, Any]) -> set[str]:
        deps = set(task.get("dependentTasks") or [])
        for group in ("parameters", "artifacts"):
            for spec in ((task.get("inputs") or {}).get(group) or {}).values():
                for k in ("taskOutputParameter", "taskOutputArtifact"):
                    if k in spec:
                        deps.add(spec[k]["producerTask"])
        return deps

    def _resolve(self, task: dict[str, Any], inputs: dict[str, Any], done: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"parameters": {}, "artifacts": {}}
        for name, spec in ((task.get("inputs") or {}).get("parameters") or {}).items():
            if "componentInputParameter" in spec:
                out["parameters"][name] = inputs["parameters"].get(spec["componentInputParameter"])
            elif "taskOutputParameter" in spec:
                t = spec["taskOutputParameter"]
                out["parameters"][name] = done[t["producerTask"]]["parameters"].get(t["outputParameterKey"])
            elif "runtimeValue" in spec:
                out["parameters"][name] = spec["runtimeValue"].get("constant")
        for name, spec in ((task.get("inputs") or {}).get("artifacts") or {}).items():
            if "componentInputArtifact" in spec:
                out["artifacts"][name] = inputs["artifacts"].get(spec["componentInputArtifact"])
            elif "taskOutputArtifact" in spec:
                t = spec["taskOutputArtifact"]
                out["artifacts"][name] = done[t["producerTask"]]["artifacts"].get(t["outputArtifactKey"])
        return out

    # --- one task ----------------------------------------------------------------------------------
    def _run_task(
        self,
        key: str,
        task: dict[str, Any],
        comp: dict[str, Any],
        resolved: dict[str, Any],
        record: RunRecord,
    ) -> dict[str, Any] | None:
        from google.protobuf import json_format
        from kfp.local import executor_input_utils, executor_output_utils, placeholder_utils
        from kfp.pipeline_spec import pipeline_spec_pb2

        label = comp["executorLabel"]
        component_spec = json_format.ParseDict(comp, pipeline_spec_pb2.ComponentSpec())
        container = self.deployment[label]["container"]
        safe = re.sub(r"[^a-z0-9-]", "-", key.lower()).strip("-")
        task_root = f"{ARTIFACT_MOUNT}/{record.run_id}/{safe}"
        host_root = self._artifacts / safe
        host_root.mkdir(parents=True, exist_ok=True)
        host_root.chmod(0o777)
        arguments = {
            **resolved["parameters"],
            **{k: v for k, v in resolved["artifacts"].items() if v is not None},
        }
        executor_input = executor_input_utils.construct_executor_input(
            component_spec, arguments, task_root, block_input_artifact=False
        )
        for name in component_spec.output_definitions.artifacts:
            (host_root / name).parent.mkdir(parents=True, exist_ok=True)
        executor_input_dict = executor_input_utils.executor_input_to_dict(executor_input, component_spec)
        full = placeholder_utils.replace_placeholders(
            full_command=list(container.get("command") or []) + list(container.get("args") or []),
            executor_input_dict=executor_input_dict,
            pipeline_resource_name=self.spec.pipeline_info.name,
            task_resource_name=safe,
            pipeline_root=ARTIFACT_MOUNT,
            unique_pipeline_id=record.run_id,
        )
        n_cmd = len(container.get("command") or [])
        pod = self._pod(record, safe, label, container, full[:n_cmd], full[n_cmd:], resolved)
        rec = TaskRecord(key, pod=pod["metadata"]["name"], service_account=record.service_account)
        rec.mounts = [
            f"{m['mountPath']} <- {v.get('persistentVolumeClaim', {}).get('claimName', '?')}{':' + m['subPath'] if m.get('subPath') else ''}"
            for m in pod["spec"]["containers"][0].get("volumeMounts") or []
            for v in pod["spec"]["volumes"]
            if v["name"] == m["name"] and "persistentVolumeClaim" in v
        ]
        record.tasks[key] = rec
        started = time.monotonic()
        retries = int((task.get("retryPolicy") or {}).get("maxRetryCount", 0))
        owner = f"KFP task {key} (run {record.name}, executor {label})"
        for attempt in range(retries + 1):
            p = self.cluster.run_pod(pod, owner)
            try:
                p.wait(lambda x: x.phase in ("Succeeded", "Failed"), self.task_timeout_s, "finished")
            except Broken:
                p.stop()
                raise
            p.stop()
            if p.phase == "Succeeded":
                break
            if attempt < retries:
                pod["metadata"]["name"] = f"{pod['metadata']['name'].rsplit('-r', 1)[0]}-r{attempt + 1}"
        rec.seconds = time.monotonic() - started
        if p.phase != "Succeeded":
            rec.state, rec.reason = "FAILED", p.failure + p.logs_summary(30)
            record.error = f"task {key} failed"
            return None
        host_input = json.loads(json.dumps(executor_input_dict).replace(task_root, str(host_root)))
        host_exec_input = json_format.ParseDict(host_input, pipeline_spec_pb2.ExecutorInput())
        outputs = executor_output_utils.get_outputs_for_task(host_exec_input, component_spec)
        parameters, artifacts = {}, {}
        for name, value in outputs.items():
            if hasattr(value, "uri"):
                value.uri = value.uri.replace(str(host_root), task_root)
                artifacts[name] = value
            else:
                parameters[name] = value
        rec.state, rec.outputs = "SUCCEEDED", parameters
        return {"parameters": parameters, "artifacts": artifacts}

    def _pod(
        self,
        record: RunRecord,
        safe: str,
        label: str,
        container: dict[str, Any],
        command: list[str],
        args: list[str],
        resolved: dict[str, Any],
    ) -> dict[str, Any]:
        k8s = self.executors.get(label) or {}
        volumes: list[dict[str, Any]] = [{"name": "kfp-artifacts", "hostArtifacts": str(self._artifacts)}]
        mounts: list[dict[str, Any]] = [
            {"name": "kfp-artifacts", "mountPath": f"{ARTIFACT_MOUNT}/{record.run_id}"}
        ]
        env: list[dict[str, Any]] = [
            {"name": e["name"], "value": e.get("value", "")} for e in container.get("env") or []
        ]
        env += [
            {"name": "KFP_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "KFP_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        ]

        def param(spec: dict[str, Any]) -> Any:
            if "runtimeValue" in spec:
                return spec["runtimeValue"].get("constant")
            if "componentInputParameter" in spec:
                return resolved["parameters"].get(spec["componentInputParameter"])
            if "constant" in spec:
                return spec["constant"]
            return None

        for i, m in enumerate(k8s.get("pvcMount") or []):
            claim = (
                m.get("constant")
                or param(m.get("pvcNameParameter") or {})
                or (
                    resolved["parameters"].get(m["componentInputParameter"])
                    if "componentInputParameter" in m
                    else None
                )
            )
            volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim}})
            mounts.append(
                {
                    "name": f"pvc-{i}",
                    "mountPath": m["mountPath"],
                    **({"subPath": m["subPath"]} if m.get("subPath") else {}),
                }
            )
        for i, s in enumerate(k8s.get("secretAsVolume") or []):
            name = s.get("secretName") or param(s.get("secretNameParameter") or {})
            volumes.append(
                {"name": f"secret-{i}", "secret": {"secretName": name, "optional": bool(s.get("optional"))}}
            )
            mounts.append({"name": f"secret-{i}", "mountPath": s["mountPath"]})
        for i, c in enumerate(k8s.get("configMapAsVolume") or []):
            name = c.get("configMapName") or param(c.get("configMapNameParameter") or {})
            volumes.append(
                {"name": f"cm-{i}", "configMap": {"name": name, "optional": bool(c.get("optional"))}}
            )
            mounts.append({"name": f"cm-{i}", "mountPath": c["mountPath"]})
        for s in k8s.get("secretAsEnv") or []:
            name = s.get("secretName") or param(s.get("secretNameParameter") or {})
            for kv in s.get("keyToEnv") or []:
                env.append(
                    {
                        "name": kv["envVar"],
                        "valueFrom": {
                            "secretKeyRef": {
                                "name": name,
                                "key": kv["secretKey"],
                                "optional": bool(s.get("optional")),
                            }
                        },
                    }
                )
        for c in k8s.get("configMapAsEnv") or []:
            name = c.get("configMapName") or param(c.get("configMapNameParameter") or {})
            for kv in c.get("keyToEnv") or []:
                env.append(
                    {
                        "name": kv["envVar"],
                        "valueFrom": {
                            "configMapKeyRef": {
                                "name": name,
                                "key": kv["configMapKey"],
                                "optional": bool(c.get("optional")),
                            }
                        },
                    }
                )
        for f in k8s.get("fieldPathAsEnv") or []:
            env.append({"name": f["name"], "valueFrom": {"fieldRef": {"fieldPath": f["fieldPath"]}}})
        for i, e in enumerate(k8s.get("emptyDirMounts") or []):
            volumes.append({"name": e.get("volumeName", f"empty-{i}"), "emptyDir": {}})
            mounts.append({"name": e.get("volumeName", f"empty-{i}"), "mountPath": e["mountPath"]})
        resources = container.get("resources") or {}
        limits: dict[str, Any] = {}
        if resources.get("accelerator"):
            acc = resources["accelerator"]
            limits[acc.get("resourceType") or acc.get("type")] = str(
                acc.get("resourceCount") or acc.get("count") or 1
            )
        for k, v in (
            ("cpu", resources.get("resourceCpuLimit")),
            ("memory", resources.get("resourceMemoryLimit")),
        ):
            if v:
                limits[k] = v
        requests = {
            k: v
            for k, v in (
                ("cpu", resources.get("resourceCpuRequest")),
                ("memory", resources.get("resourceMemoryRequest")),
            )
            if v
        }
        meta = k8s.get("podMetadata") or {}
        spec: dict[str, Any] = {
            "serviceAccountName": record.service_account,
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": container["image"],
                "command": command,
                "args": args,
                "env": env,
                "volumeMounts": mounts,
                "resources": {"limits": limits, "requests": requests},
            }],
            "volumes": volumes,
        }  # fmt: skip
        if k8s.get("nodeSelector"):
            spec["nodeSelector"] = dict(k8s["nodeSelector"].get("labels") or {})
        if k8s.get("tolerations"):
            spec["tolerations"] = copy.deepcopy(k8s["tolerations"])
        if k8s.get("securityContext"):
            spec["securityContext"] = copy.deepcopy(k8s["securityContext"])
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{record.name[:30]}-{safe[:25]}-{secrets.token_hex(2)}".strip("-"),
                "namespace": record.namespace,
                "uid": str(uuid.uuid4()),
                "labels": {"pipelines.kubeflow.org/v2_component": "true", **(meta.get("labels") or {})},
                "annotations": dict(meta.get("annotations") or {}),
            },
            "spec": spec,
        }


def split_package(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The pipeline spec and the platform spec documents of a compiled YAML."""
    import yaml

    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    spec = next(d for d in docs if "pipelineInfo" in d)
    platform = next((d for d in docs if "platforms" in d), None)
    return spec, platform


class KfpApi:
    """The KFP v2beta1 API stand-in. See the module docstring."""

    def __init__(self, cluster: Any, default_namespace: str = "kubeflow") -> None:
        self.cluster = cluster
        self.default_namespace = default_namespace
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, RunRecord] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, client)
        self.errors: list[str] = []
        # Runs created from now on are validated and recorded, not executed: the story's first run already
        # ran every task, and a second (a retraining run the drift CronJob submits) would outlive the story.
        self.hold_new_runs = False
        self._httpd: ThreadingHTTPServer | None = None

    def _check(self, body: dict[str, Any], model: str) -> Any:
        import kfp_server_api

        cls = getattr(kfp_server_api, model)
        unknown = set(body) - set(cls.attribute_map.values())
        if unknown:
            raise ValueError(f"{model} has no fields {sorted(unknown)}")
        return kfp_server_api.ApiClient().deserialize(SimpleNamespace(data=json.dumps(body)), model)

    def identity(self, authorization: str | None) -> str:
        """The service account behind ``Authorization: Bearer <token>`` (tokens the loopback API issued)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return ""
        return self.cluster.api.tokens.get(token.strip(), "unknown token")

    def handle(
        self, method: str, url: str, body: bytes, client: str, authorization: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        parsed = urlparse(url)
        path, query = parsed.path, parse_qs(parsed.query)
        self.requests.append((method, path, client))
        data = json.loads(body) if body else {}
        if method == "GET" and path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if method == "GET" and path == f"{API}/experiments":
            flt = json.loads(query.get("filter", ["{}"])[0])
            names = [
                p.get("string_value", p.get("stringValue"))
                for p in flt.get("predicates", [])
                if p.get("key") == "display_name"
            ]
            found = [e for e in self.experiments.values() if not names or e["display_name"] in names]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if method == "POST" and path == f"{API}/experiments":
            self._check(data, "V2beta1Experiment")
            created = {**data, "experiment_id": str(uuid.uuid4()), "storage_state": "AVAILABLE"}
            self.experiments[created["experiment_id"]] = created
            return 200, created
        if method == "POST" and path == f"{API}/runs":
            run = self._check(data, "V2beta1Run")
            if run.experiment_id not in self.experiments:
                return 400, {"error": "a run must name an existing experiment", "code": 3}
            spec = run.pipeline_spec or {}
            package = spec.get("pipeline_spec", spec)
            platform = {"platforms": spec["platform_spec"]["platforms"]} if "platform_spec" in spec else None
            namespace = self.experiments[run.experiment_id].get("namespace") or self.default_namespace
            record = RunRecord(
                run_id=str(uuid.uuid4())[:8],
                name=run.display_name or "run",
                namespace=namespace,
                service_account=run.service_account or DEFAULT_RUNNER_SA,
                parameters=dict((run.runtime_config or SimpleNamespace(parameters={})).parameters or {}),
                submitted_by=self.identity(authorization),
                held=self.hold_new_runs,
            )
            self.runs[record.run_id] = record
            if not record.held:
                runner = PipelineRunner(self.cluster, package, platform)
                threading.Thread(
                    target=runner.run, args=(record,), name=f"kfp-run-{record.run_id}", daemon=True
                ).start()
            return 200, {**data, "run_id": record.run_id, "state": "PENDING"}
        m = re.fullmatch(rf"{API}/runs/([^/]+)", path)
        if method == "GET" and m and m.group(1) in self.runs:
            r = self.runs[m.group(1)]
            return 200, {
                "run_id": r.run_id,
                "display_name": r.name,
                "state": r.state,
                "error": {"message": r.error} if r.error else None,
            }
        return 404, {"error": f"no route {method} {path}", "code": 5}

    def listen(self, host: str, port: int) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    status, payload = api.handle(
                        self.command,
                        self.path,
                        body,
                        self.client_address[0],
                        self.headers.get("Authorization"),
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    api.errors.append(f"{self.command} {self.path}: {exc}")
                    status, payload = 400, {"error": str(exc), "code": 3}
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
