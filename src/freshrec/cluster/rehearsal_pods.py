"""Pods of a rehearsal: images, volumes, containers as local processes, probes and restarts.

A :class:`Pod` takes a rendered pod (from a workload's template, a Job, or a KFP task) and does what the
kubelet does with it, on this machine:

- admission: its ServiceAccount, PersistentVolumeClaims, ConfigMaps and Secrets must exist in its
  namespace (:class:`~freshrec.cluster.rehearsal_objects.Broken` otherwise, naming the pod and the
  missing object); ``runAsNonRoot`` with a root user is refused;
- volumes: a PVC is a directory of the rehearsal (root-owned 0755 like a fresh volume; ``fsGroup`` makes
  it group-owned and group-writable, as kubelet's ownership change does); ``subPath`` is a folder inside
  it, created when missing; ConfigMap/Secret/downwardAPI/projected volumes are generated folders
  (``items``, ``defaultMode``); ``emptyDir`` a fresh folder; the service-account token, ``ca.crt`` and
  ``namespace`` are projected at ``/var/run/secrets/kubernetes.io/serviceaccount`` unless
  ``automountServiceAccountToken`` is false;
- environment: the image's ENV, kubelet's service links and ``KUBERNETES_SERVICE_*``, then ``envFrom``
  and ``env`` (ConfigMaps, Secrets, fieldRefs resolved), ``$(VAR)`` expanded in command and args;
- containers: init containers one after another to completion, then the containers, each in its own
  mount namespace (:mod:`freshrec.cluster.rehearsal_sandbox`) inside the pod's network namespace, as the
  securityContext's user; probes (startup, readiness, liveness: httpGet, tcpSocket, exec) from the
  node's side; restarts by ``restartPolicy``.

Images are stand-ins (:class:`Images`): the project's image is this machine's Python environment with
``docker/Dockerfile``'s ENV, WORKDIR, USER, ENTRYPOINT/CMD and COPY'd folders; ``tensorflow/serving`` is
the project's TF-Serving-compatible server behind a ``tensorflow_model_server`` executable (the flags are
the binary's, :mod:`freshrec.serving.tfs_flags`). An image the rehearsal cannot stand in for is a
:class:`Broken` naming the container.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freshrec.cluster.rehearsal_objects import (
    Broken,
    Objects,
    config_data,
    container_env,
    expand,
    field_value,
    ref,
)

log = logging.getLogger(__name__)

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
PYTHON_IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Image:
    """What an image provides, as the rehearsal stands in for it."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: int = 0
    group: int = 0
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    files: list[tuple[str, str, bool]] = field(default_factory=list)  # (host path, container path, is file)
    shims: list[tuple[str, str, int]] = field(default_factory=list)  # (container path, content, mode)
    home: str | None = None
    dirs: list[tuple[str, int, int]] = field(
        default_factory=list
    )  # (path, mode, owner uid) made by RUN steps
    note: str = ""


