"""ArgoRolloutDriver against a loopback Kubernetes API server.

No cluster runs here. This test starts a small HTTP server (``http.server`` in a thread) that serves the
Kubernetes API paths the driver uses — ``GET``/``PATCH`` of ``argoproj.io/v1alpha1`` rollouts, ``PATCH`` of
their ``status`` subresource, ``GET`` of analysisruns — stores the objects, applies JSON merge patches
as the API server does (``metadata.generation`` bumps on spec changes; the main resource ignores status,
the status subresource ignores spec), and validates **every object written** against the Rollout CRD's
``openAPIV3Schema`` from ``../shared/schemas/crds/argo-rollouts_rollout-crd.yaml`` (unknown fields
rejected), answering 422 like the API server when it does not match. The Rollout it starts from is the
one in ``manifests/base``. The Argo Rollouts controller is played by the test: it writes status through
the same API (also validated). The driver talks to the server through the official ``kubernetes``
client, unchanged.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from freshrec.rollout.k8s import (
    MODEL_VERSION_ANNOTATION,
    ArgoRolloutDriver,
    RolloutTimeout,
    load_crd_schemas,
    make_api_client,
    validate_custom_object,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / ".." / "shared" / "schemas" / "crds"
NS, NAME = "freshrec", "ctr-serving"
PATH = re.compile(
    r"^/apis/argoproj\.io/v1alpha1/namespaces/([^/]+)/(rollouts|analysisruns)/([^/]+)(/status)?$"
)


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeApiServer:
    """Objects by (plural, namespace, name); every write validated against the CRD schema."""

    def __init__(self, schemas):
        self.schemas = schemas
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.requests: list[tuple[str, str, str]] = []  # (verb, resource, content type)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.handle(self, "GET")

            def do_PATCH(self):
                server.handle(self, "PATCH")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def status(self, code, reason, message):
        return code, {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": reason,
            "message": message,
            "code": code,
        }

    def handle(self, h, method):
        m = PATH.match(h.path.split("?")[0])
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if not m:
            code, out = self.status(404, "NotFound", f"no route {h.path}")
        else:
            ns, plural, name, sub = m.groups()
            resource = plural + ("/status" if sub else "")
            self.requests.append(
                ({"GET": "get", "PATCH": "patch"}[method], resource, h.headers.get("Content-Type", ""))
            )
            with self.lock:
                code, out = self.dispatch(
                    method, (plural, ns, name), bool(sub), h.headers.get("Content-Type", ""), body
                )
        data = json.dumps(out).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def dispatch(self, method, key, status_sub, ctype, body):
        obj = self.objects.get(key)
        if obj is None:
            return self.status(404, "NotFound", f'{key[0]} "{key[2]}" not found')
        if method == "GET":
            return 200, obj
        if ctype.split(";")[0] != "application/merge-patch+json":
            return self.status(415, "UnsupportedMediaType", f"unsupported patch type {ctype}")
        patch = json.loads(body)
        obj = copy.deepcopy(obj)  # a rejected write must leave the stored object as it was
        if status_sub:
            new = merge_patch(obj, {"status": patch.get("status")} if "status" in patch else {})
            new["spec"] = obj["spec"]
        else:
            patch = {k: v for k, v in patch.items() if k != "status"}
            new = merge_patch(obj, patch)
            if "status" in obj:
                new["status"] = obj["status"]
            if new.get("spec") != obj.get("spec"):
                new["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        try:
            validate_custom_object(new, self.schemas)
        except ValueError as exc:
            return self.status(422, "Invalid", str(exc))
        self.objects[key] = new
        return 200, new

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def schemas():
    path = CRDS / "argo-rollouts_rollout-crd.yaml"
    if not path.is_file():
        pytest.fail(f"Rollout CRD not found at {path.resolve()}")
    return load_crd_schemas([path, CRDS / "argo-rollouts_analysis-run-crd.yaml"])


@pytest.fixture
def api(schemas):
    docs = yaml.safe_load_all((REPO / "manifests" / "base" / "serving" / "generated.yaml").read_text())
    rollout = next(d for d in docs if d and d["kind"] == "Rollout")
    rollout["metadata"].update(namespace=NS, generation=1)
    rollout["status"] = {
        "phase": "Healthy",
        "observedGeneration": "1",
        "stableRS": "aaa",
        "currentPodHash": "aaa",
    }
    validate_custom_object(rollout, schemas)
    with FakeApiServer(schemas) as server:
        server.objects[("rollouts", NS, NAME)] = rollout
        yield server


class ArgoController:
    """Plays the Argo Rollouts controller: on each tick, writes the next status of a script."""

    def __init__(self, api: FakeApiServer, script: list[dict]):
        from kubernetes import client

        self.api = client.CustomObjectsApi(make_api_client(host=api.url))
        self.script = list(script)
        self.ticks = 0

    def tick(self, _seconds: float = 0) -> None:
        self.ticks += 1
        if self.script:
            obj = self.api.get_namespaced_custom_object("argoproj.io", "v1alpha1", NS, "rollouts", NAME)
            status = dict(self.script.pop(0))
            status.setdefault("observedGeneration", str(obj["metadata"]["generation"]))
            self.api.patch_namespaced_custom_object_status(
                "argoproj.io", "v1alpha1", NS, "rollouts", NAME, {"status": status}
            )


def driver_for(api, controller=None, clock=None):
    t = {"now": 0.0}

    def sleep(s):
        t["now"] += s
        if controller:
            controller.tick(s)

    return ArgoRolloutDriver(
        make_api_client(host=api.url), NS, NAME, clock=clock or (lambda: t["now"]), sleep=sleep
    )


def analysis(status):
    return {"currentStepAnalysisRunStatus": {"name": "ctr-serving-abc-2", "status": status}}


def test_deploy_sets_the_model_version_and_keeps_the_template(api):
    before = copy.deepcopy(api.objects[("rollouts", NS, NAME)])
    st = driver_for(api).deploy(7)
    after = api.objects[("rollouts", NS, NAME)]
    assert after["spec"]["template"]["metadata"]["annotations"][MODEL_VERSION_ANNOTATION] == "7"
    assert st.model_version == "7" and st.generation == 2 and not st.observed
    # Only the annotation changed: containers, steps and traffic routing are as in the manifest.
    expected = copy.deepcopy(before["spec"])
    expected["template"]["metadata"]["annotations"][MODEL_VERSION_ANNOTATION] = "7"
    assert after["spec"] == expected
    assert api.requests == [("patch", "rollouts", "application/merge-patch+json")]
    with pytest.raises(ValueError, match="positive"):
        driver_for(api).deploy(0)


def test_server_rejects_objects_that_do_not_match_the_crd(api):
    """The loopback server really validates: a misspelt step is a 422, and nothing is stored."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    custom = client.CustomObjectsApi(make_api_client(host=api.url))
    before = copy.deepcopy(api.objects[("rollouts", NS, NAME)])
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(
            "argoproj.io",
            "v1alpha1",
            NS,
            "rollouts",
            NAME,
            {"spec": {"strategy": {"canary": {"steps": [{"setweight": 5}]}}}},
        )
    assert info.value.status == 422 and "setweight" in info.value.body
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object_status(
            "argoproj.io", "v1alpha1", NS, "rollouts", NAME, {"status": {"currentStepIndex": "two"}}
        )
    assert info.value.status == 422
    assert api.objects[("rollouts", NS, NAME)] == before


