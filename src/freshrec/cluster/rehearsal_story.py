"""The story a rehearsal plays, stage by stage, as connections between writers and readers.

See :mod:`freshrec.cluster.rehearsal` for the story in prose. Every check here observes what the
rendered workloads did — files in the claims' folders, rows in Redis and PostgreSQL, requests the API
server answered, connections the Service proxies forwarded, the pods' exit codes and logs — and a
mismatch raises :class:`~freshrec.cluster.rehearsal_objects.Broken` naming the writer and the reader.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from freshrec.cluster.rehearsal_objects import Broken, mount_for, pod_templates, ref

log = logging.getLogger(__name__)

FLAG = re.compile(r"^--([a-z_]+)=(.*)$")
MODEL_UID = 1000  # the project image's user: who writes the model repository in the cluster


def _flag(args: list[str], name: str) -> str | None:
    for a in args:
        m = FLAG.match(a)
        if m and m.group(1) == name:
            return m.group(2)
    return None


def _opt(tokens: list[str], name: str) -> str | None:
    """``--name=value`` or ``--name value`` of a freshrec command line."""
    for i, t in enumerate(tokens):
        if t.startswith(f"--{name}="):
            return t.split("=", 1)[1]
        if t == f"--{name}" and i + 1 < len(tokens):
            return tokens[i + 1]
    return None


class Story:
    """The stages of one rehearsal (see the module docstring of :mod:`freshrec.cluster.rehearsal`)."""

    def __init__(self, rehearsal: Any) -> None:
        self.r = rehearsal
        self.c = rehearsal.cluster
        self.api = self.c.api
        self.timeline: list[str] = rehearsal.state.setdefault("timeline", [])
        self.controllers: list[Any] = rehearsal.state.setdefault("controllers", [])

    def say(self, text: str) -> None:
        self.timeline.append(f"{time.strftime('%H:%M:%S')} {text}")
        self.r.progress(text)

    def play(self) -> None:
        self.platform()
        self.apply_jobs()
        self.day0()
        self.submit()
        self.feast_apply()
        self.serving()
        self.handoff()
        self.traffic()
        self.verdict()
        self.online()
        self.schedules()

    # --- 1. platform -------------------------------------------------------------------------------
    def platform(self) -> None:
        self.say("platform: images, analyses on empty data")
        self._images_agree()
        templates = self.c.objects.of_kind("AnalysisTemplate", "ClusterAnalysisTemplate")
        prom = [
            (t, m)
            for t in templates
            for m in t["spec"].get("metrics") or []
            if "prometheus" in (m.get("provider") or {})
        ]
        with self.r.connection(
            "Prometheus (no data) -> Prometheus analyses",
            "Prometheus stand-in (empty result)",
            ", ".join(sorted({ref(t) for t, _ in prom})) or "no Prometheus analysis",
            soft=True,
        ) as conn:
            from freshrec.cluster.rehearsal_prom import assess_metric, evaluate_measurement

            judged = []
            for t, m in prom:
                phase, msg = evaluate_measurement(m, [])
                judged.append(f"{m['name']}={phase}")
                if phase == "Successful":
                    raise Broken(
                        "empty-analysis", "Prometheus (no samples: [])", f"{ref(t)} metric {m['name']}",
                        f"successCondition {m.get('successCondition')!r} holds on an empty result, so a canary that "
                        "no metrics describe passes this analysis",
                    )  # fmt: skip
                # Every measurement of the metric empty (a Prometheus that never scraped the canary):
                # the metric's phase by Argo's limits must not be Successful either.
                count = int(m.get("count") or 1)
                overall = assess_metric(m, [phase] * count)
                if overall == "Successful":
                    raise Broken(
                        "empty-analysis", f"Prometheus (no samples in all {count} measurements)", f"{ref(t)} metric {m['name']}",
                        f"each empty result is {phase}, but inconclusiveLimit {m.get('inconclusiveLimit', 0)} is not below "
                        f"count {count}: Argo counts the metric Successful after {count} inconclusive measurements",
                    )  # fmt: skip
                nan_phase, _ = evaluate_measurement(m, [float("nan")])
                if nan_phase == "Successful":
                    raise Broken(
                        "empty-analysis", "Prometheus (NaN sample)", f"{ref(t)} metric {m['name']}",
                        f"successCondition {m.get('successCondition')!r} holds on a NaN result (0/0 when no requests)",
                    )  # fmt: skip
                if phase == "Error":
                    raise Broken(
                        "empty-analysis", "Prometheus (no samples: [])", f"{ref(t)} metric {m['name']}",
                        f"the conditions fail to evaluate on an empty result ({msg}): Argo marks it Error and aborts "
                        "every canary a quiet Prometheus describes; empty must be inconclusive",
                    )  # fmt: skip
            conn.evidence = ", ".join(judged) or "none rendered"

    def _images_agree(self) -> None:
        project_repo = self.r.project_image.rsplit(":", 1)[0]
        tfs_version = importlib.metadata.version("tensorflow-serving-api")
        for obj in self.c.objects:
            containers = []
            tpl = pod_templates(obj)
            if tpl:
                containers = list((tpl.get("spec") or {}).get("initContainers") or []) + list(
                    (tpl.get("spec") or {}).get("containers") or []
                )
            if obj["kind"] in ("AnalysisTemplate", "ClusterAnalysisTemplate"):
                defaults = {a["name"]: a.get("value") for a in obj["spec"].get("args") or []}
                for m in obj["spec"].get("metrics") or []:
                    job = ((m.get("provider") or {}).get("job") or {}).get("spec") or {}
                    for c in ((job.get("template") or {}).get("spec") or {}).get("containers") or []:
                        image = c.get("image", "")
                        for k, v in defaults.items():
                            image = image.replace("{{args." + k + "}}", str(v))
                        containers.append({**c, "image": image})
            for c in containers:
                image = c.get("image", "")
                repo_ = image.rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
                if repo_ == project_repo and image != self.r.project_image:
                    raise Broken(
                        "image", f"{ref(obj)} container {c['name']} ({image})", f"pipeline executors ({self.r.project_image})",
                        "the workloads and the pipeline run different builds of the project image (kustomize `images:` "
                        "or a hard-coded tag did not reach this one)",
                    )  # fmt: skip
                if repo_.endswith("tensorflow/serving"):
                    tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else "latest"
                    if tag.split("-")[0] != tfs_version:
                        raise Broken(
                            "image", f"{ref(obj)} container {c['name']} ({image})", f"tensorflow-serving-api {tfs_version} (clients and protos)",
                            "the TF Serving image and the client API the project is built and tested against differ",
                        )  # fmt: skip

    # --- 2. day 0: v1 in the model repository where TF Serving reads --------------------------------
    def day0(self) -> None:
        from freshrec.cluster.rehearsal_argo import RolloutController

        rollouts = self.c.objects.of_kind("Rollout")
        if not rollouts:
            raise Broken("missing-workload", "the overlay", "TF Serving", "renders no Rollout")
        rollout = rollouts[0]
        self.ns = rollout["metadata"]["namespace"]
        self.rollout = rollout
        ctl = RolloutController(self.c, rollout)
        self.controllers.append(ctl)
        self.ctl = ctl
        self.say(f"day 0: {ref(rollout)} stable revision; model v1 where it reads")
        with self.r.connection(
            "day-0 model v1 -> TF Serving (model volume)",
            "model repository (day 0, v1)",
            f"{ref(rollout)} TF Serving",
        ) as conn:
            ctl.start(ready_timeout_s=180, before_ready=self._place_v1)
            pod = ctl.pods[ctl.stable_hash][0]
            status = self._model_status(pod)
            conn.evidence = f"{pod.name} serves {status} from {self.models_where}"

    def _tfserving(self, pod: Any) -> dict[str, Any]:
        for c in pod.spec["containers"]:
            if "tensorflow_model_server" in " ".join(c.get("command") or []) or "tensorflow/serving" in c.get(
                "image", ""
            ):
                return c
        raise Broken(
            "missing-workload",
            ref(self.rollout),
            "a TF Serving container",
            "no container runs tensorflow_model_server",
        )

    def _model_config(self, pod: Any) -> list[tuple[str, str]]:
        """(model name, base path) from the TF Serving container's model config file, as the pod has it."""
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        c = self._tfserving(pod)
        path = _flag(c.get("args") or [], "model_config_file")
        if path is None:
            base = _flag(c.get("args") or [], "model_base_path") or "/models/" + (
                _flag(c.get("args") or [], "model_name") or "model"
            )
            return [(_flag(c.get("args") or [], "model_name") or "model", base)]
        deadline = time.monotonic() + 60
        host, where = self.r.host_path(pod, c["name"], path)
        while not host.is_file():
            if pod.phase == "Failed" or time.monotonic() > deadline:
                raise Broken(
                    "path",
                    f"{ref(self.rollout)} init containers",
                    f"TF Serving --model_config_file={path} ({where})",
                    "the model config file never appeared" + pod.logs_summary(),
                )
            time.sleep(0.2)
        config = model_server_config_pb2.ModelServerConfig()
        text_format.Parse(host.read_text(), config)
        return [(m.name, m.base_path) for m in config.model_config_list.config]

    def _place_v1(self, pods: list[Any]) -> None:
        pod = pods[0]
        models = self._model_config(pod)
        name, base = models[0]
        c = self._tfserving(pod)
        host, where = self.r.host_path(pod, c["name"], base if base.startswith("/") else "/" + base)
        self.model_name = name
        self.models_where = where
        self.tfs_base = (c["name"], base)
        if str(host).startswith("/nonexistent"):
            raise Broken("path", "model repository", f"TF Serving base_path {base}", where)
        v1 = self._bootstrap_model()
        self._day0_publish(v1)
        self.say(f"day 0: v1 published where the pipeline's push writes; TF Serving reads {where}")

    def _day0_publish(self, v1: Path) -> None:
        """Publish v1 from a pod shaped like the compiled pipeline's push task (see rehearsal_bootstrap)."""
        from freshrec.cluster.rehearsal_kfp import DEFAULT_RUNNER_SA, PipelineRunner, RunRecord

        runner = PipelineRunner(self.c, self.r.package, self.r.platform)
        label = next(
            (
                comp["executorLabel"]
                for name, comp in self.r.package["components"].items()
                if name == "comp-push"
            ),
            None,
        )
        if label is None:
            raise Broken(
                "missing-workload",
                "the compiled pipeline",
                "a push task",
                "the pipeline has no push component",
            )
        workdir = (
            self.r.package["root"]["inputDefinitions"]["parameters"]
            .get("workdir", {})
            .get("defaultValue", "/var/lib/freshrec")
        )
        record = RunRecord("day0", "day0", self.c.pipeline_namespace, DEFAULT_RUNNER_SA, {})
        runner._artifacts = v1.parent
        container = dict(runner.deployment[label]["container"])
        pod = runner._pod(
            record,
            "day0-push",
            label,
            container,
            ["python3", "-m", "freshrec.cluster.rehearsal_bootstrap"],
            ["publish", "/minio/mlpipeline/day0/v1", workdir],
            {"parameters": {}, "artifacts": {}},
        )
        pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] = "/minio/mlpipeline/day0"
        owner = f"day 0 (the pipeline's push task, {label}, publishing v1 as a previous run would have)"
        p = self.c.run_pod(pod, owner)
        p.wait(lambda x: x.phase in ("Succeeded", "Failed"), 180, "finished")
        p.stop()
        if p.phase != "Succeeded":
            raise Broken(
                "path", owner, f"model repository under {workdir}/models", p.failure + p.logs_summary(25)
            )
        self.day0_log = p.log_text("main")
        host, where = self.r.host_path(p, "main", f"{workdir}/models")
        if str(host).startswith("/nonexistent"):
            raise Broken(
                "path",
                f"the pipeline's push task writes {workdir}/models ({where})",
                f"{ref(self.rollout)} TF Serving reads {self.models_where}",
                "the compiled pipeline mounts no volume at the model repository: every version it pushes stays "
                "in the task pod's filesystem and is gone with it",
            )

    def _bootstrap_model(self) -> Path:
        cache = self.r.bootstrap_cache or (self.c.root / "bootstrap")
        out = cache / "v1"
        if (out / "saved_model.pb").is_file() and (cache / "v1.reference.parquet").is_file():
            _readable(out)
            return out
        cache.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run(
            [sys.executable, "-m", "freshrec.cluster.rehearsal_bootstrap", "train", str(cache)],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
        if proc.returncode != 0 or not (out / "saved_model.pb").is_file():  # the reference: rc 1
            raise Broken(
                "bootstrap",
                "the rehearsal (day-0 training)",
                "model v1",
                proc.stdout[-2000:] + proc.stderr[-3000:],
            )
        _readable(out)
        return out

    def _model_status(self, pod: Any, version: int | None = None, timeout_s: float = 60) -> str:
        import requests

        c = self._tfserving(pod)
        rest = int(_flag(c.get("args") or [], "rest_api_port") or 8501)
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                r = requests.get(f"http://{pod.net.ip}:{rest}/v1/models/{self.model_name}", timeout=5)
                states = {int(s["version"]): s["state"] for s in r.json().get("model_version_status", [])}
                last = json.dumps(states)
                if (version is None and "AVAILABLE" in states.values()) or states.get(version) == "AVAILABLE":
                    return f"v{version or max(v for v, s in states.items() if s == 'AVAILABLE')} AVAILABLE"
            except (requests.RequestException, ValueError) as exc:
                last = str(exc)
            time.sleep(0.5)
        raise Broken(
            "path",
            "model repository",
            f"TF Serving pod {pod.name} (model {self.model_name})",
            f"version {version} not AVAILABLE after {timeout_s:.0f} s: {last}" + pod.logs_summary(12),
        )

    # --- 3. Feast registry ---------------------------------------------------------------------------
    def apply_jobs(self) -> None:
        """``kubectl apply -k`` starts the rendered Jobs at once; they retry until they succeed or give up."""
        self.jobs: dict[str, dict[str, Any]] = {}
        for job in self.c.objects.of_kind("Job"):
            self.jobs[ref(job)] = self.c.run_job_background(job, timeout_s=300, backoff_s=2.0)
            self.say(f"apply: {ref(job)} started")
        # Their first pods are created before the rest (as the Job controller reacts at once to the apply).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            any(p.owner.startswith(key) for p in list(self.c.pods.values())) or h["pod"] or h["error"]
            for key, h in self.jobs.items()
        ):
            time.sleep(0.1)

    def feast_apply(self) -> None:
        job = self.r.one("feast-apply", ("Job",), "Feast registry (PostgreSQL)")
        self.say(f"feast apply: waiting for {ref(job)}")
        with self.r.connection(
            "feast apply Job -> Feast registry (PostgreSQL)", ref(job), "PostgreSQL (the registry Service)"
        ) as conn:
            holder = self.jobs[ref(job)]
            holder["thread"].join(timeout=400)
            if holder["error"] is not None:
                raise holder["error"]
            pod = holder["pod"]
            if pod is None or pod.phase != "Succeeded":
                detail = (pod.failure + pod.logs_summary(30)) if pod else "the Job did not finish"
                raise Broken(
                    "pod-failed", ref(job), "Feast registry", f"the Job gave up after its retries: {detail}"
                )
            used = [
                x for x in self.c.network.connections if x.client == pod.name and "host:postgres" in x.backend
            ]
            if not used:
                raise Broken(
                    "path",
                    ref(job),
                    "PostgreSQL registry",
                    "the Job succeeded without connecting to PostgreSQL: the registry went elsewhere"
                    + pod.logs_summary(15),
                )
            conn.evidence = (
                f"{pod.name}; {len(used)} connection(s) via {used[0].service}; {self._pg_tables()}"
            )

    def _pg_tables(self) -> str:
        import psycopg

        def tables() -> list[Any]:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{self.r.pg_db}") as pg:
                query = "select table_name from information_schema.tables where table_schema='public'"
                return pg.execute(query).fetchall()

        rows = self.on_host(tables)
        return f"registry tables {sorted(r[0] for r in rows)[:6]}"

    # --- 4. serving ----------------------------------------------------------------------------------
    def serving(self) -> None:
        self.say("serving: gateway, online learner, stream feature job")
        gateway = self.r.one("gateway", ("Deployment", "StatefulSet"), "users' ranking requests")
        learner = self.r.one("online-learner", ("Deployment", "StatefulSet"), "the event stream")
        self.gateway_pods = self.c.start_workload(gateway)
        self.learner_pods = self.c.start_workload(learner)
        self.gateway, self.learner = gateway, learner
        stream = self.r.workloads("stream-features", ("Deployment", "StatefulSet"))
        self.stream = stream[0] if stream else None
        self.stream_pods = self.c.start_workload(stream[0]) if stream else []
        if not stream:
            self.c.note(
                "no stream feature job is rendered (issue 14 builds it): its connections are not rehearsed"
            )
        # `kubectl apply` starts every Deployment: the others of the project (e.g. the event sink) too.
        started = {id(gateway), id(learner), *(id(x) for x in stream)}
        self.other_pods = []
        for obj in self.c.objects.of_kind("Deployment"):
            containers = ((pod_templates(obj) or {}).get("spec") or {}).get("containers") or []
            ours = any(
                c.get("image", "").rsplit(":", 1)[0] == self.r.project_image.rsplit(":", 1)[0]
                for c in containers
            )
            if id(obj) not in started and ours:
                self.other_pods += self.c.start_workload(obj)
        for p in self.gateway_pods + self.learner_pods + self.stream_pods + self.other_pods:
            p.wait(lambda x: x.ready, 180, "ready")
        self.say("serving: ready")

    # --- 5. submit and the pipeline up to the handoff ---------------------------------------------------
    def submit(self) -> None:
        from freshrec.pipelines.submit import make_client, submit

        kfp_name, kfp_ns, _ = self.c.kfp_service
        svc = self.c.objects.get("Service", kfp_ns, kfp_name)
        url = f"http://{svc['spec']['clusterIP']}:8888"
        params = {p for p in self.r.package["root"]["inputDefinitions"]["parameters"]}
        wanted = {
            "dataset": "synthetic",
            "epochs": 1,
            "rollout_mode": "argo",
            "settings_json": json.dumps(self.r.submit_settings),
        }
        arguments = {k: v for k, v in wanted.items() if k in params}
        with self.r.connection(
            "user -> KFP API -> pipeline run", "freshrec pipeline submit (kfp.Client)", f"KFP API ({url})"
        ) as conn:
            from freshrec.config import load_settings
            from freshrec.pipelines.submit import run_request

            request = run_request(load_settings())  # what `freshrec pipeline submit` sends
            result = submit(
                make_client(url, namespace=request.namespace),
                self.r.pipeline,
                experiment="freshrec-rehearsal",
                arguments=arguments,
                run_name="rehearsal",
                namespace=request.namespace,
                service_account=request.service_account,
            )
            run = self.c.kfp.runs[result.id]
            self.run = run
            conn.evidence = (
                f"run {run.run_id} in namespace {run.namespace} as service account {run.service_account}"
            )
        self.say(f"pipeline run {run.run_id}: waiting for its tasks")
        self._wait_task("ingest")
        self._check_ingest()
        self._wait_task("features")
        self._check_features()
        self._wait_task("train")
        self._check_warm_start()
        self._wait_task("push")
        self._check_push()

    def _task(self, name: str) -> Any:
        for key, t in self.run.tasks.items():
            if key.split("/")[-1] == name:
                return t
        return None

    def _wait_task(self, name: str, timeout_s: float = 600) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            t = self._task(name)
            if t is not None and t.state in ("SUCCEEDED", "FAILED", "SKIPPED"):
                if t.state != "SUCCEEDED":
                    raise Broken(
                        "pipeline",
                        f"pipeline task {name} ({t.state})",
                        "the rest of the run",
                        (t.reason or self.run.error)[-6000:],
                    )
                return t
            if self.run.state in ("FAILED", "SUCCEEDED") and t is None:
                if self.run.broken is not None:
                    raise self.run.broken
                raise Broken(
                    "pipeline",
                    f"pipeline run {self.run.run_id} ({self.run.state})",
                    f"task {name}",
                    self.run.error or "the run ended before this task",
                )
            time.sleep(0.5)
        raise Broken(
            "timeout",
            f"pipeline run {self.run.run_id}",
            f"task {name}",
            f"not finished after {timeout_s:.0f} s",
        )

    def _task_pod(self, name: str) -> Any:
        t = self._task(name)
        return self.c.pods.get(t.pod) if t else None

    def _task_workdir(self, name: str) -> tuple[Any, str]:
        pod = self._task_pod(name)
        env = {e["name"]: e.get("value") for e in pod.spec["containers"][0].get("env") or []}
        args = pod.spec["containers"][0].get("args") or []
        workdir = env.get("FRESHREC_WORKDIR")
        for a in args:
            if a.startswith("{") and '"workdir"' in a:
                with contextlib.suppress(ValueError, KeyError):
                    workdir = json.loads(a)["inputs"]["parameterValues"]["workdir"]
        return pod, workdir or "/var/lib/freshrec"

    def _check_ingest(self) -> None:
        pod, workdir = self._task_workdir("ingest")
        host, where = self.r.host_path(pod, "main", f"{workdir}/eventlog")
        with self.r.connection(
            "pipeline ingest -> event log (data volume)",
            f"KFP task ingest ({where})",
            "event log readers (analysis Job, drift CronJob)",
        ) as conn:
            files = list(host.rglob("*.parquet")) if host.is_dir() else []
            if not files:
                raise Broken(
                    "path",
                    f"KFP task ingest writes {workdir}/eventlog ({where})",
                    "a volume others read",
                    "no event log files landed on a volume"
                    + f"; claims: {self.r.claims_listing(pod.namespace)}",
                )
            conn.evidence = f"{len(files)} files at {where}"
            self.eventlog_where = where

    def _check_features(self) -> None:
        pod = self._task_pod("features")
        with self.r.connection(
            "pipeline features -> Feast online store (Redis) + registry (PostgreSQL)",
            f"KFP task features ({pod.name})",
            "the gateway's Feast (Redis + PostgreSQL Services)",
        ) as conn:
            used = {
                b
                for x in self.c.network.connections
                if x.client == pod.name
                for b in ("redis", "postgres")
                if f"host:{b}" in x.backend
            }
            if used != {"redis", "postgres"}:
                raise Broken(
                    "path", f"KFP task features (connected to {sorted(used) or 'no store Service'})",
                    "Feast stores the gateway reads (Redis online store, PostgreSQL registry)",
                    "the task's Feast apply/materialize did not go to the cluster's stores (it wrote a local SQLite/file store "
                    "in its own workdir instead?)" + pod.logs_summary(15),
                )  # fmt: skip
            conn.evidence = f"{self._redis_keys()} Redis keys after materialize"

    def on_host(self, fn: Any) -> Any:
        """Run ``fn`` in this machine's network namespace (the story itself runs in the cluster's)."""
        return self.c.network.host_pool.submit(fn).result()

    def _redis_keys(self) -> int:
        import redis as redis_lib

        return self.on_host(
            lambda: int(redis_lib.Redis(host="127.0.0.1", port=6379, db=self.r.redis_db).dbsize())
        )

    def _check_warm_start(self) -> None:
        t = self._task("train")
        pod, workdir = self._task_workdir("train")
        _, where = self.r.host_path(pod, "main", f"{workdir}/models")
        with self.r.connection(
            "model repository (stable v1) -> pipeline train (warm start)",
            f"model repository at {self.models_where}",
            f"KFP task train (reads {where})",
        ) as conn:
            log_text = pod.log_text("main") if pod else ""
            exec_out = self._artifact_metadata("train", "model")
            if not exec_out.get("warm_started"):
                raise Broken(
                    "path", f"model repository (stable v1) at {self.models_where}", f"KFP task train warm start ({where})",
                    f"the train task found no stable version (metadata {exec_out}): it trained from scratch "
                    "because its view of the model repository is not the one TF Serving serves" + log_text[-1500:],
                )  # fmt: skip
            conn.evidence = f"warm-started from v{exec_out.get('parent_version')}"
            _ = t

    def _artifact_metadata(self, task: str, artifact: str) -> dict[str, Any]:
        folder = self.c.root / "kfp" / self.run.run_id
        for path in folder.rglob("executor_output.json"):
            if path.parent.name.endswith(task) or f"-{task}" in path.parent.name or path.parent.name == task:
                out = json.loads(path.read_text())
                arts = (out.get("artifacts") or {}).get(artifact) or {}
                items = arts.get("artifacts") or []
                if items:
                    return items[0].get("metadata") or {}
        return {}

    def _check_push(self) -> None:
        t = self._task("push")
        version = int(t.outputs.get("Output"))
        self.version = version
        pod = self.ctl.pods[self.ctl.stable_hash][0]
        host, _ = self.r.host_path(pod, self.tfs_base[0], self.tfs_base[1])
        pod_p, workdir = self._task_workdir("push")
        _, pushed_where = self.r.host_path(pod_p, "main", f"{workdir}/models")
        with self.r.connection(
            "pipeline push -> model repository TF Serving reads",
            f"KFP task push (v{version} into {pushed_where})",
            f"TF Serving ({self.models_where})",
        ) as conn:
            if not (host / str(version) / "saved_model.pb").is_file():
                raise Broken(
                    "path", f"KFP task push: v{version} into {pushed_where}", f"TF Serving reads {self.tfs_base[1]} = {self.models_where}",
                    f"v{version} is not where TF Serving reads (versions there: {sorted(p.name for p in host.iterdir()) if host.is_dir() else []})",
                )  # fmt: skip
            conn.evidence = f"v{version} at {self.models_where}"
        drift = self.r.workloads("drift-monitor", ("CronJob",))
        # The drift CronJob reads the *stable* version's reference: written by the rollout task once the
        # canary is promoted (push keeps each version's own copy), so it is checked after the verdict.
        self._reference_check = (drift[0], pod_p, workdir) if drift else None

    def _check_reference(self, cronjob: dict[str, Any], push_pod: Any, workdir: str) -> None:
        tpl = pod_templates(cronjob)
        c = tpl["spec"]["containers"][0]
        tokens = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
        reference = _opt(tokens, "reference")
        if reference is None:
            return
        host = self._static_host_path(cronjob, c, reference)
        with self.r.connection(
            "pipeline push -> drift reference profile",
            f"KFP task push ({push_pod.name})",
            f"{ref(cronjob)} --reference={reference}",
            soft=True,
        ) as conn:
            present = (
                host is not None and host.exists() and any(host.rglob("*"))
                if host and host.is_dir()
                else (host is not None and host.exists())
            )
            if not present:
                raise Broken(
                    "path", f"KFP task push (writes under {workdir})", f"{ref(cronjob)} reads --reference={reference}",
                    f"nothing is at the reader's path after the push (claims: {self.r.claims_listing(cronjob['metadata']['namespace'])})",
                )  # fmt: skip
            conn.evidence = f"{reference} has {sum(1 for _ in host.rglob('*')) if host.is_dir() else 1} files"

    def _static_host_path(self, owner: dict[str, Any], container: dict[str, Any], path: str) -> Path | None:
        tpl = pod_templates(owner) or (owner.get("spec") or {}).get("template") or {"spec": {}}
        vols = {v["name"]: v for v in tpl["spec"].get("volumes") or []}
        found = mount_for(container, path)
        if found is None:
            return None
        m, rest = found
        claim = (vols.get(m["name"]) or {}).get("persistentVolumeClaim", {}).get("claimName")
        if not claim:
            return None
        base = self.c.claim_dir(owner["metadata"]["namespace"], claim, ref(owner))
        sub = m.get("subPath", "")
        return base / sub / rest if sub else base / rest

    # --- 6. handoff ----------------------------------------------------------------------------------------
    def handoff(self) -> None:
        from freshrec.rollout.k8s import MODEL_VERSION_ANNOTATION

        identity = f"system:serviceaccount:{self.run.namespace}:{self.run.service_account}"
        self.say(f"handoff: the rollout task patches {ref(self.rollout)} as {identity}")
        with self.r.connection(
            "rollout task -> Kubernetes API -> Rollout",
            f"KFP task rollout as {identity}",
            f"{ref(self.rollout)} (via the API, with the rendered RBAC)",
        ) as conn:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                mine = [q for q in self.api.requests_by(identity)]
                denied = [q for q in mine if q.code == 403]
                if denied:
                    q = denied[0]
                    raise Broken(
                        "rbac",
                        f"KFP task rollout as {identity}",
                        f"{q.resource} {q.namespace}/{q.name} ({q.verb})",
                        q.message,
                    )
                obj = self.api.get("Rollout", self.ns, self.rollout["metadata"]["name"])
                annotations = obj["spec"]["template"]["metadata"].get("annotations") or {}
                if annotations.get(MODEL_VERSION_ANNOTATION) == str(self.version):
                    verbs = sorted({f"{q.verb} {q.resource}" for q in mine if q.code < 400})
                    conn.evidence = f"{MODEL_VERSION_ANNOTATION}={self.version}; {identity} used {verbs}"
                    break
                t = self._task("rollout")
                if t is not None and t.state in ("SUCCEEDED", "FAILED"):
                    raise Broken(
                        "handoff", f"KFP task rollout ({t.state}, outcome {t.outputs.get('Output')})", f"{ref(self.rollout)}",
                        f"the task ended without patching the Rollout (it made {len(mine)} API requests as {identity})" + (t.reason or "")[-3000:],
                    )  # fmt: skip
                time.sleep(0.3)
            else:
                raise Broken(
                    "timeout",
                    "KFP task rollout",
                    ref(self.rollout),
                    "the Rollout was not patched within 300 s",
                )
        with self.r.connection(
            "Rollout canary -> TF Serving loads the new version",
            f"{ref(self.rollout)} (model-version {self.version})",
            "canary TF Serving pod (model volume)",
        ) as conn:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and self.ctl.current_hash == self.ctl.stable_hash:
                time.sleep(0.3)
            while time.monotonic() < deadline and not (
                self.ctl.pods.get(self.ctl.current_hash)
                and all(p.ready for p in self.ctl.pods[self.ctl.current_hash])
            ):
                if self.ctl.error is not None:
                    raise self.ctl.error
                obj = self.api.get("Rollout", self.ns, self.rollout["metadata"]["name"])
                if (obj.get("status") or {}).get("abort"):
                    raise Broken(
                        "path",
                        f"model repository v{self.version}",
                        "canary TF Serving pod",
                        obj["status"].get("message", ""),
                    )
                time.sleep(0.3)
            pods = self.ctl.pods.get(self.ctl.current_hash) or []
            if not pods:
                raise Broken("timeout", ref(self.rollout), "canary pods", "no canary pods after 240 s")
            conn.evidence = f"{pods[0].name}: {self._model_status(pods[0], self.version)}"

    # --- 7. traffic ----------------------------------------------------------------------------------------
    def traffic(self) -> None:
        from freshrec.cluster.rehearsal_users import Users

        users = Users(self)
        self.users = users
        self.say(
            f"traffic: ranking requests through the gateway Service (at least {self.r.n_requests}, until the "
            f"canary has the {self.canary_clicks_wanted()} clicks its analysis waits for)"
        )
        users.rank_and_check()
        users.clicks_and_check()
        self.ctl.release_pause()

    def canary_clicks_wanted(self) -> int:
        """Canary clicks the Rollout's next analysis waits for (its ``min-clicks`` arg), with a margin.

        The users' traffic stands for what the canary sees during its pause; the analysis Job (as rendered,
        ``--min-clicks={{args.min-clicks}}``) waits up to its ``--max-wait-s`` until the canary has that many.
        """
        obj = self.api.get("Rollout", self.ns, self.rollout["metadata"]["name"])
        steps = ((obj["spec"].get("strategy") or {}).get("canary") or {}).get("steps") or []
        current = int((obj.get("status") or {}).get("currentStepIndex") or 0)
        for step in steps[current:]:
            if "analysis" not in step:
                continue
            given = {a["name"]: a.get("value") for a in step["analysis"].get("args") or []}
            value = given.get("min-clicks")
            if value is None:
                for t in step["analysis"].get("templates") or []:
                    tpl = self.api.get("AnalysisTemplate", self.ns, t["templateName"]) or {}
                    for a in (tpl.get("spec") or {}).get("args") or []:
                        if a["name"] == "min-clicks" and a.get("value") is not None:
                            value = a["value"]
            try:
                return int(int(value or 0) * 1.1 + 0.999)
            except ValueError:
                return 0
        return 0

    # --- 8. verdict ----------------------------------------------------------------------------------------
    def verdict(self) -> None:
        ctl = self.ctl
        self.say("verdict: waiting for the canary's analysis")
        deadline = time.monotonic() + 900
        while not ctl.analyses and time.monotonic() < deadline:
            if ctl.error is not None:
                raise ctl.error
            obj = self.api.get("Rollout", self.ns, self.rollout["metadata"]["name"])
            if (obj.get("status") or {}).get("abort"):
                raise Broken(
                    "rollout",
                    ref(self.rollout),
                    "its analysis",
                    obj["status"].get("message", "aborted before any analysis"),
                )
            time.sleep(0.5)
        if not ctl.analyses:
            raise Broken("timeout", ref(self.rollout), "its analysis", "no analysis ran")
        outcome = ctl.analyses[0]
        job_metrics = [m for m in outcome.metrics if m in outcome.jobs]
        prom_metrics = [m for m in outcome.metrics if m not in outcome.jobs]
        with self.r.connection(
            "prediction log + clicks -> analysis Job verdict",
            "prediction log and event log",
            f"AnalysisRun {outcome.name} Job metric(s) {job_metrics}",
        ) as conn:
            if not job_metrics:
                raise Broken(
                    "missing-workload",
                    ref(self.rollout),
                    "an analysis Job",
                    "the canary's analysis runs no Job metric (no online-quality verdict)",
                )
            for m in job_metrics:
                pod = outcome.jobs[m]
                state = next(iter(pod.containers.values()))
                text = pod.log_text(state.name)
                result = _last_json(text)
                code = state.exit_code
                if code not in (0, 1):
                    raise Broken(
                        "analysis", "prediction log + event log", f"analysis Job {pod.name} (exit {code})",
                        f"no verdict: {'; '.join((result or {}).get('reasons', [])) or text[-2500:]}",
                    )  # fmt: skip
                counts = (result or {}).get("counts")
                conn.evidence = f"{m}: {(result or {}).get('verdict')} (exit {code}), counts {counts}"
        with self.r.connection(
            "Prometheus analyses on the canary -> inconclusive, not a pass",
            "Prometheus stand-in (no data)",
            f"AnalysisRun {outcome.name} metrics {prom_metrics}",
        ) as conn:
            bad = {m: outcome.metrics[m] for m in prom_metrics if outcome.metrics[m] != "Inconclusive"}
            if bad:
                raise Broken(
                    "empty-analysis",
                    "Prometheus (no data)",
                    f"AnalysisRun {outcome.name}",
                    f"metrics {bad} on empty results; they must be Inconclusive: {[outcome.messages.get(m) for m in bad]}",
                )
            conn.evidence = ", ".join(f"{m}={outcome.metrics[m]}" for m in prom_metrics) or "none"
        if outcome.phase == "Inconclusive":
            job_ok = all(outcome.metrics[m] == "Successful" for m in job_metrics)
            self.say(
                f"verdict: inconclusive (Prometheus has no data); on-call {'promotes' if job_ok else 'aborts'} on the Job's verdict"
            )
            self._operator(promote=job_ok)
        self._finish_rollout()

    def _operator(self, promote: bool) -> None:
        from freshrec.rollout.k8s import ArgoRolloutDriver

        client = _admin_client(self.c)
        driver = ArgoRolloutDriver(client, self.ns, self.rollout["metadata"]["name"])
        while True:
            st = driver.status()
            if st.paused or st.phase == "Paused":
                break
            time.sleep(0.3)
        if promote:
            driver.promote(full=True)
        else:
            driver.abort()
        self.c.note(
            f"on-call {'promoted' if promote else 'aborted'} the canary after inconclusive Prometheus analyses (`freshrec rollout promote|abort`)"
        )

    def _finish_rollout(self) -> None:
        with self.r.connection(
            "canary verdict -> Rollout promoted/aborted -> rollout task",
            f"{ref(self.rollout)} status",
            f"KFP task rollout (run {self.run.run_id})",
        ) as conn:
            t = self._wait_task_end("rollout", 600)
            obj = self.api.get("Rollout", self.ns, self.rollout["metadata"]["name"])
            st = obj.get("status") or {}
            promoted = (
                st.get("phase") == "Healthy"
                and st.get("stableRS") == st.get("currentPodHash")
                and not st.get("abort")
            )
            outcome = t.outputs.get("Output") if t.state == "SUCCEEDED" else "failed"
            if promoted and outcome != "promoted":
                raise Broken(
                    "handoff",
                    f"{ref(self.rollout)} promoted",
                    f"KFP task rollout ({t.state}, {outcome})",
                    "the task did not follow the Rollout to promotion" + (t.reason or "")[-2000:],
                )
            if not promoted and t.state == "SUCCEEDED" and outcome == "promoted":
                raise Broken(
                    "handoff",
                    f"{ref(self.rollout)} {st.get('phase')}: {st.get('message', '')}",
                    "KFP task rollout (promoted)",
                    "the task reported a promotion the Rollout did not make",
                )
            conn.evidence = f"Rollout {st.get('phase')}; task {t.state} ({outcome}); run {self.run.state}"
            self.promoted = promoted
        if promoted and getattr(self, "_reference_check", None):
            self._check_reference(*self._reference_check)

    def _wait_task_end(self, name: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            t = self._task(name)
            if t is not None and t.state in ("SUCCEEDED", "FAILED"):
                return t
            time.sleep(0.5)
        raise Broken("timeout", f"KFP task {name}", "its end", f"still running after {timeout_s:.0f} s")

    # --- 9. online ------------------------------------------------------------------------------------------
    def online(self) -> None:
        from freshrec.features.stream import METRIC_PREFIX

        # Traffic goes on after the verdict: the learner (following the new stable version, as rendered
        # with --follow-stable) learns from it and exports a descendant of what the stable pods serve.
        # The stream feature job rewrites the clicking users' activity rows (what the gateway reads next).
        stream_job = bool(self.stream_pods)
        if stream_job:
            rows_before = self.users.feast_rows()
            try:
                written_before = self.users.stream_job_metric(f"{METRIC_PREFIX}_rows_written_total") or 0.0
            except (Broken, OSError):  # the connection below names what is missing
                written_before = 0.0
        self.users.clicks_after_promotion()
        self.users.learner_consumed()
        if stream_job:
            self.users.stream_job_checks(rows_before, written_before)
        self.users.learner_export_served()

    def _retraining_run(self, drift: dict[str, Any], pod: Any, runs_before: set[str]) -> None:
        """The drift CronJob's retraining run reached the KFP API with its pod's projected token."""
        spec = pod_templates(drift)["spec"]
        account = spec.get("serviceAccountName") or "default"
        want = f"system:serviceaccount:{pod.namespace}:{account}"
        with self.r.connection(
            "drift CronJob -> KFP API (retraining run, service-account token)",
            f"{ref(drift)} (as {want})",
            "KFP API (ml-pipeline)",
        ) as conn:
            said = _drift_pod_says(pod)
            new = [r for k, r in self.c.kfp.runs.items() if k not in runs_before]
            if not new:
                raise Broken(
                    "path", f"{ref(drift)} after the users' drifted clicks", "KFP API (ml-pipeline)",
                    f"no retraining run was submitted ({said})" + pod.logs_summary(30),
                )  # fmt: skip
            run = new[0]
            if run.submitted_by != want:
                raise Broken(
                    "rbac", f"{ref(drift)} retraining run {run.run_id}", "KFP API (ml-pipeline)",
                    f"the run was submitted as {run.submitted_by or 'no identity (no bearer token)'}, not with the "
                    f"pod's projected token for {want}: KFP's multi-user API would refuse it",
                )  # fmt: skip
            if run.namespace != self.ns:
                raise Broken(
                    "namespace", f"{ref(drift)} retraining run {run.run_id}", f"namespace {self.ns}",
                    f"the run went to namespace {run.namespace}, not the layout's {self.ns}",
                )  # fmt: skip
            conn.evidence = (
                f"run {run.run_id} ({run.name}) as {run.submitted_by} in {run.namespace}, runner "
                f"{run.service_account}; {said[:160]}"
            )

    # --- 10. schedules ----------------------------------------------------------------------------------------
    def schedules(self) -> None:
        mat = self.r.workloads("materialize", ("CronJob",))
        if not mat:
            raise Broken(
                "missing-workload",
                "Feast offline tables",
                "a materialisation CronJob",
                "the overlay renders none",
            )
        with self.r.connection(
            "pipeline tables -> materialisation CronJob -> Redis",
            f"{ref(mat[0])}",
            "Feast online store (Redis)",
        ) as conn:
            before = self._redis_keys()
            pod = self.c.trigger_cronjob(mat[0], 300)
            if pod.phase != "Succeeded":
                raise Broken(
                    "pod-failed", ref(mat[0]), "Feast online store", pod.failure + pod.logs_summary(30)
                )
            conn.evidence = f"Redis keys {before} -> {self._redis_keys()}"
        drift = self.r.one("drift-monitor", ("CronJob",), "the event log and the reference profile")
        # The drift the monitor must act on, and the retraining run it submits: accepted, not executed.
        self.users.drifted_clicks()
        runs_before = set(self.c.kfp.runs)
        self.c.kfp.hold_new_runs = True
        with self.r.connection(
            "event log + reference profile -> drift CronJob",
            f"event log ({getattr(self, 'eventlog_where', '?')}) and the pipeline's reference profile",
            ref(drift),
        ) as conn:
            pod = self.c.trigger_cronjob(drift, 600)
            if pod.phase != "Succeeded":
                raise Broken(
                    "pod-failed",
                    "event log + reference profile",
                    ref(drift),
                    pod.failure + pod.logs_summary(40),
                )
            conn.evidence = f"{pod.name} succeeded"
        self._retraining_run(drift, pod, runs_before)
        env_push = [
            e
            for c in pod_templates(drift)["spec"]["containers"]
            for e in c.get("env") or []
            if "PUSHGATEWAY" in e["name"]
        ]
        if env_push:
            with self.r.connection(
                "drift CronJob -> Pushgateway", ref(drift), "prometheus-pushgateway.monitoring", soft=True
            ) as conn:
                if not self.c.stand_ins.pushes:
                    raise Broken("path", ref(drift), "Pushgateway", "the drift check pushed no metrics")
                conn.evidence = (
                    f"{len(self.c.stand_ins.pushes)} grouping(s): {sorted(self.c.stand_ins.pushes)[:3]}"
                )


def _drift_pod_says(pod: Any) -> str:
    """The drift check's trigger line (``trigger: launch — ...``) from its log, or a note that it has none."""
    text = "\n".join(pod.log_tail(n, 400) for n in pod.containers)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("trigger:")]
    return lines[-1] if lines else "no trigger line in its log"


