"""The Argo Rollouts controller, played for one Rollout of the rehearsal.

It follows the Rollout through the loopback API server as the real controller does: a new pod-template
hash starts a canary (pods of the new template, labelled ``rollouts-pod-template-hash``; the canary and
stable Services' selectors pinned to their hashes), then ``spec.strategy.canary.steps`` are walked —

- ``setWeight``: the Gateway API routes named in ``trafficRouting.plugins.argoproj-labs/gatewayAPI`` get
  the canary/stable ``backendRefs`` weights (patched through the API, as the plugin does);
- ``pause``: a duration (shortened by the rehearsal's time scale) or, without one, until promoted;
- ``analysis``: an ``AnalysisRun`` is created from the named ``AnalysisTemplate``s with the step's args
  (``value``, ``podTemplateHashValue``, ``fieldRef`` on the Rollout); ``job`` metrics run their Job's pod
  in the cluster, ``prometheus`` metrics query the address their args give (the stand-in) and are judged
  by Argo's rules (:mod:`freshrec.cluster.rehearsal_prom`); Failed/Error aborts the rollout, Inconclusive
  pauses it (``InconclusiveAnalysis``) until someone promotes or aborts;

and at the end the canary becomes stable (or, on abort, the stable pods keep all traffic). Status is
written to the ``status`` subresource, validated against the Rollout CRD. Metric ``interval``s and pause
durations are multiplied by ``time_scale``; the workloads' own args (an analysis Job's ``--max-wait-s``)
are not touched.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from freshrec.cluster.rehearsal_objects import Broken, field_value, pod_templates, ref
from freshrec.cluster.rehearsal_prom import assess_metric, evaluate_measurement, prometheus_result, worst

log = logging.getLogger(__name__)

GROUP = "argoproj.io"
HASH_LABEL = "rollouts-pod-template-hash"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


def duration_s(value: Any) -> float:
    """A Go duration (``300s``, ``1m``) or a number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.match(str(value).strip())
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class AnalysisOutcome:
    name: str
    phase: str
    metrics: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, Any] = field(default_factory=dict)  # metric -> Pod of its Job