def dockerfile_image(dockerfile: Path, context: Path, name: str) -> Image:
    """Read ENV, WORKDIR, USER, ENTRYPOINT, CMD and COPY of a Dockerfile (its last stage)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    image = Image(name=name, env={"PATH": PYTHON_IMAGE_PATH})
    users: dict[str, int] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            image.env = {"PATH": PYTHON_IMAGE_PATH}
        elif op == "ENV":
            for token in shlex.split(rest):
                if "=" in token:
                    k, v = token.split("=", 1)
                    image.env[k] = v
        elif op == "WORKDIR":
            image.workdir = rest if rest.startswith("/") else f"{image.workdir.rstrip('/')}/{rest}"
        elif op == "USER":
            user, _, group = rest.partition(":")
            image.user = int(user) if user.isdigit() else 1000
            image.group = int(group) if group.isdigit() else 0
        elif op in ("ENTRYPOINT", "CMD"):
            value = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
            setattr(image, "entrypoint" if op == "ENTRYPOINT" else "cmd", value)
        elif op == "COPY" and "--from" not in rest:
            parts = shlex.split(rest)
            sources, dest = parts[:-1], parts[-1]
            base = dest if dest.startswith("/") else f"{image.workdir.rstrip('/')}/{dest}"
            for src in sources:
                host = context / src.rstrip("/")
                if not host.exists():
                    continue
                if dest.endswith("/") and host.is_file():
                    target = f"{base.rstrip('/')}/{host.name}"
                elif dest.endswith("/") and src.endswith("/") and len(sources) == 1:
                    target = base.rstrip("/")
                else:
                    target = (
                        base.rstrip("/")
                        if len(sources) == 1 and not dest.endswith("/")
                        else f"{base.rstrip('/')}/{host.name}"
                    )
                image.files.append((str(host), os.path.normpath(target), host.is_file()))
        elif op == "RUN":
            # The folders a RUN step creates for the image's user (useradd's home, mkdir + chown).
            m = re.search(r"useradd[^&;]*?--uid\s+(\d+)[^&;]*?\s([a-z_][a-z0-9_-]*)\s*(?:&&|;|$)", rest)
            if m and "--create-home" in rest:
                image.home = f"/home/{m.group(2)}"
                image.dirs.append((image.home, 0o755, int(m.group(1))))
                users[m.group(2)] = int(m.group(1))
            for made in re.findall(r"mkdir\s+(?:-p\s+)?(/[^\s&;]+)", rest):
                owner = re.search(
                    rf"chown\s+([a-z0-9_-]+)(?::[a-z0-9_-]+)?\s+{re.escape(made)}(?:\s|$|&|;)", rest
                )
                uid = users.get(owner.group(1), 0) if owner else 0
                image.dirs.append((made, 0o755, uid))
    if image.home:
        image.env.setdefault("HOME", image.home)
    return image


class Images:
    """Image references → stand-ins. See the module docstring."""

    def __init__(self, repo: Path, project_image: str, python: str = sys.executable) -> None:
        self.repo = repo
        self.project_image = project_image
        self.python = python
        self.venv_bin = str(Path(python).parent)
        self.project = dockerfile_image(repo / "docker" / "Dockerfile", repo, project_image)
        self.project.env["PATH"] = f"{self.venv_bin}:{self.project.env['PATH']}"
        self.project.shims.append(
            ("/usr/bin/tini", '#!/bin/sh\n[ "$1" = "--" ] && shift\nexec "$@"\n', 0o755)
        )
        self.project.note = (
            "this machine's Python environment with docker/Dockerfile's ENV, WORKDIR, USER and COPY'd folders"
        )
        self.extra: dict[str, Image] = {}

    def resolve(self, reference: str, referrer: str) -> Image:
        """The stand-in for an image reference.

        Raises:
            Broken: an image the rehearsal has no stand-in for.
        """
        repo, _, tag = (
            reference.rpartition(":") if ":" in reference.split("/")[-1] else (reference, "", "latest")
        )
        if reference == self.project_image or repo == self.project_image.rpartition(":")[0]:
            return self.project
        if repo in ("tensorflow/serving", "docker.io/tensorflow/serving"):
            server = f'#!/bin/sh\nexec {shlex.quote(self.python)} -m freshrec.cli serve "$@"\n'
            return Image(
                name=reference,
                env={
                    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "MODEL_NAME": "model",
                    "MODEL_BASE_PATH": "/models",
                    "TF_CPP_MIN_LOG_LEVEL": "2",
                },
                entrypoint=["/usr/bin/tf_serving_entrypoint.sh"],
                shims=[
                    ("/usr/bin/tensorflow_model_server", server, 0o755),
                    (
                        "/usr/bin/tf_serving_entrypoint.sh",
                        "#!/bin/bash\nexec tensorflow_model_server --port=8500 --rest_api_port=8501 "
                        '--model_name=${MODEL_NAME} --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} "$@"\n',
                        0o755,
                    ),
                ],
                note=f"freshrec serve with tensorflow_model_server's flags (tag {tag}: the binary's flags of 2.21)",
            )
        if reference in self.extra:
            return self.extra[reference]
        raise Broken(
            "image",
            referrer,
            f"image {reference}",
            f"no stand-in for image {reference!r} (the rehearsal runs {self.project_image} and tensorflow/serving)",
        )


@dataclass
class ContainerState:
    name: str
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    restarts: int = 0
    exit_code: int | None = None
    started: bool = False
    ready: bool = False
    reason: str = ""


class Pod:
    """One pod of the rehearsal. See the module docstring."""

    def __init__(self, cluster: Any, pod: dict[str, Any], owner: str) -> None:
        self.cluster = cluster
        self.obj = pod
        self.owner = owner
        self.name = pod["metadata"]["name"]
        self.namespace = pod["metadata"]["namespace"]
        self.labels: dict[str, str] = dict(pod["metadata"].get("labels") or {})
        self.spec = pod["spec"]
        self.root: Path = cluster.root / "pods" / self.namespace / self.name
        self.net: Any = None
        self.containers: dict[str, ContainerState] = {}
        self.init_done = False
        self.phase = "Pending"
        self.failure = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.volumes: dict[str, tuple[Path, bool]] = {}  # name -> (host dir or file, read-only)
        self.broken: Broken | None = None

    # --- admission and volumes ---------------------------------------------------------------------
    def referrer(self, container: str | None = None) -> str:
        return f"{self.owner} (pod {self.namespace}/{self.name}{', container ' + container if container else ''})"

    def admit(self) -> None:
        """What the API server and kubelet check before a pod runs.

        Raises:
            Broken: a missing ServiceAccount, claim, ConfigMap or Secret; a pod that would run as root
                under ``runAsNonRoot``.
        """
        objects: Objects = self.cluster.objects
        sa = self.spec.get("serviceAccountName") or self.spec.get("serviceAccount") or "default"
        if sa != "default":
            objects.require("ServiceAccount", self.namespace, sa, self.referrer(), "serviceAccountName")
        for vol in self.spec.get("volumes") or []:
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                objects.require(
                    "PersistentVolumeClaim", self.namespace, claim, self.referrer(), f"volume {vol['name']}"
                )
            for kind, key, name_key in (
                ("ConfigMap", "configMap", "name"),
                ("Secret", "secret", "secretName"),
            ):
                if key in vol and not vol[key].get("optional"):
                    objects.require(
                        kind, self.namespace, vol[key][name_key], self.referrer(), f"volume {vol['name']}"
                    )
            for src in (vol.get("projected") or {}).get("sources") or []:
                for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
                    if key in src and not src[key].get("optional"):
                        objects.require(
                            kind, self.namespace, src[key]["name"], self.referrer(), f"volume {vol['name']}"
                        )
        declared = {v["name"] for v in self.spec.get("volumes") or []}
        for c in self._all_containers():
            for m in c.get("volumeMounts") or []:
                if m["name"] not in declared:
                    raise Broken(
                        "missing-reference",
                        self.referrer(c["name"]),
                        f"volume {m['name']}",
                        f"volumeMount {m['name']!r} at {m['mountPath']} names no volume of the pod (it has {sorted(declared)})",
                    )
            image = self.cluster.images.resolve(c.get("image", ""), self.referrer(c["name"]))
            uid, _, _ = self._identity(c, image)
            sc = {**(self.spec.get("securityContext") or {}), **(c.get("securityContext") or {})}
            if sc.get("runAsNonRoot") and uid == 0:
                raise Broken(
                    "security",
                    self.referrer(c["name"]),
                    f"image {c.get('image')}",
                    "runAsNonRoot is set but the image runs as root and no runAsUser is given "
                    "(kubelet: container has runAsNonRoot and image will run as root)",
                )

    def _all_containers(self) -> list[dict[str, Any]]:
        return list(self.spec.get("initContainers") or []) + list(self.spec.get("containers") or [])

    def _identity(self, c: dict[str, Any], image: Image) -> tuple[int, int, list[int]]:
        psc, csc = self.spec.get("securityContext") or {}, c.get("securityContext") or {}
        uid = csc.get("runAsUser", psc.get("runAsUser", image.user))
        gid = csc.get("runAsGroup", psc.get("runAsGroup", image.group if uid == image.user else 0))
        groups = sorted(
            {*(psc.get("supplementalGroups") or []), *([psc["fsGroup"]] if "fsGroup" in psc else [])}
        )
        return int(uid), int(gid), [int(g) for g in groups]

    def _prepare_volumes(self) -> None:
        objects: Objects = self.cluster.objects
        fs_group = (self.spec.get("securityContext") or {}).get("fsGroup")
        vroot = self.root / "volumes"
        for vol in self.spec.get("volumes") or []:
            name, path = vol["name"], vroot / vol["name"]
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]
                host = self.cluster.claim_dir(self.namespace, claim["claimName"], self.referrer())
                if fs_group is not None and not claim.get("readOnly"):
                    _apply_fs_group(host, int(fs_group))
                self.volumes[name] = (host, bool(claim.get("readOnly")))
            elif "emptyDir" in vol:
                path.mkdir(parents=True, exist_ok=True)
                path.chmod(0o777)
                self.volumes[name] = (path, False)
            elif "configMap" in vol or "secret" in vol:
                kind = "ConfigMap" if "configMap" in vol else "Secret"
                src = vol["configMap" if kind == "ConfigMap" else "secret"]
                obj = objects.get(kind, self.namespace, src.get("name") or src.get("secretName"))
                self._write_keys(path, obj, src, vol.get("name"), src.get("defaultMode", 0o644))
                self.volumes[name] = (path, True)
            elif "downwardAPI" in vol:
                path.mkdir(parents=True, exist_ok=True)
                for item in vol["downwardAPI"].get("items") or []:
                    self._write_file(
                        path / item["path"],
                        field_value(self.obj, item["fieldRef"]["fieldPath"], self.referrer()).encode(),
                        0o644,
                    )
                self.volumes[name] = (path, True)
            elif "projected" in vol:
                path.mkdir(parents=True, exist_ok=True)
                for src in vol["projected"].get("sources") or []:
                    if "serviceAccountToken" in src:
                        self._write_file(
                            path / src["serviceAccountToken"].get("path", "token"),
                            self._token().encode(),
                            0o644,
                        )
                    elif "configMap" in src or "secret" in src:
                        kind = "ConfigMap" if "configMap" in src else "Secret"
                        s = src["configMap" if kind == "ConfigMap" else "secret"]
                        self._write_keys(path, objects.get(kind, self.namespace, s["name"]), s, name, 0o644)
                    elif "downwardAPI" in src:
                        for item in src["downwardAPI"].get("items") or []:
                            self._write_file(
                                path / item["path"],
                                field_value(
                                    self.obj, item["fieldRef"]["fieldPath"], self.referrer()
                                ).encode(),
                                0o644,
                            )
                self.volumes[name] = (path, True)
            elif "hostArtifacts" in vol:  # the rehearsal's own: KFP's artifact store (see rehearsal_kfp)
                self.volumes[name] = (Path(vol["hostArtifacts"]), False)
            elif "hostPath" in vol:
                raise Broken(
                    "volume",
                    self.referrer(),
                    f"hostPath {vol['hostPath'].get('path')}",
                    "hostPath volumes are not rehearsed",
                )
            else:
                raise Broken(
                    "volume",
                    self.referrer(),
                    f"volume {name}",
                    f"volume type {sorted(set(vol) - {'name'})} is not rehearsed",
                )
        if self._automount():
            sa_dir = self.root / "serviceaccount"
            self.cluster.write_sa_files(sa_dir, self.namespace, self.service_account)
            self.volumes["__sa__"] = (sa_dir, True)

    @property
    def service_account(self) -> str:
        return self.spec.get("serviceAccountName") or self.spec.get("serviceAccount") or "default"

    def _automount(self) -> bool:
        if "automountServiceAccountToken" in self.spec:
            return bool(self.spec["automountServiceAccountToken"])
        sa = self.cluster.objects.get("ServiceAccount", self.namespace, self.service_account)
        return bool((sa or {}).get("automountServiceAccountToken", True))

    def _token(self) -> str:
        return self.cluster.api.token_for(self.namespace, self.service_account)

    def _write_keys(
        self, path: Path, obj: dict[str, Any] | None, src: dict[str, Any], vol: str | None, mode: int
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if obj is None:
            return  # optional and absent
        data = config_data(obj)
        items = src.get("items")
        for item in items or [{"key": k, "path": k} for k in data]:
            if item["key"] not in data:
                if src.get("optional"):
                    continue
                raise Broken(
                    "missing-reference", self.referrer(), ref(obj),
                    f"volume {vol} projects key {item['key']!r}; {ref(obj)} has keys {sorted(data)}",
                )  # fmt: skip
            self._write_file(path / item["path"], data[item["key"]], item.get("mode", mode))

    @staticmethod
    def _write_file(path: Path, data: bytes, mode: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)

    # --- containers --------------------------------------------------------------------------------
    def _sandbox_spec(self, c: dict[str, Any], index: int) -> tuple[dict[str, Any], list[str]]:
        image = self.cluster.images.resolve(c.get("image", ""), self.referrer(c["name"]))
        uid, gid, groups = self._identity(c, image)
        base = dict(image.env)
        base.update(self.cluster.kubelet_env(self.namespace, self.spec))
        base["HOSTNAME"] = self.name
        env = container_env(self.cluster.objects, self.obj, c, self.referrer(c["name"]), base)
        command = [expand(x, env) for x in (c.get("command") or image.entrypoint)]
        args = [expand(x, env) for x in (c.get("args") if "args" in c or "command" in c else image.cmd) or []]
        argv = command + args
        if not argv:
            raise Broken(
                "image",
                self.referrer(c["name"]),
                f"image {c.get('image')}",
                "no command: neither the container nor the image gives one",
            )
        mounts = []
        for m in c.get("volumeMounts") or []:
            host, ro = self.volumes[m["name"]]
            src = host
            if m.get("subPath"):
                src = host / expand(m["subPath"], env)
                if not src.exists():
                    if host.is_dir() and not ro:
                        _make_subpath(host, src)
                    else:
                        raise Broken(
                            "path", self.referrer(c["name"]), f"volume {m['name']} subPath {m['subPath']}",
                            f"subPath {m['subPath']!r} does not exist in the read-only volume {m['name']}",
                        )  # fmt: skip
            mounts.append([str(src), m["mountPath"], bool(m.get("readOnly") or ro), src.is_file()])
        if "__sa__" in self.volumes and not any(m[1].rstrip("/") == SA_MOUNT for m in mounts):
            mounts.append([str(self.volumes["__sa__"][0]), SA_MOUNT, True, False])
        sc = {**(c.get("securityContext") or {})}
        cdir = self.root / "containers" / f"{index}-{c['name']}"
        make_dirs = [list(d) for d in image.dirs]
        spec = {
            "root": str(cdir / "root"),
            "upper": str(cdir / "upper"),
            "work": str(cdir / "work"),
            "traversable": self.cluster.traversable,
            "image_files": [list(f) for f in image.files],
            "shims": [list(s) for s in image.shims],
            "make_dirs": make_dirs,
            "mounts": mounts,
            "etc": {
                "hosts": str(self.root / "hosts"),
                "resolv.conf": str(self.root / "resolv.conf"),
                "hostname": str(self.root / "hostname"),
            },
            "readonly_root": bool(sc.get("readOnlyRootFilesystem")),
            "workdir": c.get("workingDir") or image.workdir,
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "env": env,
            "argv": argv,
        }
        return spec, argv

    def _launch(self, c: dict[str, Any], index: int) -> ContainerState:
        state = self.containers.get(c["name"]) or ContainerState(c["name"])
        spec, argv = self._sandbox_spec(c, index)
        cdir = self.root / "containers" / f"{index}-{c['name']}"
        if cdir.exists() and state.restarts:
            for sub in ("root", "upper", "work"):
                shutil.rmtree(cdir / sub, ignore_errors=True)
        cdir.mkdir(parents=True, exist_ok=True)
        spec_file = cdir / "sandbox.json"
        spec_file.write_text(json.dumps(spec))
        state.log = cdir / "log.txt"
        out = state.log.open("ab")
        out.write(f"--- start {time.strftime('%H:%M:%S')}: {shlex.join(argv)}\n".encode())
        out.flush()
        cmd = [
            "nsenter", f"--net={self.net.netns_path}", "--",
            "unshare", "--mount", "--propagation", "private", "--",
            self.cluster.images.python, "-m", "freshrec.cluster.rehearsal_sandbox", str(spec_file),
        ]  # fmt: skip
        state.proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        out.close()
        state.exit_code, state.started, state.ready = None, False, False
        self.containers[c["name"]] = state
        return state

    def start(self) -> None:
        """Admit, create the volumes and the network, run the init containers, start the containers."""
        self.admit()
        self.root.mkdir(parents=True, exist_ok=True)
        self.net = self.cluster.network.add_pod(self.name)
        self.obj.setdefault("status", {})["podIP"] = self.net.ip
        self.obj["status"]["hostIP"] = self.cluster.network.gateway
        self.obj["spec"].setdefault("nodeName", "rehearsal-node")
        self._prepare_volumes()
        self.cluster.write_pod_etc(self)
        self.phase = "Pending"
        self._thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Probes connect to the pod's IP: from the node's side, the cluster network namespace.
        self.cluster.network.enter_cluster()
        try:
            for i, c in enumerate(self.spec.get("initContainers") or []):
                while True:
                    state = self._launch(c, i)
                    code = state.proc.wait()
                    state.exit_code = code
                    if code == 0:
                        break
                    if (
                        self.spec.get("restartPolicy", "Always") == "Never"
                        or self._stop.is_set()
                        or state.restarts >= 2
                    ):
                        self._fail(f"init container {c['name']} exited {code}: {self.log_tail(c['name'])}")
                        return
                    state.restarts += 1
                    time.sleep(min(10, 2**state.restarts))
            self.init_done = True
            offset = len(self.spec.get("initContainers") or [])
            for i, c in enumerate(self.spec.get("containers") or []):
                self._launch(c, offset + i)
            self.phase = "Running"
            self._supervise(offset)
        except Broken as exc:
            self._fail(str(exc))
            self.broken = exc
        except Exception as exc:  # the pod fails; the rehearsal reports it with the cause
            log.exception("pod %s", self.name)
            self._fail(f"{type(exc).__name__}: {exc}")

    def _fail(self, why: str) -> None:
        self.phase, self.failure = "Failed", why

    def _supervise(self, offset: int) -> None:
        policy = self.spec.get("restartPolicy", "Always")
        started_at = {c["name"]: time.monotonic() for c in self.spec["containers"]}
        last_probe: dict[tuple[str, str], float] = {}
        failures: dict[tuple[str, str], int] = {}
        while not self._stop.is_set():
            all_done, any_failed = True, False
            for i, c in enumerate(self.spec["containers"]):
                state = self.containers[c["name"]]
                code = state.proc.poll() if state.proc else None
                if code is None:
                    all_done = False
                    self._probe(c, state, started_at, last_probe, failures)
                    continue
                state.exit_code, state.ready = code, False
                if policy == "Always" or (policy == "OnFailure" and code != 0):
                    if state.restarts >= self.cluster.max_restarts:
                        state.reason = f"CrashLoopBackOff (exit {code}, {state.restarts} restarts)"
                        any_failed = True
                        continue
                    all_done = False
                    state.restarts += 1
                    state.reason = f"restarted after exit {code}"
                    time.sleep(min(5, 0.5 * 2**state.restarts))
                    if not self._stop.is_set():
                        self._launch(c, offset + i)
                        started_at[c["name"]] = time.monotonic()
                elif code != 0:
                    any_failed = True
            if any_failed and policy != "Always":
                names = [n for n, s in self.containers.items() if s.exit_code not in (None, 0)]
                self._fail(
                    f"container(s) {names} failed: "
                    + "; ".join(f"{n}: exit {self.containers[n].exit_code}" for n in names)
                )
                return
            if any_failed:
                self._fail(
                    "; ".join(
                        f"{n}: {s.reason}" for n, s in self.containers.items() if s.reason.startswith("Crash")
                    )
                )
                return
            if all_done and policy != "Always":
                self.phase = "Succeeded"
                return
            self._stop.wait(0.25)

    def _probe(
        self,
        c: dict[str, Any],
        state: ContainerState,
        started_at: dict[str, float],
        last: dict[tuple[str, str], float],
        failures: dict[tuple[str, str], int],
    ) -> None:
        now = time.monotonic()
        scale = self.cluster.probe_time_scale
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(kind)
            if kind != "startupProbe" and c.get("startupProbe") and not state.started:
                continue
            if probe is None:
                if kind == "startupProbe":
                    state.started = True
                elif kind == "readinessProbe":
                    state.ready = True
                continue
            key = (c["name"], kind)
            # Probes that only gate readiness run on the rehearsal's shortened clock; a liveness probe kills,
            # so it keeps the rendered delay and period: on two loaded cores a container that starts slower
            # than a tenth of what the manifest grants it is not a broken one.
            pace = 1.0 if kind == "livenessProbe" else scale
            period = max(0.2, probe.get("periodSeconds", 10) * pace)
            if (
                now - started_at[c["name"]] < probe.get("initialDelaySeconds", 0) * pace
                or now - last.get(key, 0) < period
            ):
                continue
            last[key] = now
            ok = self._run_probe(c, probe, state)
            if ok:
                failures[key] = 0
                if kind == "startupProbe":
                    state.started = True
                elif kind == "readinessProbe":
                    state.ready = True
            else:
                failures[key] = failures.get(key, 0) + 1
                threshold = probe.get("failureThreshold", 3)
                # A startup probe is polled on the short clock (a started container is seen at once) but kills
                # only once the time the manifest grants (delay + period x threshold) has passed for real.
                granted = probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * threshold
                if kind == "readinessProbe":
                    state.ready = False
                elif kind == "startupProbe" and now - started_at[c["name"]] < granted:
                    pass
                elif failures[key] >= threshold and state.proc is not None:
                    state.reason = f"{kind} failed {failures[key]} times"
                    _kill(state.proc, 1.0)  # kubelet kills and restarts it
                    failures[key] = 0

    def _run_probe(self, c: dict[str, Any], probe: dict[str, Any], state: ContainerState) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1)) * max(1.0, self.cluster.probe_time_scale * 5)
        port = None
        for k in ("httpGet", "tcpSocket", "grpc"):
            if k in probe:
                port = self.container_port(probe[k].get("port"), c)
        try:
            if "httpGet" in probe:
                path = probe["httpGet"].get("path", "/")
                with socket.create_connection((self.net.ip, port), timeout=timeout) as s:
                    s.sendall(
                        f"GET {path} HTTP/1.1\r\nHost: {self.net.ip}\r\nConnection: close\r\n\r\n".encode()
                    )
                    status = s.recv(64).split(b" ")
                return len(status) > 1 and 200 <= int(status[1]) < 400
            if "tcpSocket" in probe or "grpc" in probe:
                with socket.create_connection((self.net.ip, port), timeout=timeout):
                    return True
            if "exec" in probe and state.proc is not None:
                cmd = [
                    "nsenter",
                    "-t",
                    str(state.proc.pid),
                    "-m",
                    "-n",
                    "-p",
                    # the container's chroot and working directory, as kubelet's exec runs in the container
                    "-r",
                    "-w",
                    "--",
                    *probe["exec"]["command"],
                ]
                return subprocess.run(cmd, capture_output=True, timeout=timeout).returncode == 0
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return False
        return True

    def container_port(self, port: Any, c: dict[str, Any] | None = None) -> int:
        """A port number, or a container port *name* of this pod (as a probe or a targetPort names it).

        Raises:
            Broken: a port name no container of the pod declares.
        """
        if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
            return int(port)
        for cont in [c] if c else self.spec.get("containers") or []:
            for p in (cont or {}).get("ports") or []:
                if p.get("name") == port:
                    return int(p["containerPort"])
        raise Broken(
            "port",
            f"port {port!r}",
            self.referrer(),
            f"no container of the pod declares a port named {port!r}",
        )

    # --- state -------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        names = [c["name"] for c in self.spec.get("containers") or []]
        return self.phase == "Running" and all(
            n in self.containers and self.containers[n].ready for n in names
        )

    def wait(self, predicate: Callable[[Pod], bool], timeout_s: float, what: str) -> None:
        """Wait until ``predicate(self)``; :class:`Broken` with the pod's logs on failure or timeout."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if self.phase == "Failed":
                raise Broken("pod-failed", self.referrer(), what, self.failure + self.logs_summary())
            if time.monotonic() > deadline:
                states = ", ".join(
                    f"{n}: ready={s.ready} exit={s.exit_code} {s.reason}" for n, s in self.containers.items()
                )
                raise Broken(
                    "timeout",
                    self.referrer(),
                    what,
                    f"not {what} after {timeout_s:.0f} s ({states or 'no container started'})"
                    + self.logs_summary(),
                )
            time.sleep(0.2)

    def log_tail(self, container: str, lines: int = 25) -> str:
        state = self.containers.get(container)
        if state is None or state.log is None or not state.log.exists():
            return ""
        return "\n".join(state.log.read_text(errors="replace").splitlines()[-lines:])

    def logs_summary(self, lines: int = 20) -> str:
        parts = [f"\n--- {n} (last {lines} lines) ---\n{self.log_tail(n, lines)}" for n in self.containers]
        return "".join(parts)

    def log_text(self, container: str) -> str:
        state = self.containers.get(container)
        return state.log.read_text(errors="replace") if state and state.log and state.log.exists() else ""

    def stop(self, grace_s: float = 5.0) -> None:
        self._stop.set()
        for state in self.containers.values():
            if state.proc is not None and state.proc.poll() is None:
                _kill(state.proc, grace_s)
        if self._thread is not None:
            self._thread.join(timeout=grace_s + 5)
        if self.net is not None:
            self.cluster.network.remove_pod(self.name)
        if self.phase == "Running":
            self.phase = "Terminated"


def _kill(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _make_subpath(volume: Path, folder: Path) -> None:
    """kubelet creates a missing subPath folder; it gets the volume root's owner, group and mode (so an
    fsGroup-owned volume stays writable for the group inside the new folder)."""
    st = volume.stat()
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        os.chown(d, st.st_uid, st.st_gid)
        d.chmod(st.st_mode & 0o7777)


def _apply_fs_group(path: Path, gid: int) -> None:
    """kubelet's fsGroup ownership change: group-owned, group-writable, setgid directories."""
    for dirpath, _dirnames, filenames in os.walk(path):
        d = Path(dirpath)
        os.chown(d, -1, gid)
        d.chmod(d.stat().st_mode | 0o2070)
        for f in filenames:
            p = d / f
            if not p.is_symlink():
                os.chown(p, -1, gid)
                p.chmod(p.stat().st_mode | 0o060)
