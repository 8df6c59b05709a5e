"""The cluster rehearsal's engine: rendered pods as local processes, Services, the in-cluster API.

What is real here: the pods' commands run as processes of this machine, each container in its own mount
namespace (``unshare --mount``) with its volumes bind-mounted at their mount paths, inside its own network
namespace (``ip netns``) on a bridge; the environment is resolved from ConfigMaps, Secrets and the
downward API as the kubelet resolves it; the in-cluster client is the official ``kubernetes`` package with
``load_incluster_config`` (token, CA and namespace files, https to ``KUBERNETES_SERVICE_HOST``). What
stands in for a cluster: the API server (``freshrec.cluster.rehearsal_api``: TLS, per-service-account
tokens, the rendered RBAC), the kube-proxy (a proxy per Service to the ready pods its selector matches),
DNS (a per-pod ``/etc/hosts``), a PVC (a folder), the image (this machine's Python environment read through
``docker/Dockerfile``). Needs root (as CI runs), like the rehearsal itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from freshrec.cluster.rehearsal import crd_files
from freshrec.cluster.rehearsal_cluster import Cluster
from freshrec.cluster.rehearsal_objects import Broken

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
IMAGE = "ghcr.io/freshrec/freshrec:0.1.0"

RENDER = """
apiVersion: v1
kind: Namespace
metadata: {name: app}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader, namespace: app}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: app}
data:
  MODE: rehearsal
  app.conf: |
    answer = 42
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: app}
stringData: {password: s3cret}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: app}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: read-settings, namespace: app}
rules:
- {apiGroups: [""], resources: [configmaps], resourceNames: [settings], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: read-settings, namespace: app}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-settings}
subjects: [{kind: ServiceAccount, name: reader, namespace: app}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-a, namespace: app}
spec:
  selector: {matchLabels: {app: web-a}}
  template:
    metadata: {labels: {app: web-a, tier: web}}
    spec:
      containers:
      - name: web
        image: IMAGE
        command: [sh, -c, 'mkdir -p /tmp/www && echo "served by $HOSTNAME" > /tmp/www/index.html && cd /tmp/www && exec python3 -m http.server 8501']
        ports: [{name: http, containerPort: 8501}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-b, namespace: app}
spec:
  selector: {matchLabels: {app: web-b}}
  template:
    metadata: {labels: {app: web-b, tier: web}}
    spec:
      containers:
      - name: web
        image: IMAGE
        command: [sh, -c, 'mkdir -p /tmp/www && echo "served by $HOSTNAME" > /tmp/www/index.html && cd /tmp/www && exec python3 -m http.server 8501']
        ports: [{name: http, containerPort: 8501}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec:
  selector: {app: web-b}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: app}
spec:
  selector: {app: no-such-pods}
  ports: [{port: 80, targetPort: 8501}]
""".replace("IMAGE", IMAGE)

PROBE = """
import json, os, socket, urllib.request
out = {}
for name, url in (("short", "http://web/"), ("ns", "http://web.app/"), ("fqdn", "http://web.app.svc.cluster.local/"), ("nobody", "http://nobody/")):
    try:
        out[name] = urllib.request.urlopen(url, timeout=5).read().decode().strip()
    except Exception as exc:
        out[name] = f"error: {type(exc).__name__}"
print("RESULT " + json.dumps(out))
"""

API_PROBE = """
import json
from kubernetes import client, config
from kubernetes.client.rest import ApiException
config.load_incluster_config()
v1 = client.CoreV1Api()
out = {"configmap": v1.read_namespaced_config_map("settings", "app").data["MODE"]}
try:
    v1.read_namespaced_secret("creds", "app")
    out["secret"] = "read"
except ApiException as exc:
    out["secret"] = [exc.status, json.loads(exc.body)["message"]]
print("RESULT " + json.dumps(out))
"""


def job(name: str, namespace: str, script: str, **spec: object) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": IMAGE, "command": ["python3", "-c", script]}],
                    **spec,
                }
            },
        },
    }


def result(pod) -> dict:
    text = pod.log_text("main")
    line = next((x for x in text.splitlines() if x.startswith("RESULT ")), None)
    assert line, text[-3000:]
    return json.loads(line[len("RESULT ") :])


@pytest.fixture
def cluster(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the rehearsal needs root (network and mount namespaces), as CI runs it")
    docs = [d for d in yaml.safe_load_all(RENDER) if d]
    c = Cluster(docs, repo=REPO, root=tmp_path / "cluster", crd_files=crd_files(REPO), project_image=IMAGE)
    c.up()
    try:
        yield c
    finally:
        c.down()


def test_a_pod_sees_its_volumes_env_and_identity_as_rendered(cluster):
    script = """
import json, os, pathlib
out = {k: os.environ.get(k) for k in ("MODE", "PASSWORD", "POD_NAME", "VERSION", "KUBERNETES_SERVICE_HOST", "WEB_SERVICE_PORT")}
out["conf"] = open("/etc/app/app.conf").read().strip()
out["ids"] = [os.getuid(), os.getgid(), sorted(os.getgroups())]
pathlib.Path("/data/out/written").write_text("hello")
for path in ("/etc/app/new", "/usr/new", "/data/out/../../escape"):
    try:
        open(path, "w").write("x")
        out[path] = "written"
    except OSError as exc:
        out[path] = exc.strerror