def _readable(folder: Path) -> None:
    """The day-0 export as an artifact store holds it: readable by the pods' users."""
    reference = folder.with_name(folder.name + ".reference.parquet")
    for p in [folder.parent, folder, *folder.rglob("*"), *([reference] if reference.exists() else [])]:
        p.chmod(p.stat().st_mode | (0o555 if p.is_dir() else 0o444))


def _last_json(text: str) -> dict[str, Any] | None:
    """The last JSON object printed in a log (the analysis Job prints its result with --json)."""
    end = text.rfind("}")
    while end != -1:
        start = text.rfind("{", 0, end)
        depth = 0
        for i in range(end, -1, -1):
            if text[i] == "}":
                depth += 1
            elif text[i] == "{":
                depth -= 1
                if depth == 0:
                    start = i
                    break
        try:
            return json.loads(text[start : end + 1])
        except ValueError:
            end = text.rfind("}", 0, start)
    return None


def _admin_client(cluster: Any) -> Any:
    """A kubernetes client for the on-call engineer (an admin kubeconfig) against the loopback API."""
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = f"https://{cluster.api_address[0]}:{cluster.api_address[1]}"
    cfg.ssl_ca_cert = str(cluster.api.tls.ca_file)
    cfg.api_key = {"authorization": cluster.api.admin_token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(cfg)


__all__ = ["Story", "ThreadPoolExecutor", "threading", "uuid"]
