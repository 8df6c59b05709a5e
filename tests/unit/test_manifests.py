"""The kustomize manifests: every overlay builds, and every object it produces is valid.

Built-in kinds are validated with kubernetes-validate against the Kubernetes 1.32 schemas (strict: unknown
fields fail); custom resources against the ``openAPIV3Schema`` of the served version in the upstream CRDs
in ``../shared/schemas/crds`` (closed like the API server's pruning, so unknown fields fail too). The base
is rendered from the cluster layout (``freshrec cluster render``): the checked-in files must equal a fresh
render, and every claim, subPath, mount path, Service, account, ConfigMap and Secret the rendered pods use
must be the layout's and must exist. Then the properties that matter are asserted on the rendered objects:
security context, resources and probes of every pod, a NetworkPolicy for every pod, canary steps equal to
the default plan, analyses that cannot pass on no data, least-privilege RBAC, GPU wiring.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from freshrec.config import RolloutSettings
from freshrec.rollout.k8s import MODEL_VERSION_ANNOTATION, load_crd_schemas, validate_custom_object
from freshrec.rollout.plan import CanaryPlan

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
CRDS = REPO / ".." / "shared" / "schemas" / "crds"
OVERLAYS = ["local", "gpu", "production"]
K8S_VERSION = "1.32"
CRD_FILES = [
    "argo-rollouts_rollout-crd.yaml",
    "argo-rollouts_analysis-template-crd.yaml",
    "gateway.networking.k8s.io_httproutes.yaml",
    "gateway.networking.k8s.io_grpcroutes.yaml",
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
]


def kustomize(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not on PATH: it is needed to build the kustomize overlays (kubectl kustomize)"
        )
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return [d for d in yaml.load_all(proc.stdout, Loader=yaml.CSafeLoader) if d]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    out = {name: kustomize(MANIFESTS / "overlays" / name) for name in OVERLAYS}
    out["base"] = kustomize(MANIFESTS / "base")
    return out


@pytest.fixture(scope="module")
def crd_schemas():
    missing = [f for f in CRD_FILES if not (CRDS / f).is_file()]
    if missing:
        pytest.fail(f"CRD schemas not found in {CRDS.resolve()}: {missing}")
    return load_crd_schemas(CRDS / f for f in CRD_FILES)


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def layout():
    from freshrec.cluster.layout import ClusterLayout

    return ClusterLayout()


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_every_object_is_valid(built, crd_schemas, overlay):
    import kubernetes_validate

    objs = built[overlay]
    assert len(objs) >= 40
    for obj in objs:
        key = (obj["apiVersion"], obj["kind"])
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "freshrec", name
        if key in crd_schemas:
            validate_custom_object(obj, crd_schemas)
        else:
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{overlay}: {name} ({key[0]}) has neither a Kubernetes nor a CRD schema")
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{overlay}: {name} is invalid: {exc}")


def test_crd_validation_catches_typos(crd_schemas, built):
    """The CRD check is not vacuous: a misspelt canary step field is rejected."""
    rollout = one(built["base"], "Rollout")
    bad = yaml.safe_load(yaml.safe_dump(rollout))
    bad["spec"]["strategy"]["canary"]["steps"][0] = {"setweight": 10}
    with pytest.raises(ValueError, match="setweight"):
        validate_custom_object(bad, crd_schemas)


def test_checked_in_base_is_the_render_of_the_layout(layout):
    """`freshrec cluster render` output is checked in; a stale file (or a hand edit) fails here."""
    from freshrec.cluster.render import dump, render

    for rel, objects in render(layout).items():
        path = MANIFESTS / "base" / rel
        assert path.is_file(), f"{path} is missing: run `make compile`"
        assert path.read_text() == dump(objects), (
            f"{path} differs from the layout's render: run `make compile`"
        )
    base = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    assert base["namespace"] == layout.namespace


def test_every_workload_of_the_loop_is_deployed(built):
    for overlay in ["base", *OVERLAYS]:
        components = {
            (o["kind"], (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component"))
            for o in built[overlay]
        }
        for kind, component in [
            ("Rollout", "model-server"),
            ("Deployment", "gateway"),
            ("Deployment", "online-learner"),
            ("Deployment", "event-sink"),
            ("Deployment", "stream-features"),
            ("StatefulSet", "feature-store"),
            ("Job", "feast-apply"),
            ("CronJob", "materialize"),
            ("CronJob", "drift-monitor"),
        ]:
            assert (kind, component) in components, (overlay, kind, component)


def _pod_specs(objs: list[dict]):
    for o in objs:
        spec = o.get("spec", {})
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in ("Rollout", "Deployment", "StatefulSet", "Job"):
            yield name, spec["template"]["spec"]
        elif o["kind"] == "CronJob":
            yield name, spec["jobTemplate"]["spec"]["template"]["spec"]
        elif o["kind"] == "AnalysisTemplate":
            for m in spec["metrics"]:
                if "job" in m.get("provider", {}):
                    yield f"{name}/{m['name']}", m["provider"]["job"]["spec"]["template"]["spec"]


def _pod_labels(objs: list[dict]):
    for o in objs:
        spec = o.get("spec", {})
        if o["kind"] in ("Rollout", "Deployment", "StatefulSet", "Job"):
            yield o, spec["template"]["metadata"]["labels"]
        elif o["kind"] == "CronJob":
            yield o, spec["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        elif o["kind"] == "AnalysisTemplate":
            for m in spec["metrics"]:
                if "job" in m.get("provider", {}):
                    yield o, m["provider"]["job"]["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_pods_are_locked_down(built, overlay):
    pods = dict(_pod_specs(built[overlay]))
    assert len(pods) >= 9
    long_running = ("Rollout/", "Deployment/", "StatefulSet/")
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert c.get("image"), (name, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), (name, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), (name, c["name"])
        if name.startswith(long_running):
            for c in pod["containers"]:
                assert "livenessProbe" in c and "readinessProbe" in c, (name, c["name"])


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_api_tokens_only_where_the_api_is_called(built, overlay, layout):
    """Only the pipeline's account mounts a Kubernetes token (the rollout task); the drift CronJob gets a
    projected token for the KFP API, audience pipelines.kubeflow.org; every other pod none."""
    objs = built[overlay]
    accounts = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ServiceAccount"}
    assert accounts[layout.service_accounts.pipeline].get("automountServiceAccountToken") is True
    for name, pod in _pod_specs(objs):
        assert pod.get("automountServiceAccountToken") is False, name
        projected = [v for v in pod["volumes"] if "projected" in v]
        if name == "CronJob/freshrec-drift-monitor":
            (token,) = projected[0]["projected"]["sources"]
            assert token["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
        else:
            assert not projected, name


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_every_pod_has_its_own_network_policy(built, overlay):
    from freshrec.cluster.rehearsal_objects import selector_matches

    objs = built[overlay]
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert (
        deny and deny[0]["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny[0]["spec"]
    )
    own = [p for p in policies if p["spec"]["podSelector"] != {}]
    for obj, labels in _pod_labels(objs):
        matching = [p for p in own if selector_matches(p["spec"]["podSelector"], labels)]
        assert matching, f"{obj['kind']}/{obj['metadata']['name']} ({labels}) has no NetworkPolicy of its own"


def _containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_mounts_are_the_layouts(built, overlay, layout):
    """Every freshrec container mounts each artefact at <workdir>/<artefact> from the layout's claim and
    subPath, so a writer and a reader of the same artefact meet; TF Serving reads the repository at its
    own mount, the path its model config's base_path starts with."""
    objs = built[overlay]
    claims = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
    by_path = {layout.artefact_path(a): a for a in layout.artefacts}
    seen: dict[str, set[str]] = {}
    for name, pod in _pod_specs(objs):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in _containers(pod):
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:  # a StatefulSet's own volumeClaimTemplate (Redis, PostgreSQL)
                    continue
                pvc = volumes[m["name"]].get("persistentVolumeClaim")
                if pvc is None:
                    continue
                assert pvc["claimName"] in claims, (name, c["name"], pvc["claimName"])
                if m["mountPath"] == layout.serving_models_mount:
                    assert (pvc["claimName"], m.get("subPath", "")) == layout.claim_of("models"), name
                    continue
                artefact = by_path.get(m["mountPath"])
                assert artefact, (
                    f"{name}/{c['name']} mounts {m['mountPath']}, not an artefact path of the layout"
                )
                assert (pvc["claimName"], m.get("subPath", "")) == layout.claim_of(artefact), (name, artefact)
                seen.setdefault(artefact, set()).add(f"{name}/{c['name']}")
    # The connections the issue names: the gateway writes the prediction log the analysis Job reads, the
    # pipeline's references are read by the drift CronJob (both on the same claim and subPath, above).
    assert "Deployment/ranking-gateway/gateway" in seen["predictions"]
    assert any("ctr-serving-online-quality" in w for w in seen["predictions"])
    assert "CronJob/freshrec-drift-monitor/drift" in seen["references"]
    assert "Deployment/freshrec-online-learner/learner" in seen["models"]
    # The stream feature job's checkpoint and positions survive a restart: on the state claim.
    assert "Deployment/freshrec-stream-features/stream" in seen["state"]


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_every_reference_resolves(built, overlay, layout):
    """ConfigMaps, Secrets, Services and accounts a pod names exist in the render (the production overlay
    and the base leave the layout's external secrets to the operator, as the runbook says)."""
    objs = built[overlay]
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    external = set(layout.external_secrets()) if overlay in ("base", "production") else set()
    for name, pod in _pod_specs(objs):
        assert ("ServiceAccount", pod["serviceAccountName"]) in names, (name, pod["serviceAccountName"])
        for v in pod["volumes"]:
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in names, (name, v)
        for c in _containers(pod):
            for e in c.get("envFrom", []):
                assert ("ConfigMap", e["configMapRef"]["name"]) in names, (name, e)
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ("Secret", ref["name"]) in names or ref["name"] in external, (name, ref)
    services = {o["metadata"]["name"] for o in objs if o["kind"] == "Service"}
    env = one(objs, "ConfigMap", layout.settings_configmap)["data"]
    assert env == layout.settings_env()
    for key in ("FRESHREC_FEATURES__REDIS_CONNECTION", "FRESHREC_FEATURES__POSTGRES_URL"):
        host = env[key].split("@")[-1].split("/")[0].split(":")[0]
        assert host in services, (key, host)
    gateway = one(objs, "Deployment", layout.services.gateway.name)["spec"]["template"]["spec"]["containers"][
        0
    ]
    target = next(a for a in gateway["args"] if a.startswith("--model-server=")).split("=", 1)[1]
    assert target.split(":")[0] in services