def test_deploy_and_wait_follows_the_canary_to_promotion(api):
    script = [
        {"phase": "Progressing", "currentStepIndex": 0, "currentPodHash": "bbb", "stableRS": "aaa"},
        {
            "phase": "Paused",
            "currentStepIndex": 1,
            "currentPodHash": "bbb",
            "stableRS": "aaa",
            "pauseConditions": [{"reason": "PausedByStep", "startTime": "2026-11-27T10:00:00Z"}],
        },
        {
            "phase": "Progressing",
            "currentStepIndex": 2,
            "currentPodHash": "bbb",
            "stableRS": "aaa",
            "pauseConditions": None,
            "canary": analysis("Running"),
        },
        {
            "phase": "Progressing",
            "currentStepIndex": 5,
            "currentPodHash": "bbb",
            "stableRS": "aaa",
            "canary": analysis("Successful"),
        },
        {
            "phase": "Healthy",
            "currentStepIndex": 7,
            "currentPodHash": "bbb",
            "stableRS": "bbb",
            "message": "",
            "canary": {},
        },
    ]
    controller = ArgoController(api, script)
    seen = []
    driver = driver_for(api, controller)
    driver.deploy(2)
    outcome, st = driver.wait(2, timeout_s=600, poll_s=5, on_status=seen.append)
    assert outcome == "promoted"
    assert st.completed and st.stable_rs == "bbb" and st.current_step_index == st.steps == 7
    # The stale "Healthy" of the old generation right after the deploy was not taken for success.
    assert not seen[0].observed and seen[0].phase == "Healthy"
    assert "Paused" in [s.phase for s in seen] and "Running" in [s.analysis_status for s in seen]
    assert controller.ticks == 5


def test_failed_analysis_is_reported_as_aborted(api):
    script = [
        {
            "phase": "Progressing",
            "currentStepIndex": 2,
            "currentPodHash": "bbb",
            "stableRS": "aaa",
            "canary": analysis("Running"),
        },
        {
            "phase": "Degraded",
            "currentStepIndex": 2,
            "currentPodHash": "bbb",
            "stableRS": "aaa",
            "abort": True,
            "message": 'RolloutAborted: Rollout aborted update to revision 2: Metric "online-quality" assessed Failed',
            "canary": analysis("Failed"),
        },
    ]
    driver = driver_for(api, ArgoController(api, script))
    outcome, st = driver.deploy_and_wait(3, timeout_s=600, poll_s=5)
    assert outcome == "aborted" and st.aborted and st.analysis_status == "Failed"
    assert "online-quality" in st.message