class RolloutController:
    """See the module docstring."""

    def __init__(self, cluster: Any, rollout: dict[str, Any]) -> None:
        self.cluster = cluster
        self.ns = rollout["metadata"]["namespace"]
        self.name = rollout["metadata"]["name"]
        self.ref = ref(rollout)
        self.stable_hash: str | None = None
        self.current_hash: str | None = None
        self.pods: dict[str, list[Any]] = {}
        self.timeline: list[str] = []
        self.analyses: list[AnalysisOutcome] = []
        self.weights: list[int] = []
        self.error: Broken | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The first timed pause lasts until the rehearsal's users have sent their traffic (release_pause):
        # what the canary is exposed to in the cluster during that pause, here in fewer seconds.
        self._pause_gate = threading.Event()

    # --- API access --------------------------------------------------------------------------------
    def obj(self) -> dict[str, Any]:
        got = self.cluster.api.get("Rollout", self.ns, self.name)
        if got is None:
            raise Broken("missing-reference", "Argo Rollouts controller", self.ref, "the Rollout is gone")
        return got

    def status(self, **fields: Any) -> None:
        obj = self.obj()
        fields.setdefault("observedGeneration", str(obj["metadata"].get("generation", 1)))
        self.cluster.api.patch("Rollout", self.ns, self.name, {"status": fields}, sub="status")

    def log(self, text: str) -> None:
        self.timeline.append(f"{time.strftime('%H:%M:%S')} {text}")
        log.info("rollout %s: %s", self.name, text)

    def _canary(self, obj: dict[str, Any]) -> dict[str, Any]:
        return ((obj.get("spec") or {}).get("strategy") or {}).get("canary") or {}

    def _pin_service(self, service: str | None, h: str) -> None:
        if not service:
            return
        svc = self.cluster.api.get("Service", self.ns, service)
        if svc is None:
            raise Broken(
                "missing-reference",
                self.ref,
                f"Service {self.ns}/{service}",
                "canary/stable Service named by the Rollout does not exist",
            )
        self.cluster.api.patch("Service", self.ns, service, {"spec": {"selector": {HASH_LABEL: h}}})

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self, ready_timeout_s: float, before_ready: Any = None) -> None:
        """Bring up the stable revision (the rendered template), then follow the Rollout.

        ``before_ready(pods)`` runs once the pods are started (e.g. to put the first model where they read).
        """
        obj = self.obj()
        h = template_hash(obj["spec"]["template"])
        self.pods[h] = self._start_pods(obj, h)
        if before_ready is not None:
            before_ready(self.pods[h])
        for p in self.pods[h]:
            p.wait(lambda x: x.ready, ready_timeout_s, "ready")
        canary = self._canary(obj)
        for svc in (canary.get("stableService"), canary.get("canaryService")):
            self._pin_service(svc, h)
        self.stable_hash = self.current_hash = h
        steps = canary.get("steps") or []
        self.status(phase="Healthy", stableRS=h, currentPodHash=h, currentStepIndex=len(steps), message="")
        self.log(f"revision {h} is stable ({len(self.pods[h])} pod(s) ready)")
        self._thread = threading.Thread(target=self._follow, name=f"argo-{self.name}", daemon=True)
        self._thread.start()

    def _start_pods(self, obj: dict[str, Any], h: str) -> list[Any]:
        return self.cluster.start_workload(obj, labels={HASH_LABEL: h}, suffix=f"-{h[:5]}")

    def release_pause(self) -> None:
        """Let timed pauses end (the traffic they stand for has been sent)."""
        self._pause_gate.set()

    def stop(self) -> None:
        self._stop.set()
        self._pause_gate.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        self.cluster.network.enter_cluster()
        while not self._stop.wait(0.3):
            try:
                obj = self.obj()
                h = template_hash(obj["spec"]["template"])
                if h != self.current_hash:
                    self._revision(obj, h)
            except Broken as exc:
                self.error = exc
                self.log(f"controller error: {exc}")
                with contextlib.suppress(Broken):
                    self.status(phase="Degraded", abort=True, message=f"RolloutAborted: {exc.detail}")
                return
            except Exception as exc:  # a bug here must surface in the report, not hang the rehearsal
                log.exception("rollout controller")
                self.error = Broken(
                    "controller", "Argo Rollouts stand-in", self.ref, f"{type(exc).__name__}: {exc}"
                )
                return

    # --- a canary ----------------------------------------------------------------------------------
    def _aborted(self) -> bool:
        return bool((self.obj().get("status") or {}).get("abort"))

    def _revision(self, obj: dict[str, Any], h: str) -> None:
        canary = self._canary(obj)
        steps = canary.get("steps") or []
        self.current_hash = h
        self.log(f"new revision {h}: canary of {len(steps)} steps")
        self.status(
            phase="Progressing",
            currentPodHash=h,
            stableRS=self.stable_hash,
            currentStepIndex=0,
            abort=None,
            pauseConditions=None,
            message="",
        )
        self.pods[h] = self._start_pods(obj, h)
        deadline = duration_s(obj["spec"].get("progressDeadlineSeconds", 600)) * max(
            self.cluster.time_scale * 10, 0.2
        )
        deadline = max(deadline, 120.0)
        for p in self.pods[h]:
            try:
                p.wait(lambda x: x.ready, deadline, "ready")
            except Broken as exc:
                self._abort(f"canary pods of revision {h} not ready: {exc.detail[:2000]}")
                return
        self._pin_service(canary.get("canaryService"), h)
        self.log("canary pods ready; canary Service pinned to the new revision")
        for index, step in enumerate(steps):
            if self._aborted():
                self._abort("aborted through the API")
                return
            if (self.obj().get("status") or {}).get("promoteFull"):
                self.log("promoteFull: remaining steps skipped")
                break
            self.status(currentStepIndex=index, phase="Progressing")
            if "setWeight" in step:
                self._set_weight(obj, int(step["setWeight"]))
            elif "pause" in step:
                if not self._pause(step["pause"]):
                    self._abort("aborted while paused")
                    return
            elif "analysis" in step:
                outcome = self._analysis(obj, step["analysis"], index, h)
                if outcome.phase in ("Failed", "Error"):
                    bad = [m for m, p in outcome.metrics.items() if p in ("Failed", "Error")]
                    self._abort(
                        f'Metric "{bad[0]}" assessed {outcome.metrics[bad[0]]}: {outcome.messages.get(bad[0], "")}'[
                            :1500
                        ]
                    )
                    return
                if outcome.phase == "Inconclusive":
                    self.status(
                        phase="Paused",
                        pauseConditions=[{"reason": "InconclusiveAnalysis", "startTime": _now()}],
                        message="InconclusiveAnalysis",
                    )
                    self.log(f"analysis {outcome.name} inconclusive: paused until promoted or aborted")
                    if not self._wait_promoted():
                        self._abort("aborted after an inconclusive analysis")
                        return
            else:
                raise Broken(
                    "rollout-step",
                    self.ref,
                    f"step {index} {sorted(step)}",
                    "this kind of canary step is not rehearsed",
                )
        self._promote(obj, h, len(steps))

    def _set_weight(self, obj: dict[str, Any], weight: int) -> None:
        canary = self._canary(obj)
        plugin = ((canary.get("trafficRouting") or {}).get("plugins") or {}).get("argoproj-labs/gatewayAPI")
        self.weights.append(weight)
        if plugin:
            ns = plugin.get("namespace", self.ns)
            for kind, key in (("HTTPRoute", "httpRoute"), ("GRPCRoute", "grpcRoute")):
                names = [plugin[key]] if key in plugin else [r["name"] for r in plugin.get(key + "s") or []]
                for name in names:
                    route = self.cluster.api.get(kind, ns, name)
                    if route is None:
                        raise Broken(
                            "missing-reference",
                            f"{self.ref} trafficRouting (gatewayAPI plugin)",
                            f"{kind} {ns}/{name}",
                            "route to set weights on does not exist",
                        )
                    rules = copy.deepcopy(route["spec"].get("rules") or [])
                    found = False
                    for rule in rules:
                        for b in rule.get("backendRefs") or []:
                            if b.get("name") == canary.get("canaryService"):
                                b["weight"], found = weight, True
                            elif b.get("name") == canary.get("stableService"):
                                b["weight"] = 100 - weight
                    if not found:
                        raise Broken(
                            "missing-reference", f"{kind} {ns}/{name}", f"Service {canary.get('canaryService')}",
                            "the route has no backendRef for the Rollout's canaryService, so no weight can reach the canary",
                        )  # fmt: skip
                    self.cluster.api.patch(kind, ns, name, {"spec": {"rules": rules}})
        self.status(
            canary={
                "weights": {
                    "canary": {"weight": weight, "podTemplateHash": self.current_hash},
                    "stable": {"weight": 100 - weight, "podTemplateHash": self.stable_hash},
                }
            }
        )
        self.log(f"setWeight {weight}")

    def _pause(self, pause: dict[str, Any]) -> bool:
        if "duration" in pause:
            seconds = duration_s(pause["duration"]) * self.cluster.time_scale
            self.status(phase="Paused", pauseConditions=[{"reason": "PausedByStep", "startTime": _now()}])
            self.log(f"pause {pause['duration']} (rehearsed as {seconds:.1f} s)")
            end = time.monotonic() + seconds
            while time.monotonic() < end or not self._pause_gate.is_set():
                if self._aborted():
                    return False
                if not (self.obj().get("status") or {}).get("pauseConditions"):
                    break  # promoted early
                time.sleep(0.2)
            self.status(pauseConditions=None, phase="Progressing")
            return True
        self.status(phase="Paused", pauseConditions=[{"reason": "PausedByStep", "startTime": _now()}])
        self.log("pause without duration: waiting to be promoted")
        return self._wait_promoted()

    def _wait_promoted(self, timeout_s: float = 900.0) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not self._stop.is_set():
            st = self.obj().get("status") or {}
            if st.get("abort"):
                return False
            if not st.get("pauseConditions") or st.get("promoteFull"):
                self.log("promoted (resumed)")
                self.status(phase="Progressing", pauseConditions=None)
                return True
            time.sleep(0.3)
        return False

    def _promote(self, obj: dict[str, Any], h: str, steps: int) -> None:
        canary = self._canary(obj)
        old = self.stable_hash
        self.stable_hash = h
        self._pin_service(canary.get("stableService"), h)
        if self.weights:
            self._set_weight(obj, 0)
        self.status(
            phase="Healthy",
            stableRS=h,
            currentPodHash=h,
            currentStepIndex=steps,
            pauseConditions=None,
            message="",
            canary={},
        )
        self.log(f"revision {h} promoted to stable")
        delay = duration_s(canary.get("scaleDownDelaySeconds", 30)) * self.cluster.time_scale
        time.sleep(delay)
        for p in self.pods.pop(old, []) if old and old != h else []:
            p.stop()

    def _abort(self, why: str) -> None:
        obj = self.obj()
        canary = self._canary(obj)
        self._pin_service(canary.get("canaryService"), self.stable_hash)
        if self.weights:
            self._set_weight(obj, 0)
        for p in self.pods.pop(self.current_hash, []) if self.current_hash != self.stable_hash else []:
            p.stop()
        self.current_hash = template_hash(obj["spec"]["template"])
        self.status(
            phase="Degraded",
            abort=True,
            message=f"RolloutAborted: {why}",
            currentPodHash=self.current_hash,
            stableRS=self.stable_hash,
        )
        self.log(f"aborted: {why}")

    # --- analysis ----------------------------------------------------------------------------------
    def _cluster_dns(self, url: str) -> str:
        """``url`` with a Service name (``name[.ns[.svc[.cluster.local]]]``) replaced by its ClusterIP, as the
        controller's cluster DNS resolves it; other hosts are left as they are (and may not resolve)."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        host = parts.hostname or ""
        labels = host.split(".")
        suffix = labels[2:]
        if not labels[0] or suffix not in ([], ["svc"], ["svc", "cluster", "local"]):
            return url
        ns = labels[1] if len(labels) > 1 else self.ns
        svc = self.cluster.objects.get("Service", ns, labels[0])
        ip = ((svc or {}).get("spec") or {}).get("clusterIP")
        if not ip or ip == "None":
            return url
        netloc = ip + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def _args(self, obj: dict[str, Any], step_args: list[dict[str, Any]], h: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for a in step_args or []:
            if "value" in a:
                out[a["name"]] = str(a["value"])
                continue
            vf = a.get("valueFrom") or {}
            if "podTemplateHashValue" in vf:
                out[a["name"]] = h if vf["podTemplateHashValue"] == "Latest" else (self.stable_hash or "")
            elif "fieldRef" in vf:
                out[a["name"]] = _rollout_field(obj, vf["fieldRef"]["fieldPath"], self.ref)
        return out

    def _analysis(self, obj: dict[str, Any], analysis: dict[str, Any], index: int, h: str) -> AnalysisOutcome:
        given = self._args(obj, analysis.get("args") or [], h)
        metrics: list[dict[str, Any]] = []
        args_all: dict[str, str] = {}
        for t in analysis.get("templates") or []:
            kind = "ClusterAnalysisTemplate" if t.get("clusterScope") else "AnalysisTemplate"
            tpl = self.cluster.api.get(kind, "" if t.get("clusterScope") else self.ns, t["templateName"])
            if tpl is None:
                raise Broken(
                    "missing-reference",
                    f"{self.ref} step {index} analysis",
                    f"{kind} {self.ns}/{t['templateName']}",
                    "the analysis template does not exist",
                )
            for a in tpl["spec"].get("args") or []:
                if a["name"] in given:
                    args_all[a["name"]] = given[a["name"]]
                elif "value" in a:
                    args_all.setdefault(a["name"], str(a["value"]))
                else:
                    raise Broken(
                        "missing-reference", f"{self.ref} step {index} analysis", f"{kind} {t['templateName']} arg {a['name']}",
                        "the template's arg has no default and the Rollout step does not pass it",
                    )  # fmt: skip
            metrics += [_substitute(m, args_all) for m in tpl["spec"].get("metrics") or []]
        run_name = f"{self.name}-{h[:8]}-{index}"
        run = {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "AnalysisRun",
            "metadata": {"name": run_name, "namespace": self.ns, "labels": {HASH_LABEL: h}},
            "spec": {"metrics": metrics, "args": [{"name": k, "value": v} for k, v in args_all.items()]},
        }
        self.cluster.api.create("AnalysisRun", self.ns, run)
        self.status(canary={"currentStepAnalysisRunStatus": {"name": run_name, "status": "Running"}})
        outcome = AnalysisOutcome(run_name, "Running")
        threads = [
            threading.Thread(target=self._metric, args=(run, m, outcome), daemon=True) for m in metrics
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        outcome.phase = worst(list(outcome.metrics.values()))
        self.cluster.api.patch(
            "AnalysisRun", self.ns, run_name,
            {"status": {"phase": outcome.phase, "message": "; ".join(f"{m}: {outcome.messages.get(m, '')}" for m in outcome.metrics)[:4000],
                        "metricResults": [{"name": m, "phase": p, "message": outcome.messages.get(m, "")[:1000]} for m, p in outcome.metrics.items()]}},
            sub="status",
        )  # fmt: skip
        self.status(canary={"currentStepAnalysisRunStatus": {"name": run_name, "status": outcome.phase}})
        self.analyses.append(outcome)
        self.log(f"analysis {run_name}: {outcome.phase} {outcome.metrics}")
        return outcome

    def _metric(self, run: dict[str, Any], metric: dict[str, Any], outcome: AnalysisOutcome) -> None:
        self.cluster.network.enter_cluster()
        name = metric["name"]
        provider = metric.get("provider") or {}
        phases: list[str] = []
        try:
            count = int(metric.get("count", 1))
            interval = duration_s(metric.get("interval", "0s")) * self.cluster.time_scale
            for i in range(count):
                if "job" in provider:
                    job = provider["job"]
                    template = (job.get("spec") or {}).get("template")
                    owner = {
                        "kind": "AnalysisRun",
                        "metadata": run["metadata"],
                        "spec": job.get("spec") or {},
                    }
                    pod = self.cluster.run_job(
                        owner,
                        template,
                        f"{run['metadata']['name']}-{name}"[:50],
                        timeout_s=900,
                        backoff_limit=(job.get("spec") or {}).get("backoffLimit", 0),
                    )
                    outcome.jobs[name] = pod
                    state = next(iter(pod.containers.values()), None)
                    code = state.exit_code if state else None
                    phases.append("Successful" if pod.phase == "Succeeded" else "Failed")
                    outcome.messages[name] = f"Job pod {pod.name} exit {code}"
                elif "prometheus" in provider:
                    prom = provider["prometheus"]
                    try:
                        result = prometheus_result(self._cluster_dns(prom["address"]), prom["query"])
                        phase, msg = evaluate_measurement(metric, result)
                    except Exception as exc:  # unreachable address: Argo records an Error measurement
                        phase, msg = "Error", f"{type(exc).__name__}: {exc}"
                    phases.append(phase)
                    outcome.messages[name] = msg
                else:
                    raise Broken(
                        "analysis",
                        f"AnalysisRun {run['metadata']['name']} metric {name}",
                        f"provider {sorted(provider)}",
                        "metric provider not rehearsed",
                    )
                current = assess_metric(metric, phases)
                if current not in ("Running", "Pending") or i == count - 1:
                    break
                time.sleep(interval)
            outcome.metrics[name] = assess_metric(metric, phases) if phases else "Error"
            if outcome.metrics[name] == "Running":
                outcome.metrics[name] = "Successful"
        except Broken as exc:
            outcome.metrics[name] = "Error"
            outcome.messages[name] = str(exc)


def _substitute(obj: Any, args: dict[str, str]) -> Any:
    text = json.dumps(obj)
    for k, v in args.items():
        text = text.replace("{{args." + k + "}}", json.dumps(v)[1:-1])
    missing = re.findall(r"\{\{args\.([^}]+)\}\}", text)
    if missing:
        raise Broken(
            "missing-reference",
            "AnalysisTemplate metric",
            f"args {sorted(set(missing))}",
            "the metric uses args that nobody provides",
        )
    return json.loads(text)


def _rollout_field(obj: dict[str, Any], path: str, referrer: str) -> str:
    m = re.fullmatch(r"spec\.template\.metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str(
            (((obj["spec"].get("template") or {}).get("metadata") or {}).get(m.group(1)) or {}).get(
                m.group(2), ""
            )
        )
    return field_value(obj, path, referrer)


__all__ = ["RolloutController", "duration_s", "pod_templates", "template_hash"]
