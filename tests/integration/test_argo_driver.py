"""ArgoRolloutDriver against the loopback Kubernetes API server of the cluster rehearsal.

No cluster runs here. ``freshrec.cluster.rehearsal_api.ApiServer`` (plain HTTP here, every request as an
admin; the rehearsal serves it over TLS with per-service-account tokens and the rendered RBAC) serves the
Kubernetes API paths the driver uses — ``GET``/``PATCH`` of ``argoproj.io/v1alpha1`` rollouts, ``PATCH`` of
their ``status`` subresource, ``GET`` of analysisruns — stores the objects, applies JSON merge patches
as the API server does (``metadata.generation`` bumps on spec changes; the main resource ignores status,
the status subresource ignores spec), and validates **every object written** against the Rollout CRD's
``openAPIV3Schema`` from ``../shared/schemas/crds/argo-rollouts_rollout-crd.yaml`` (unknown fields
rejected), answering 422 like the API server when it does not match. The Rollout it starts from is the
one in ``manifests/base``. The Argo Rollouts controller is played by the test: it writes status through
the same API (also validated). The driver talks to the server through the official ``kubernetes``
client, unchanged. The RBAC test runs the driver with the deployer's own token against the Role in
``manifests/base``.
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import pytest
import yaml

from freshrec.cluster.rehearsal_api import ADMIN, ApiServer
from freshrec.cluster.rehearsal_objects import Objects
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
CRD_FILES = [CRDS / "argo-rollouts_rollout-crd.yaml", CRDS / "argo-rollouts_analysis-run-crd.yaml"]
NS, NAME = "freshrec", "ctr-serving"


def stored(api, plural="rollouts", name=NAME):
    return api.obj({"rollouts": "Rollout", "analysisruns": "AnalysisRun"}[plural], NS, name)


def calls(api, exclude_identity=None):
    """(verb, resource, content type) of the requests the server answered."""
    return [(r.verb, r.resource, r.content_type) for r in api.requests if r.identity != exclude_identity]


@pytest.fixture(scope="module")
def schemas():
    if not CRD_FILES[0].is_file():
        pytest.fail(f"Rollout CRD not found at {CRD_FILES[0].resolve()}")
    return load_crd_schemas(CRD_FILES)


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
    server = ApiServer(Objects([rollout], CRD_FILES), schemas, anonymous=ADMIN)
    server.listen("127.0.0.1", 0)
    try:
        yield server
    finally:
        server.stop()


class ArgoController:
    """Plays the Argo Rollouts controller: on each tick, writes the next status of a script."""

    def __init__(self, api: ApiServer, script: list[dict]):
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
    before = copy.deepcopy(stored(api))
    st = driver_for(api).deploy(7)
    after = stored(api)
    assert after["spec"]["template"]["metadata"]["annotations"][MODEL_VERSION_ANNOTATION] == "7"
    assert st.model_version == "7" and st.generation == 2 and not st.observed
    # Only the annotation changed: containers, steps and traffic routing are as in the manifest.
    expected = copy.deepcopy(before["spec"])
    expected["template"]["metadata"]["annotations"][MODEL_VERSION_ANNOTATION] = "7"
    assert after["spec"] == expected
    assert calls(api) == [("patch", "rollouts", "application/merge-patch+json")]
    with pytest.raises(ValueError, match="positive"):
        driver_for(api).deploy(0)


def test_server_rejects_objects_that_do_not_match_the_crd(api):
    """The loopback server really validates: a misspelt step is a 422, and nothing is stored."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    custom = client.CustomObjectsApi(make_api_client(host=api.url))
    before = copy.deepcopy(stored(api))
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
    assert stored(api) == before


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
    assert stored(api)["status"]["abort"] is True


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
    obj = stored(api)
    assert "pauseConditions" not in obj["status"] and obj["spec"]["paused"] is False
    driver.promote(full=True)
    assert stored(api)["status"]["promoteFull"] is True
    driver.abort()
    assert stored(api)["status"]["abort"] is True