def test_rollout_steps_are_the_default_plan(built):
    expected = CanaryPlan.default().to_argo_steps()
    for overlay in ["base", *OVERLAYS]:
        rollout = one(built[overlay], "Rollout", "ctr-serving")
        assert rollout["spec"]["strategy"]["canary"]["steps"] == expected, overlay


def test_the_plans_clicks_reach_the_analysis_job(built):
    steps = one(built["base"], "Rollout")["spec"]["strategy"]["canary"]["steps"]
    analyses = [s["analysis"] for s in steps if "analysis" in s]
    plan_clicks = [s.pause.until_clicks for s in CanaryPlan.default().steps if hasattr(s, "pause")]
    assert [next(a["value"] for a in x["args"] if a["name"] == "min-clicks") for x in analyses] == [
        str(c) for c in plan_clicks
    ]
    job = one(built["base"], "AnalysisTemplate", "ctr-serving-online-quality")
    container = job["spec"]["metrics"][0]["provider"]["job"]["spec"]["template"]["spec"]["containers"][0]
    assert "--min-clicks={{args.min-clicks}}" in container["args"]


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_analyses_cannot_pass_on_no_data(built, overlay):
    """Argo's conditions, evaluated as Argo does: an empty or NaN result is neither Successful nor Failed."""
    from freshrec.cluster.rehearsal_prom import evaluate_measurement

    s = RolloutSettings()
    template = one(built[overlay], "AnalysisTemplate", "ctr-serving-latency-errors")
    limits = {"error-rate": s.max_error_rate, "latency-p99-ms": s.max_p99_latency_ms}
    for metric in template["spec"]["metrics"]:
        limit = limits[metric["name"]]
        assert evaluate_measurement(metric, [])[0] == "Inconclusive", metric["name"]
        assert evaluate_measurement(metric, [float("nan")])[0] == "Inconclusive", metric["name"]
        assert evaluate_measurement(metric, [limit * 0.5])[0] == "Successful", metric["name"]
        assert evaluate_measurement(metric, [limit * 2])[0] == "Failed", metric["name"]
        query = metric["provider"]["prometheus"]["query"]
        # From the Rollout's own args: a namespace overlay moves the queries with the pods.
        assert 'namespace="{{args.namespace}}"' in query and 'service="{{args.service}}"' in query
        assert "freshrec" not in query