out["sa"] = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
out["cwd"] = os.getcwd()
print("RESULT " + json.dumps(out))
"""
    spec = job("probe", "app", script, serviceAccountName="reader")
    pod_spec = spec["spec"]["template"]["spec"]
    spec["spec"]["template"]["metadata"] = {"annotations": {"freshrec.io/model-version": "7"}}
    pod_spec["securityContext"] = {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000}
    c = pod_spec["containers"][0]
    c["securityContext"] = {"readOnlyRootFilesystem": True}
    c["envFrom"] = [{"configMapRef": {"name": "settings"}}]
    c["env"] = [
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": "VERSION",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['freshrec.io/model-version']"}},
        },
    ]
    c["volumeMounts"] = [
        {"name": "cfg", "mountPath": "/etc/app/app.conf", "subPath": "app.conf"},
        {"name": "data", "mountPath": "/data/out", "subPath": "results"},
    ]
    pod_spec["volumes"] = [
        {"name": "cfg", "configMap": {"name": "settings"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
    ]
    cluster.objects.add(spec)
    pod = cluster.run_job(spec, spec["spec"]["template"], "probe", timeout_s=120)
    assert pod.phase == "Succeeded", pod.logs_summary()
    out = result(pod)
    assert out["MODE"] == "rehearsal" and out["PASSWORD"] == "s3cret" and out["VERSION"] == "7"
    assert out["POD_NAME"] == pod.name and out["KUBERNETES_SERVICE_HOST"] == cluster.api_address[0]
    assert out["WEB_SERVICE_PORT"] == "80"  # kubelet's service links for the pod's namespace
    assert out["conf"] == "answer = 42"
    assert out["ids"] == [1000, 1000, [2000]]  # runAsUser/runAsGroup, fsGroup as a supplementary group
    assert out["/etc/app/new"] == out["/usr/new"] == "Read-only file system"  # readOnlyRootFilesystem
    assert out["sa"] == "app" and out["cwd"] == "/opt/freshrec"  # the Dockerfile's WORKDIR
    written = cluster.root / "volumes" / "app" / "data" / "results" / "written"
    assert written.read_text() == "hello"  # the subPath is a folder of the claim
    assert written.parent.stat().st_gid == 2000  # kubelet's fsGroup ownership change


def test_services_reach_ready_pods_by_name_and_targetport_name(cluster):
    for name in ("web-a", "web-b"):
        (pod,) = cluster.start_workload(cluster.objects.get("Deployment", "app", name))
        pod.wait(lambda p: p.ready, 60, "ready")
    same_ns = job("client", "app", PROBE)
    other_ns = job("client", "other", PROBE)
    for spec in (same_ns, other_ns):
        cluster.objects.add(spec)
    here = result(cluster.run_job(same_ns, same_ns["spec"]["template"], "client", timeout_s=60))
    there = result(cluster.run_job(other_ns, other_ns["spec"]["template"], "client", timeout_s=60))
    # Both pods listen on 8501 in their own network namespaces; the Service's selector picks web-b.
    assert here["short"].startswith("served by web-b") and here["ns"] == here["short"] == here["fqdn"]
    assert here["nobody"].startswith("error")  # no ready endpoint: refused, as kube-proxy refuses
    assert there["short"].startswith("error")  # short names resolve only in the pod's own namespace
    assert there["ns"].startswith("served by web-b")
    routed = [c for c in cluster.network.connections_to("app/web") if c.ok]
    assert routed and all("web-b" in c.backend for c in routed)


def test_in_cluster_client_gets_its_service_account_and_the_rendered_rbac(cluster):
    spec = job("api", "app", API_PROBE, serviceAccountName="reader")
    cluster.objects.add(spec)
    pod = cluster.run_job(spec, spec["spec"]["template"], "api", timeout_s=120)
    out = result(pod)
    assert out["configmap"] == "rehearsal"
    assert out["secret"][0] == 403
    assert 'User "system:serviceaccount:app:reader" cannot get resource "secrets"' in out["secret"][1]
    seen = [(r.identity, r.verb, r.resource, r.code) for r in cluster.api.requests]
    assert ("system:serviceaccount:app:reader", "get", "configmaps", 200) in seen


def test_missing_references_are_refused_naming_both_ends(cluster):
    spec = job("needs-config", "app", "print(1)")
    spec["spec"]["template"]["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": "no-such-config"}}]
    spec["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "cfg", "mountPath": "/cfg"}]
    with pytest.raises(Broken) as info:
        cluster.run_job(spec, spec["spec"]["template"], "needs-config", timeout_s=30)
    assert info.value.kind == "missing-reference"
    assert "Job app/needs-config" in info.value.writer and info.value.reader == "ConfigMap app/no-such-config"
    spec = job("wrong-sa", "app", "print(1)", serviceAccountName="nobody")
    with pytest.raises(Broken, match="ServiceAccount app/nobody"):
        cluster.run_job(spec, spec["spec"]["template"], "wrong-sa", timeout_s=30)


def test_static_checks_find_dangling_bindings_and_namespaces(tmp_path):
    docs = [d for d in yaml.safe_load_all(RENDER) if d]
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    binding["roleRef"]["name"] = "read-setings"
    c = Cluster(docs, repo=REPO, root=tmp_path / "c", crd_files=crd_files(REPO), project_image=IMAGE)
    with pytest.raises(Broken) as info:
        c.static_checks()
    assert (
        info.value.writer == "RoleBinding app/read-settings" and info.value.reader == "Role app/read-setings"
    )
    docs = [d for d in yaml.safe_load_all(RENDER) if d]
    next(d for d in docs if d["kind"] == "Secret")["metadata"]["namespace"] = "elsewhere"
    c = Cluster(docs, repo=REPO, root=tmp_path / "d", crd_files=crd_files(REPO), project_image=IMAGE)
    with pytest.raises(Broken, match="Secret elsewhere/creds is in namespace 'elsewhere'"):
        c.static_checks()
