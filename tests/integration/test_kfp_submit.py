"""Submission to Kubeflow Pipelines, tested against a loopback KFP API server.

No Kubeflow backend runs here. This test starts an ``http.server`` thread on 127.0.0.1 that implements
the KFP v2beta1 REST paths ``kfp.Client`` calls (healthz, experiments list/create, runs create,
recurringruns create), deserializes every request body into the ``kfp_server_api`` models the real
server's API is generated from (unknown fields are rejected), checks the fields the backend requires,
and parses the submitted pipeline spec with the KFP ``PipelineSpec``/``PlatformSpec`` protos. It proves
that our submission code sends well-formed requests; it cannot prove that a real cluster runs them.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

pytestmark = pytest.mark.integration

API = "/apis/v2beta1"


def _check_model(body: dict[str, Any], model: str) -> Any:
    """Deserialize ``body`` into a kfp_server_api model; fail on keys the model does not define."""
    import kfp_server_api

    cls = getattr(kfp_server_api, model)
    unknown = set(body) - set(cls.attribute_map.values())
    assert not unknown, f"{model} has no fields {sorted(unknown)}"
    return kfp_server_api.ApiClient().deserialize(SimpleNamespace(data=json.dumps(body)), model)


def _check_pipeline_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """Parse the submitted spec with the KFP protos (a spec + platform spec pair, or a bare spec)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = doc.get("pipeline_spec", doc)
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    if "platform_spec" in doc:
        json_format.ParseDict(doc["platform_spec"], pipeline_spec_pb2.PlatformSpec())
    assert spec["pipelineInfo"]["name"], "pipeline spec without a name"
    assert spec["root"]["dag"]["tasks"], "pipeline spec without tasks"
    return spec