def test_analysis_templates_match_plan_and_settings(built):
    objs = built["base"]
    rollout = one(objs, "Rollout")
    templates = {o["metadata"]["name"]: o for o in objs if o["kind"] == "AnalysisTemplate"}
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    referenced = {
        t["templateName"] for step in steps if "analysis" in step for t in step["analysis"]["templates"]
    }
    assert referenced <= set(templates)
    step_args = {a["name"] for s in steps if "analysis" in s for a in s["analysis"]["args"]}
    for name in referenced:
        required = {a["name"] for a in templates[name]["spec"]["args"] if "value" not in a}
        assert required <= step_args, (name, required - step_args)
    namespace = next(
        a for s in steps if "analysis" in s for a in s["analysis"]["args"] if a["name"] == "namespace"
    )
    assert namespace["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    service = next(
        a for s in steps if "analysis" in s for a in s["analysis"]["args"] if a["name"] == "service"
    )
    scraped = one(objs, "ServiceMonitor", "ctr-serving")["spec"]["selector"]["matchLabels"]
    svc = one(objs, "Service", service["value"])
    assert all(svc["metadata"]["labels"].get(k) == v for k, v in scraped.items())

    job = templates["ctr-serving-online-quality"]["spec"]["metrics"][0]["provider"]["job"]["spec"]
    container = job["template"]["spec"]["containers"][0]
    assert container["command"] == ["freshrec"] and container["args"][:2] == ["rollout", "analyze"]
    assert "--canary-version={{args.canary-version}}" in container["args"]
    assert job["backoffLimit"] == 0


