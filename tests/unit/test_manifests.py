"""The kustomize manifests: every overlay builds, and every object it produces is valid.

Built-in kinds are validated with kubernetes-validate against the Kubernetes 1.32 schemas (strict: unknown
fields fail); custom resources against the ``openAPIV3Schema`` of the served version in the upstream CRDs
in ``../shared/schemas/crds`` (closed like the API server's pruning, so unknown fields fail too). Then
the properties that matter for serving are asserted on the rendered objects: security context, canary
steps equal to the default plan, thresholds equal to the settings, least-privilege RBAC, GPU wiring.
"""

from __future__ import annotations

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


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_every_object_is_valid(built, crd_schemas, overlay):
    import kubernetes_validate

    objs = built[overlay]
    assert len(objs) >= 15
    for obj in objs:
        key = (obj["apiVersion"], obj["kind"])
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"].get("namespace", "freshrec") == "freshrec", name
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


def test_kinds_present(built):
    kinds = {o["kind"] for o in built["base"]}
    assert {
        "Rollout",
        "Service",
        "HTTPRoute",
        "AnalysisTemplate",
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "CronJob",
        "ConfigMap",
        "PersistentVolumeClaim",
    } <= kinds


def test_rollout_steps_are_the_default_plan(built):
    expected = CanaryPlan.default().to_argo_steps()
    for overlay in ["base", *OVERLAYS]:
        rollout = one(built[overlay], "Rollout", "ctr-serving")
        assert rollout["spec"]["strategy"]["canary"]["steps"] == expected, overlay


def test_analysis_templates_match_plan_and_settings(built):
    objs = built["base"]
    rollout = one(objs, "Rollout")
    templates = {o["metadata"]["name"]: o for o in objs if o["kind"] == "AnalysisTemplate"}
    referenced = {
        t["templateName"]
        for step in rollout["spec"]["strategy"]["canary"]["steps"]
        if "analysis" in step
        for t in step["analysis"]["templates"]
    }
    assert referenced <= set(templates)
    # Every argument a template needs without a default is passed by the analysis step.
    step_args = {
        a["name"]
        for s in rollout["spec"]["strategy"]["canary"]["steps"]
        if "analysis" in s
        for a in s["analysis"]["args"]
    }
    for name in referenced:
        required = {a["name"] for a in templates[name]["spec"]["args"] if "value" not in a}
        assert required <= step_args, (name, required - step_args)

    s = RolloutSettings()
    metrics = {m["name"]: m for m in templates["ctr-serving-latency-errors"]["spec"]["metrics"]}
    assert metrics["error-rate"]["successCondition"].endswith(f"<= {s.max_error_rate:g}")
    assert metrics["latency-p99-ms"]["successCondition"].endswith(f"<= {s.max_p99_latency_ms:g}")
    for m in metrics.values():
        assert "{{args.canary-hash}}" in m["provider"]["prometheus"]["query"]

    job = templates["ctr-serving-online-quality"]["spec"]["metrics"][0]["provider"]["job"]["spec"]
    container = job["template"]["spec"]["containers"][0]
    assert container["command"][0] == "freshrec" and container["command"][-2:] == ["rollout", "analyze"]
    assert "--canary-version={{args.canary-version}}" in container["args"]
    assert job["backoffLimit"] == 0