class FakeKfpApi:
    """State of the loopback server: experiments, runs and recurring runs it accepted."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: list[dict[str, Any]] = []
        self.recurring_runs: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.errors: list[str] = []
        # What GET /runs/{id} answers, one entry per poll (the last one repeats): (run state, task states).
        self.run_script: list[tuple[str, dict[str, str]]] = [("SUCCEEDED", {})]
        self.polls = 0

    def handle(self, method: str, url: str, headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        parsed = urlparse(url)
        path, query = parsed.path, parse_qs(parsed.query)
        self.requests.append((method, path))
        if self.token is not None and headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"error": "missing or wrong bearer token", "code": 16}
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
            exp = _check_model(data, "V2beta1Experiment")
            assert exp.display_name, "an experiment needs display_name"
            created = {**data, "experiment_id": str(uuid.uuid4()), "storage_state": "AVAILABLE"}
            self.experiments[created["experiment_id"]] = created
            return 200, created
        if method == "POST" and path == f"{API}/runs":
            run = _check_model(data, "V2beta1Run")
            assert run.display_name, "a run needs display_name"
            assert run.experiment_id in self.experiments, "a run must name an existing experiment"
            assert run.pipeline_spec or run.pipeline_version_reference, "a run needs a pipeline"
            _check_pipeline_spec(run.pipeline_spec)
            created = {**data, "run_id": str(uuid.uuid4()), "state": "PENDING"}
            self.runs.append(created)
            return 200, created
        if method == "GET" and path.startswith(f"{API}/runs/"):
            run_id = path.rsplit("/", 1)[1]
            found = [r for r in self.runs if r["run_id"] == run_id]
            if not found:
                return 404, {"error": f"run {run_id} not found", "code": 5}
            state, tasks = self.run_script[min(self.polls, len(self.run_script) - 1)]
            self.polls += 1
            details = [{"display_name": k, "state": v, "run_id": run_id} for k, v in tasks.items()]
            return 200, {**found[0], "state": state, "run_details": {"task_details": details}}
        if method == "POST" and path == f"{API}/recurringruns":
            job = _check_model(data, "V2beta1RecurringRun")
            assert job.display_name and job.experiment_id in self.experiments
            assert job.trigger and (job.trigger.cron_schedule or job.trigger.periodic_schedule), (
                "needs a trigger"
            )
            assert job.mode in ("ENABLE", "DISABLE"), f"bad mode {job.mode}"
            assert job.max_concurrency and int(job.max_concurrency) >= 1
            _check_pipeline_spec(job.pipeline_spec)
            created = {**data, "recurring_run_id": str(uuid.uuid4()), "status": "ENABLED"}
            self.recurring_runs.append(created)
            return 200, created
        return 404, {"error": f"no route {method} {path}", "code": 5}


@pytest.fixture
def kfp_api():
    """A loopback KFP API server; yields (url, state)."""
    state = FakeKfpApi(token="s3cret")

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                status, payload = state.handle(self.command, self.path, self.headers, body)
            except AssertionError as exc:  # a malformed request: answer as the backend would, and remember
                state.errors.append(str(exc))
                status, payload = 400, {"error": str(exc), "code": 3}
            except Exception as exc:  # a bug in this fake server: fail the test, not the connection
                state.errors.append(f"server error: {exc!r}")
                status, payload = 500, {"error": repr(exc), "code": 13}
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def test_run_submission_creates_the_experiment_and_a_run(kfp_api, tmp_path):
    from freshrec.pipelines.build import package_path
    from freshrec.pipelines.submit import make_client, submit

    url, state = kfp_api
    client = make_client(url, token="s3cret")
    result = submit(
        client,
        package_path("continuous_training"),
        experiment="freshrec-test",
        arguments={"epochs": 2, "dataset": "movielens-100k"},
        run_name="ct-1",
    )
    assert state.errors == []
    assert result.kind == "run" and result.id == state.runs[0]["run_id"]
    assert [e["display_name"] for e in state.experiments.values()] == ["freshrec-test"]
    run = state.runs[0]
    assert run["display_name"] == "ct-1"
    assert run["runtime_config"]["parameters"] == {"epochs": 2, "dataset": "movielens-100k"}
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "freshrec-continuous-training"
    # The layout's mounts travel with the run (platform spec), so its tasks see the claims.
    mounts = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert mounts["exec-push"]["pvcMount"]
    assert result.url.endswith(f"/#/runs/details/{result.id}")

    # A second submission reuses the experiment.
    submit(client, package_path("continuous_training"), experiment="freshrec-test")
    assert len(state.experiments) == 1 and len(state.runs) == 2


def test_recurring_drift_monitor_uses_the_cron(kfp_api):
    from freshrec.pipelines.build import package_path
    from freshrec.pipelines.submit import make_client, submit

    url, state = kfp_api
    client = make_client(url, token="s3cret")
    result = submit(
        client, package_path("drift_monitor"), experiment="monitoring", recurring_cron="0 0 * * * *"
    )
    assert state.errors == []
    assert result.kind == "recurring_run"
    job = state.recurring_runs[0]
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 * * * *"
    assert job["mode"] == "ENABLE" and job["no_catchup"] is True
    assert job["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "freshrec-drift-monitor"


def test_bad_cron_is_refused_before_anything_is_created(kfp_api):
    from freshrec.pipelines.build import package_path
    from freshrec.pipelines.submit import make_client, submit

    url, state = kfp_api
    with pytest.raises(ValueError, match="6 fields"):
        submit(
            make_client(url, token="s3cret"),
            package_path("drift_monitor"),
            experiment="m",
            recurring_cron="0 * * * *",
        )
    assert state.runs == [] and state.recurring_runs == []


def test_wrong_token_is_rejected_by_the_server(kfp_api):
    import kfp_server_api

    from freshrec.pipelines.build import package_path
    from freshrec.pipelines.submit import make_client, submit

    url, state = kfp_api
    with pytest.raises(kfp_server_api.ApiException) as info:
        submit(
            make_client(url, token="wrong", namespace="team-a"),
            package_path("continuous_training"),
            experiment="x",
        )
    assert info.value.status == 401
    assert state.runs == []


def test_cli_submit_reads_the_token_from_the_environment(kfp_api, monkeypatch):
    from typer.testing import CliRunner

    from freshrec.cli import _register, app

    url, state = kfp_api
    _register()
    monkeypatch.setenv("KFP_TEST_TOKEN", "s3cret")
    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "submit",
            "--host",
            url,
            "--token-env",
            "KFP_TEST_TOKEN",
            "--experiment",
            "cli",
            "--param",
            "epochs=1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "created run" in result.output
    assert state.runs[0]["runtime_config"]["parameters"] == {"epochs": 1}


def test_cli_submit_runs_in_the_layouts_namespace_as_its_account_and_waits(kfp_api, monkeypatch, tmp_path):
    """--wait follows the run through GET /runs/{id} to its end and exits by its final state."""
    from typer.testing import CliRunner

    from freshrec.cli import _register, app

    url, state = kfp_api
    _register()
    monkeypatch.setenv("KFP_TEST_TOKEN", "s3cret")
    state.run_script = [
        ("RUNNING", {"ingest": "RUNNING"}),
        ("RUNNING", {"ingest": "SUCCEEDED", "train": "RUNNING"}),
        ("FAILED", {"ingest": "SUCCEEDED", "train": "FAILED"}),
    ]
    args = ["pipeline", "submit", "--host", url, "--token-env", "KFP_TEST_TOKEN", "--wait"]
    env = {
        "FRESHREC_CLUSTER__NAMESPACE": "ml-team",
        "FRESHREC_CLUSTER__SERVICE_ACCOUNTS__PIPELINE": "ct-runner",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("freshrec.pipelines.submit.DEFAULT_POLL_S", 0.01)
    result = CliRunner().invoke(app, args)
    assert state.errors == []
    run = state.runs[0]
    assert run["service_account"] == "ct-runner"
    assert [e.get("namespace") for e in state.experiments.values()] == ["ml-team"]
    assert result.exit_code == 1, result.output
    assert "train running" in result.output and "train failed" in result.output
    assert result.output.rstrip().endswith("failed")
    state.run_script = [("SUCCEEDED", {"ingest": "SUCCEEDED"})]
    assert CliRunner().invoke(app, args).exit_code == 0


def test_drift_trigger_authenticates_with_the_pods_projected_token(kfp_api, tmp_path, monkeypatch):
    """KfpLauncher in a pod: the bearer token is the mounted service-account token (re-read per request)."""
    from freshrec.config import load_settings
    from freshrec.pipelines.build import package_path
    from freshrec.triggers import KfpLauncher

    url, state = kfp_api
    token = tmp_path / "token"
    token.write_text("s3cret")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    settings = load_settings(workdir=tmp_path / "w", pipeline={"host": url})
    launcher = KfpLauncher.from_settings(settings.pipeline, package_path("continuous_training"))
    run_id = launcher.launch("drift on 12 of 20 features")
    assert state.errors == []
    run = state.runs[0]
    assert run["run_id"] == run_id and run["service_account"] == settings.cluster.service_accounts.pipeline
    assert launcher.is_running(run_id) is False  # the fake answers SUCCEEDED
    token.write_text("rotated")  # kubelet rotates the file; the next request carries the new token
    with pytest.raises(Exception, match=r"401|Unauthorized"):
        launcher.launch("again")