def test_kustomize_images_reach_every_container(tmp_path):
    """An overlay's `images:` rewrites the project image everywhere, the analysis Job's too."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(MANIFESTS / "overlays" / "local", overlay)],
                "images": [
                    {"name": "ghcr.io/freshrec/freshrec", "newName": "registry.example/fr", "newTag": "7"}
                ],
            }
        )
    )
    objs = kustomize(overlay)
    images = {c["image"] for _, pod in _pod_specs(objs) for c in _containers(pod)}
    assert "registry.example/fr:7" in images
    assert not [i for i in images if i.startswith("ghcr.io/freshrec/freshrec:")], images


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_serving_pod(built, overlay, layout):
    objs = built[overlay]
    rollout = one(objs, "Rollout", "ctr-serving")
    pod = rollout["spec"]["template"]["spec"]
    tfs = next(c for c in pod["containers"] if c["name"] == "tfserving")
    assert tfs["image"].startswith("tensorflow/serving:")
    args = dict(a.removeprefix("--").split("=", 1) for a in tfs["args"])
    assert args["model_config_file"] == "/config/models.config"
    assert int(args["model_config_file_poll_wait_seconds"]) > 0  # online exports are picked up
    assert args["allow_version_labels_for_unavailable_models"] == "true"
    for probe in ("readinessProbe", "livenessProbe"):
        assert tfs[probe]["httpGet"]["path"] == "/v1/models/ctr"
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = next(m for m in tfs["volumeMounts"] if m["mountPath"] == layout.serving_models_mount)
    assert models["readOnly"] is True
    assert volumes[models["name"]]["persistentVolumeClaim"]["claimName"] == layout.claim_of("models")[0]
    cm = one(objs, "ConfigMap", "ctr-serving-config")
    mon_dir, mon_file = args["monitoring_config_file"].rsplit("/", 1)
    mount = next(m for m in tfs["volumeMounts"] if m["mountPath"] == mon_dir)
    assert volumes[mount["name"]]["configMap"]["name"] == "ctr-serving-config"
    assert re.search(r"enable:\s*true", cm["data"][mon_file])
    path = re.search(r'path:\s*"([^"]+)"', cm["data"][mon_file]).group(1)
    assert one(objs, "ServiceMonitor", "ctr-serving")["spec"]["endpoints"][0]["path"] == path
    assert args["batching_parameters_file"].rsplit("/", 1)[1] in cm["data"]
    # The model version reaches the config renderers from the pod template annotation.
    for c in pod["initContainers"] + [c for c in pod["containers"] if c["name"] == "model-config"]:
        env = {e["name"]: e for e in c["env"]}
        assert MODEL_VERSION_ANNOTATION in env["MODEL_VERSION"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert "--version=$(MODEL_VERSION)" in c["args"]
        assert f"--base-path={layout.serving_base_path('ctr')}" in c["args"]
    assert MODEL_VERSION_ANNOTATION in rollout["spec"]["template"]["metadata"]["annotations"]


def test_rendered_model_config_is_a_valid_model_server_config(tmp_path):
    """What the renderer writes parses as TF Serving's ModelServerConfig (official proto)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from freshrec.rollout.model_config import model_config_text

    config = text_format.Parse(
        model_config_text("ctr", "/models/ctr", 7), model_server_config_pb2.ModelServerConfig()
    )
    (model,) = config.model_config_list.config
    assert model.name == "ctr" and model.base_path == "/models/ctr"
    assert list(model.model_version_policy.specific.versions) == [7]
    assert dict(model.version_labels) == {"serving": 7}