def _pod_specs(objs: list[dict]):
    for o in objs:
        spec = o.get("spec", {})
        if o["kind"] == "Rollout":
            yield o["metadata"]["name"], spec["template"]["spec"]
        elif o["kind"] == "CronJob":
            yield o["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]["spec"]
        elif o["kind"] == "AnalysisTemplate":
            for m in spec["metrics"]:
                if "job" in m.get("provider", {}):
                    yield (
                        f"{o['metadata']['name']}/{m['name']}",
                        m["provider"]["job"]["spec"]["template"]["spec"],
                    )


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_pods_are_locked_down(built, overlay):
    pods = dict(_pod_specs(built[overlay]))
    assert "ctr-serving" in pods and "freshrec-drift-monitor" in pods
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert c.get("image"), (name, c["name"])
            assert "memory" in c["resources"]["limits"], (name, c["name"])


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_serving_pod(built, overlay):
    objs = built[overlay]
    rollout = one(objs, "Rollout", "ctr-serving")
    pod = rollout["spec"]["template"]["spec"]
    tfs = next(c for c in pod["containers"] if c["name"] == "tfserving")
    assert tfs["image"].startswith("tensorflow/serving:")
    args = dict(a.removeprefix("--").split("=", 1) for a in tfs["args"])
    assert args["model_config_file"] == "/config/models.config"
    assert args["allow_version_labels_for_unavailable_models"] == "true"
    for probe in ("readinessProbe", "livenessProbe"):
        assert tfs[probe]["httpGet"]["path"] == "/v1/models/ctr"
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = next(m for m in tfs["volumeMounts"] if m["mountPath"] == "/models")
    assert models["readOnly"] is True
    assert volumes[models["name"]]["persistentVolumeClaim"]["claimName"] == "freshrec-models"
    # The monitoring config file is a key of the mounted ConfigMap, and turns Prometheus on.
    cm = one(objs, "ConfigMap", "ctr-serving-config")
    mon_dir, mon_file = args["monitoring_config_file"].rsplit("/", 1)
    mount = next(m for m in tfs["volumeMounts"] if m["mountPath"] == mon_dir)
    assert volumes[mount["name"]]["configMap"]["name"] == "ctr-serving-config"
    assert re.search(r"enable:\s*true", cm["data"][mon_file])
    path = re.search(r'path:\s*"([^"]+)"', cm["data"][mon_file]).group(1)
    assert one(objs, "ServiceMonitor")["spec"]["endpoints"][0]["path"] == path
    # The model version reaches the init container from the pod template annotation.
    init = pod["initContainers"][0]
    env = {e["name"]: e for e in init["env"]}
    assert MODEL_VERSION_ANNOTATION in env["MODEL_VERSION"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert MODEL_VERSION_ANNOTATION in rollout["spec"]["template"]["metadata"]["annotations"]


def test_model_config_template_is_a_valid_model_server_config(built):
    """Rendered for a version, the template parses as TF Serving's ModelServerConfig (official proto)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    cm = one(built["base"], "ConfigMap", "ctr-serving-config")
    text = cm["data"]["models.config.tmpl"].replace("__MODEL_VERSION__", "7")
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "ctr" and model.base_path == "/models/ctr"
    assert list(model.model_version_policy.specific.versions) == [7]
    assert dict(model.version_labels) == {"serving": 7}


def test_traffic_routing_is_wired(built):
    objs = built["base"]
    canary = one(objs, "Rollout")["spec"]["strategy"]["canary"]
    plugin = canary["trafficRouting"]["plugins"]["argoproj-labs/gatewayAPI"]
    for kind, key, port in (("HTTPRoute", "httpRoute", 8501), ("GRPCRoute", "grpcRoute", 8500)):
        route = one(objs, kind)
        assert plugin[key] == route["metadata"]["name"]
        backends = {
            (b["name"], b["port"]): b["weight"] for r in route["spec"]["rules"] for b in r["backendRefs"]
        }
        assert backends == {(canary["stableService"], port): 100, (canary["canaryService"], port): 0}
    services = {o["metadata"]["name"] for o in objs if o["kind"] == "Service"}
    assert {canary["stableService"], canary["canaryService"]} <= services


def test_deployer_rbac_is_least_privilege(built):
    objs = built["base"]
    role = one(objs, "Role", "freshrec-deployer")
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert granted == {
        ("argoproj.io", "rollouts", "get"),
        ("argoproj.io", "rollouts", "patch"),
        ("argoproj.io", "rollouts/status", "patch"),
        ("argoproj.io", "analysisruns", "get"),
    }
    binding = one(objs, "RoleBinding", "freshrec-deployer")
    assert binding["roleRef"]["name"] == "freshrec-deployer"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "freshrec-deployer", "namespace": "freshrec"}
    ]
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


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


def test_drift_monitor_schedule(built):
    # The monitor's alerting rules (base/monitoring) are part of every build.
    assert one(built["base"], "PrometheusRule", "freshrec-monitor")["spec"]["groups"]
    cron = one(built["base"], "CronJob", "freshrec-drift-monitor")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][0] == "freshrec" and container["command"][-2:] == ["drift", "check"]