def test_another_deploy_meanwhile_ends_the_wait(api):
    driver = driver_for(api)
    driver.deploy(5)
    driver_for(api).deploy(6)
    outcome, st = driver.wait(5, timeout_s=60, poll_s=5)
    assert outcome == "aborted" and st.model_version == "6"


def test_driver_stays_within_the_deployer_role(api):
    """The driver, with the deployer's own token, against the Role and RoleBinding in
    manifests/base/rbac/generated.yaml as the API server's RBAC authoriser applies them: a verb the Role does
    not grant is a 403 (which would fail the driver), so the whole cycle passing proves it stays inside."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    for doc in yaml.safe_load_all((REPO / "manifests" / "base" / "rbac" / "generated.yaml").read_text()):
        if doc["kind"] in ("Role", "RoleBinding", "ServiceAccount"):
            doc["metadata"]["namespace"] = NS
            for subject in doc.get("subjects") or []:
                subject["namespace"] = NS
            api.put(doc)
    sa = next(
        {"metadata": {"name": d["subjects"][0]["name"]}}
        for d in yaml.safe_load_all((REPO / "manifests" / "base" / "rbac" / "generated.yaml").read_text())
        if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "freshrec-deployer"
    )
    cfg = client.Configuration()
    cfg.host = api.url
    cfg.api_key = {"authorization": api.token_for(NS, sa["metadata"]["name"])}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    deployer = client.ApiClient(cfg)
    api.put({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisRun",
        "metadata": {"name": "ctr-serving-abc-2", "namespace": NS},
        "spec": {"metrics": []},
        "status": {"phase": "Successful"},
    })  # fmt: skip
    script = [{"phase": "Healthy", "currentStepIndex": 7, "currentPodHash": "ccc", "stableRS": "ccc"}]
    t = {"now": 0.0}
    controller = ArgoController(api, script)

    def sleep(s):
        t["now"] += s
        controller.tick(s)

    driver = ArgoRolloutDriver(deployer, NS, NAME, clock=lambda: t["now"], sleep=sleep)
    driver.deploy_and_wait(8, timeout_s=60, poll_s=5)
    driver.promote()
    driver.promote(full=True)
    driver.abort()
    assert driver.analysis_run("ctr-serving-abc-2")["status"]["phase"] == "Successful"
    identity = f"system:serviceaccount:{NS}:{sa['metadata']['name']}"
    mine = [r for r in api.requests if r.identity == identity]
    assert mine and all(r.code < 400 for r in mine), [(r.verb, r.resource, r.code) for r in mine]
    used = {(r.verb, r.resource) for r in mine}
    assert ("get", "analysisruns") in used and ("patch", "rollouts") in used
    # The authoriser is not vacuous: the deployer may not delete its Rollout, nor read another one.
    custom = client.CustomObjectsApi(deployer)
    with pytest.raises(ApiException) as denied:
        custom.delete_namespaced_custom_object("argoproj.io", "v1alpha1", NS, "rollouts", NAME)
    message = json.loads(denied.value.body)["message"]
    assert denied.value.status == 403 and f'User "{identity}" cannot delete resource "rollouts"' in message
    with pytest.raises(ApiException) as denied:
        custom.get_namespaced_custom_object("argoproj.io", "v1alpha1", NS, "rollouts", "other-rollout")
    assert denied.value.status == 403


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
            obj = stored(api)
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


def _kubeconfig(path, url, token=None):
    user = {"token": token} if token else {}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": NS}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_cluster_commands_show_status_and_fail_in_one_line(api, settings, tmp_path, monkeypatch):
    """status -o json, abort, and the four ways a cluster call fails: each a single line, exit 4, no traceback."""
    import json
    import socket

    from typer.testing import CliRunner

    from freshrec.rollout.cli import app

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    run = lambda *args: CliRunner().invoke(app, list(args), obj=settings)  # noqa: E731
    shown = run("status", f"--api-server={api.url}", "-o", "json")
    assert shown.exit_code == 0, shown.output
    status = json.loads(shown.stdout)
    assert (status["namespace"], status["rollout"], status["phase"]) == (NS, NAME, "Healthy")
    aborted = run("abort", f"--api-server={api.url}", "--namespace", NS)
    assert aborted.exit_code == 0 and stored(api)["status"]["abort"] is True

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    api.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody", "namespace": NS}})
    nobody = _kubeconfig(tmp_path / "nobody", api.url, api.token_for(NS, "nobody"))
    cases = {
        "no Kubernetes credentials": ("status", f"--kubeconfig={tmp_path / 'missing'}"),
        "unreachable": ("status", f"--api-server=http://127.0.0.1:{closed}"),
        "not found": ("status", f"--api-server={api.url}", "-n", "elsewhere"),
        "forbidden": ("deploy", "--version=3", f"--kubeconfig={nobody}"),
    }
    for expected, args in cases.items():
        result = run(*args)
        assert result.exit_code == 4, (expected, result.output)
        assert expected in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("final", ["Healthy", "Degraded"])
def test_rollout_task_in_argo_mode_follows_the_canary(api, settings, tmp_path, monkeypatch, final):
    """The pipeline's rollout task in the cluster (environment=cluster → auto is argo), through the API as
    the kubeconfig's user: promoted → the repository's stable label and the drift reference follow it;
    aborted → the task fails with the Rollout's message and the stable version stays."""
    import json

    import pandas as pd
    from kfp.dsl import Markdown

    from freshrec.components.rollout.component import rollout
    from freshrec.model.references import ReferenceStore
    from freshrec.model.repository import ModelRepository

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", api.url)))
    repo = ModelRepository(settings.models_dir, settings.model.name)
    refs = ReferenceStore(settings.references_dir, settings.model.name)
    for v in (1, 2):
        export = tmp_path / f"e{v}"
        (export / "variables").mkdir(parents=True)
        (export / "saved_model.pb").write_bytes(b"x")
        assert repo.publish(export, {}) == v
        frame = tmp_path / f"t{v}.parquet"
        pd.DataFrame({"v": [v]}).to_parquet(frame)
        refs.write(v, frame)
    repo.set_label("stable", 1)
    refs.promote(1)

    stop = threading.Event()

    def argo():
        controller = ArgoController(api, [])
        while not stop.wait(0.05):
            obj = stored(api)
            if obj["spec"]["template"]["metadata"]["annotations"][MODEL_VERSION_ANNOTATION] == "2":
                status = {
                    "phase": final,
                    "currentPodHash": "bbb",
                    "stableRS": "bbb" if final == "Healthy" else "aaa",
                }
                if final == "Degraded":
                    status.update(abort=True, message="RolloutAborted: metric online-quality assessed Failed")
                controller.script = [status]
                controller.tick()
                return

    thread = threading.Thread(target=argo, daemon=True)
    thread.start()
    data = settings.model_dump(mode="json")
    data.pop("workdir")
    data["environment"] = "cluster"
    data["pipeline"].update(rollout_poll_s=0.05, rollout_timeout_s=30)
    report = Markdown(uri=str(tmp_path / "report.md"))
    try:
        if final == "Healthy":
            assert rollout(str(settings.workdir), json.dumps(data), 2, report, mode="auto") == "promoted"
            assert repo.stable() == 2 and refs.stable_version() == 2
        else:
            with pytest.raises(RuntimeError, match="aborted v2: RolloutAborted: metric online-quality"):
                rollout(str(settings.workdir), json.dumps(data), 2, report, mode="auto")
            assert repo.stable() == 1 and refs.stable_version() == 1
    finally:
        stop.set()
        thread.join(5)
    text = (tmp_path / "report.md").read_text()
    assert f"Argo Rollout {NS}/{NAME}: model version 2 set" in text
    assert final in text