def test_traffic_routing_is_wired(built, layout):
    objs = built["base"]
    canary = one(objs, "Rollout")["spec"]["strategy"]["canary"]
    plugin = canary["trafficRouting"]["plugins"]["argoproj-labs/gatewayAPI"]
    assert plugin["namespace"] == layout.namespace
    for kind, key, port in (("HTTPRoute", "httpRoute", 8501), ("GRPCRoute", "grpcRoute", 8500)):
        route = one(objs, kind)
        assert plugin[key] == route["metadata"]["name"]
        backends = {
            (b["name"], b["port"]): b["weight"] for r in route["spec"]["rules"] for b in r["backendRefs"]
        }
        assert backends == {(canary["stableService"], port): 100, (canary["canaryService"], port): 0}
    # The gateway's gRPC goes to the Service the mesh route is attached to.
    grpc = one(objs, "GRPCRoute")
    assert grpc["spec"]["parentRefs"] == [
        {"group": "", "kind": "Service", "name": layout.services.serving, "port": 8500}
    ]
    assert layout.model_server_target() == f"{layout.services.serving}:8500"
    services = {o["metadata"]["name"] for o in objs if o["kind"] == "Service"}
    assert {canary["stableService"], canary["canaryService"], layout.services.serving} <= services


def _granted(role: dict) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_rbac_is_least_privilege(built, layout):
    objs = built["base"]
    assert _granted(one(objs, "Role", "freshrec-deployer")) == {
        ("argoproj.io", "rollouts", "get"),
        ("argoproj.io", "rollouts", "patch"),
        ("argoproj.io", "rollouts/status", "patch"),
        ("argoproj.io", "analysisruns", "get"),
    }
    assert _granted(one(objs, "Role", "freshrec-retrain")) == {
        ("pipelines.kubeflow.org", "runs", "create"),
        ("pipelines.kubeflow.org", "runs", "get"),
        ("pipelines.kubeflow.org", "experiments", "create"),
        ("pipelines.kubeflow.org", "experiments", "get"),
        ("pipelines.kubeflow.org", "experiments", "list"),
    }
    for binding, account in (
        ("freshrec-deployer", layout.service_accounts.pipeline),
        ("freshrec-pipeline-runner", layout.service_accounts.pipeline),
        ("freshrec-retrain", layout.service_accounts.drift),
    ):
        assert one(objs, "RoleBinding", binding)["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": layout.namespace}
        ]
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    # The pipeline's runs are submitted as that account, in that namespace.
    from freshrec.config import load_settings
    from freshrec.pipelines.submit import run_request

    req = run_request(load_settings())
    assert (req.namespace, req.service_account) == (layout.namespace, layout.service_accounts.pipeline)