def test_timeout_aborts_the_canary(api):
    script = [
        {
            "phase": "Paused",
            "currentStepIndex": 1,
            "currentPodHash": "bbb",
            "stableRS": "aaa",
            "pauseConditions": [{"reason": "PausedByStep", "startTime": "2026-11-27T10:00:00Z"}],
        }
    ]
    driver = driver_for(api, ArgoController(api, script))
    with pytest.raises(RolloutTimeout, match="phase=Paused"):
        driver.deploy_and_wait(4, timeout_s=60, poll_s=10)
    assert api.objects[("rollouts", NS, NAME)]["status"]["abort"] is True


def test_stop_on_pause_then_promote_and_abort(api):
    script = [
        {
            "phase": "Paused",
            "currentStepIndex": 1,
            "currentPodHash": "bbb",
            "stableRS": "aaa",
            "pauseConditions": [{"reason": "PausedByStep", "startTime": "2026-11-27T10:00:00Z"}],
        }
    ]
    driver = driver_for(api, ArgoController(api, script))
    driver.deploy(5)
    outcome, st = driver.wait(5, timeout_s=600, poll_s=5, stop_on_pause=True)
    assert outcome == "paused" and st.paused
    driver.promote()
    obj = api.objects[("rollouts", NS, NAME)]
    assert "pauseConditions" not in obj["status"] and obj["spec"]["paused"] is False
    driver.promote(full=True)
    assert api.objects[("rollouts", NS, NAME)]["status"]["promoteFull"] is True
    driver.abort()
    assert api.objects[("rollouts", NS, NAME)]["status"]["abort"] is True


def test_another_deploy_meanwhile_ends_the_wait(api):
    driver = driver_for(api)
    driver.deploy(5)
    driver_for(api).deploy(6)
    outcome, st = driver.wait(5, timeout_s=60, poll_s=5)
    assert outcome == "aborted" and st.model_version == "6"


def test_driver_stays_within_the_deployer_role(api):
    """Every request the driver makes is allowed by the Role in manifests/base/rbac/generated.yaml."""
    role = next(
        d
        for d in yaml.safe_load_all((REPO / "manifests" / "base" / "rbac" / "generated.yaml").read_text())
        if d["kind"] == "Role" and d["metadata"]["name"] == "freshrec-deployer"
    )
    allowed = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    api.objects[("analysisruns", NS, "ctr-serving-abc-2")] = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisRun",
        "metadata": {"name": "ctr-serving-abc-2", "namespace": NS},
        "spec": {"metrics": []},
        "status": {"phase": "Successful"},
    }
    script = [{"phase": "Healthy", "currentStepIndex": 7, "currentPodHash": "ccc", "stableRS": "ccc"}]
    driver = driver_for(api, ArgoController(api, script))
    driver.deploy_and_wait(8, timeout_s=60, poll_s=5)
    driver.promote()
    driver.promote(full=True)
    driver.abort()
    assert driver.analysis_run("ctr-serving-abc-2")["status"]["phase"] == "Successful"
    controller_writes = {("patch", "rollouts/status")}  # the simulated Argo controller, not the driver
    used = {(verb, res) for verb, res, _ in api.requests}
    assert used - controller_writes <= {(v, r) for r, v in allowed}
    assert ("get", "analysisruns") in used and ("patch", "rollouts") in used


@pytest.mark.parametrize(("final", "code"), [("Healthy", 0), ("Degraded", 1)])
def test_deploy_command(api, settings, final, code):
    """``freshrec rollout deploy`` end to end: the Argo controller (a thread here) reacts to the new
    generation; the command exits 0 on promotion and 1 on abort."""
    from typer.testing import CliRunner

    from freshrec.rollout.cli import app

    stop = threading.Event()

    def argo():
        controller = ArgoController(api, [])
        while not stop.wait(0.05):
            obj = api.objects[("rollouts", NS, NAME)]
            if obj["spec"]["template"]["metadata"]["annotations"][MODEL_VERSION_ANNOTATION] == "9":
                status = {
                    "phase": final,
                    "currentPodHash": "ddd",
                    "stableRS": "ddd" if final == "Healthy" else "aaa",
                }
                if final == "Degraded":
                    status.update(abort=True, message="RolloutAborted: metric error-rate assessed Failed")
                controller.script = [status]
                controller.tick()
                return

    thread = threading.Thread(target=argo, daemon=True)
    thread.start()
    try:
        result = CliRunner().invoke(
            app,
            ["deploy", "--version=9", f"--api-server={api.url}", "--poll-s=0.05", "--timeout-s=30"],
            obj=settings,
        )
    finally:
        stop.set()
        thread.join(5)
    assert result.exit_code == code, result.output
    assert ("promoted" if code == 0 else "aborted") in result.output