def test_overlays_differ_where_they_should(built):
    def pod(overlay):
        return one(built[overlay], "Rollout")["spec"]["template"]["spec"]

    gpu = pod("gpu")
    tfs = gpu["containers"][0]
    assert tfs["image"].endswith("-gpu")
    assert tfs["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert gpu["nodeSelector"]
    assert "nvidia.com/gpu" not in str(pod("base")) and "nvidia.com/gpu" not in str(pod("production"))
    base_r = one(built["base"], "Rollout")["spec"]["replicas"]
    assert (
        one(built["production"], "Rollout")["spec"]["replicas"]
        > base_r
        > one(built["local"], "Rollout")["spec"]["replicas"]
    )
    assert one(built["local"], "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "ctr-serving"}},
    }
    # Development overlays carry a generated PostgreSQL secret; production leaves it to the operator.
    assert [o for o in built["local"] if o["kind"] == "Secret"]
    assert not [o for o in built["production"] if o["kind"] == "Secret"]


def test_drift_monitor_schedule(built, layout):
    assert one(built["base"], "PrometheusRule", "freshrec-monitor")["spec"]["groups"]
    cron = one(built["base"], "CronJob", "freshrec-drift-monitor")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["drift", "check"]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"][2:] if "=" in a)
    assert "--with-features" in container["args"]
    assert args["reference"] == f"{layout.artefact_path('references')}/ctr/stable.parquet"
    assert args["current"] == layout.artefact_path("eventlog")
    assert args["trigger"] == "kfp"


def _allows(rules: list[dict], labels: dict[str, str], port: int, side: str, namespace: str | None = None):
    """Whether one of a NetworkPolicy's ingress (side="from") or egress (side="to") rules admits a pod with
    ``labels`` (in the policy's namespace, or any pod of ``namespace`` by its name label) on ``port``."""
    from freshrec.cluster.rehearsal_objects import selector_matches

    for rule in rules:
        if not any(p["port"] == port for p in rule.get("ports", [])):
            continue
        for peer in rule.get(side, []):
            if namespace is not None:
                ns = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
                if ns.get("kubernetes.io/metadata.name") == namespace and "podSelector" not in peer:
                    return True
            elif (
                "podSelector" in peer
                and "namespaceSelector" not in peer
                and selector_matches(peer["podSelector"], labels)
            ):
                return True
    return False


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_stream_feature_job(built, overlay, layout):
    """The stream feature job runs the real CLI on Redis Streams, is probed on its metrics port and its
    heartbeat, is scraped through its Service, and its NetworkPolicy and the stores' policies meet."""
    import typer

    from freshrec.config import StreamFeatureSettings
    from freshrec.features.cli import app

    objs = built[overlay]
    svc_layout = layout.services.stream_features
    deploy = one(objs, "Deployment", svc_layout.name)
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert pod["serviceAccountName"] == layout.service_accounts.workloads
    (c,) = pod["containers"]
    assert c["command"] == ["freshrec"] and c["args"][:2] == ["features", "stream"]
    # Every rendered flag is an option of `freshrec features stream` (a renamed option fails here).
    command = typer.main.get_command(app).commands["stream"]
    known = {o for p in command.params for o in p.opts}
    args = dict(a.split("=", 1) for a in c["args"][2:])
    assert set(args) <= known, set(args) - known
    assert args["--source"] == "redis"
    assert int(args["--metrics-port"]) == svc_layout.port
    assert float(args["--wait-for-store-s"]) > 0  # a new cluster applies the feature repo after ingest
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": svc_layout.port}
    assert c["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert args["--heartbeat"] in c["livenessProbe"]["exec"]["command"][-1]
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])  # the heartbeat is writable
    # PGPASSWORD for the SQL registry, settings from the layout's ConfigMap.
    assert {"PGPASSWORD", "HOME"} <= {e["name"] for e in c["env"]}
    assert c["envFrom"] == [{"configMapRef": {"name": layout.settings_configmap}}]
    # Its own consumer group, not the learner's: it never moves the learner's positions.
    from freshrec.config import OnlineSettings

    assert StreamFeatureSettings().group != OnlineSettings().group
    # Scraped: ServiceMonitor -> Service (labels, port name) -> container port.
    svc = one(objs, "Service", svc_layout.name)
    from freshrec.cluster.rehearsal_objects import selector_matches

    assert selector_matches({"matchLabels": svc["spec"]["selector"]}, labels)
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["port"] == svc_layout.port and ports[svc_port["targetPort"]] == svc_layout.port
    monitor = one(objs, "ServiceMonitor", svc_layout.name)
    assert selector_matches(monitor["spec"]["selector"], svc["metadata"]["labels"])
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [svc_port["name"]]
    # Network: its egress reaches Redis (stream + online store) and PostgreSQL (registry), their ingress
    # admits it; Prometheus' namespace may scrape it.
    policies = [o for o in objs if o["kind"] == "NetworkPolicy" and o["spec"]["podSelector"] != {}]
    own = [p for p in policies if selector_matches(p["spec"]["podSelector"], labels)]
    assert own
    pods = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in objs
        if o["kind"] in ("Deployment", "StatefulSet")
    }
    for store in (layout.services.redis, layout.services.postgres):
        assert any(_allows(p["spec"]["egress"], pods[store.name], store.port, "to") for p in own), store
        theirs = [p for p in policies if selector_matches(p["spec"]["podSelector"], pods[store.name])]
        assert any(_allows(p["spec"]["ingress"], labels, store.port, "from") for p in theirs), store
    prom_ns = layout.services.prometheus.namespace
    assert any(_allows(p["spec"]["ingress"], {}, svc_layout.port, "from", prom_ns) for p in own)


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_every_service_monitor_reaches_a_metrics_port(built, overlay):
    """ServiceMonitor -> Service (labels) -> port name -> targetPort -> a container port of the selected pods:
    the chain Prometheus follows (the rehearsal's static check); a wrong targetPort is refused naming both."""
    import copy

    from freshrec.cluster.rehearsal_breaks import break_service_port
    from freshrec.cluster.rehearsal_objects import Broken, Objects, check_service_monitors

    objs = built[overlay]
    assert any(o["kind"] == "ServiceMonitor" for o in objs)
    check_service_monitors(Objects(objs))
    broken = copy.deepcopy(objs)
    one_end, other_end = break_service_port(broken)
    with pytest.raises(Broken) as info:
        check_service_monitors(Objects(broken))
    text = f"{info.value.writer} | {info.value.reader} | {info.value.detail}"
    assert one_end in text and other_end in text and "Deployment" in info.value.reader
