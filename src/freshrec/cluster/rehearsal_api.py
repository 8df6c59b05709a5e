"""A loopback Kubernetes API server that enforces the rendered RBAC.

What a workload meets in a cluster when it calls the API in-cluster (``kubernetes.config.
load_incluster_config``): https on ``KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT`` with the cluster CA
in ``/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`` and a bearer token that identifies its service
account. This server does the same: TLS with a CA generated per rehearsal, one token per service account
(the pod gets its own SA's token mounted), and every request authorised against the Roles, ClusterRoles,
RoleBindings and ClusterRoleBindings of the render, as the API server's RBAC authoriser does (verbs from
the HTTP method, resourceNames, subresources, ``*``). A refusal is the API server's 403 ``Status`` with its
message (``... cannot patch resource "rollouts" in API group "argoproj.io" in the namespace ...``).

Objects are stored by (group, plural, namespace, name); writes of custom resources are validated against
the CRD's ``openAPIV3Schema`` (closed: unknown fields are a 422, see ``freshrec.rollout.k8s``); JSON merge
patches follow RFC 7386 (strategic merge patches of built-in kinds are applied as merge patches: enough for
the annotation and status patches the project makes); ``metadata.generation`` bumps on spec changes; the
main resource ignores ``status`` and the ``status`` subresource ignores everything else.

Every request is recorded (identity, verb, resource, name, outcome) for the rehearsal's report. Watches
and discovery beyond ``/version`` are not served (none of the project's clients use them).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import secrets
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from freshrec.cluster.rehearsal_objects import Broken, Objects, ref

ADMIN = "system:admin"
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
)


def merge_patch(target: Any, patch: Any) -> Any:
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


def json_patch(target: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test)."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        kind = op["op"]
        if kind == "test":
            have = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if have != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif isinstance(parent, list):
            idx = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(idx, op["value"])
            else:
                parent[idx] = op["value"]
        else:
            parent[last] = op["value"]
    return doc


@dataclass(frozen=True)
class ApiRequest:
    """One request the server answered."""

    identity: str
    verb: str
    group: str
    resource: str
    namespace: str
    name: str
    code: int
    message: str
    content_type: str = ""


class Tls:
    """A CA and a server certificate for the API Service's names and address (``cryptography``)."""

    def __init__(self, names: list[str], ips: list[str], folder: Path) -> None:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "freshrec-rehearsal-ca")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        self.ca_file = folder / "ca.crt"
        self.ca_file.write_bytes(self.ca_pem)
        self.cert_file = folder / "apiserver.crt"
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_file = folder / "apiserver.key"
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


class Rbac:
    """The RBAC authoriser over the rendered (and later created) Roles and bindings."""

    def __init__(self, objects: Callable[[], list[dict[str, Any]]]) -> None:
        self._objects = objects

    @staticmethod
    def _subject_matches(subject: dict[str, Any], identity: str, binding_ns: str) -> bool:
        kind = subject.get("kind")
        if kind == "ServiceAccount":
            ns = subject.get("namespace") or binding_ns
            return identity == f"system:serviceaccount:{ns}:{subject['name']}"
        if kind == "User":
            return identity == subject["name"]
        if kind == "Group":
            groups = {"system:authenticated"}
            if identity.startswith("system:serviceaccount:"):
                groups |= {"system:serviceaccounts", f"system:serviceaccounts:{identity.split(':')[2]}"}
            return subject["name"] in groups
        return False

    @staticmethod
    def _rule_allows(rule: dict[str, Any], verb: str, group: str, resource: str, name: str) -> bool:
        groups, resources, verbs = (
            rule.get("apiGroups") or [],
            rule.get("resources") or [],
            rule.get("verbs") or [],
        )
        if "*" not in groups and group not in groups:
            return False
        if "*" not in resources and resource not in resources:
            base = resource.split("/")[0]
            if f"{base}/*" not in resources:
                return False
        if "*" not in verbs and verb not in verbs:
            return False
        names = rule.get("resourceNames") or []
        # resourceNames cannot restrict list/watch/create/deletecollection (the object has no name yet).
        return not names or (bool(name) and name in names)

    def allowed(self, identity: str, verb: str, group: str, resource: str, namespace: str, name: str) -> bool:
        if identity == ADMIN:
            return True
        objs = self._objects()
        roles = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objs}
        for b in objs:
            if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
                continue
            bns = b["metadata"].get("namespace", "")
            if b["kind"] == "RoleBinding" and bns != namespace:
                continue
            if not any(self._subject_matches(s, identity, bns) for s in b.get("subjects") or []):
                continue
            rr = b.get("roleRef") or {}
            role = roles.get((rr.get("kind"), bns if rr.get("kind") == "Role" else "", rr.get("name")))
            if role is None:
                continue
            if any(self._rule_allows(r, verb, group, resource, name) for r in role.get("rules") or []):
                return True
        return False


def check_rbac_references(objects: Objects) -> None:
    """Bindings must refer to Roles and service accounts that exist (else they grant nothing).

    Raises:
        Broken: naming the binding and the missing Role/ClusterRole/ServiceAccount.
    """
    for b in objects.of_kind("RoleBinding", "ClusterRoleBinding"):
        rr = b.get("roleRef") or {}
        ns = b["metadata"].get("namespace", "") if rr.get("kind") == "Role" else ""
        objects.require(rr.get("kind", "Role"), ns, rr.get("name", ""), ref(b), "roleRef")
        for s in b.get("subjects") or []:
            if s.get("kind") == "ServiceAccount":
                objects.require(
                    "ServiceAccount",
                    s.get("namespace") or b["metadata"].get("namespace", ""),
                    s["name"],
                    ref(b),
                    "subject",
                )


class ApiServer:
    """The loopback API: TLS, tokens, RBAC, a CRD-validating object store. See the module docstring."""

    def __init__(
        self,
        objects: Objects,
        schemas: dict[tuple[str, str], dict[str, Any]],
        folder: Path | None = None,
        *,
        names: list[str] = (),  # type: ignore[assignment]
        ips: list[str] = (),  # type: ignore[assignment]
        anonymous: str | None = None,
    ) -> None:
        """Args:
        objects: the rendered objects (stored at start) and the kinds they may have.
        schemas: CRD schemas by (apiVersion, kind): writes of those kinds are validated.
        folder: where the CA and the server certificate go; None serves plain HTTP (tests).
        names, ips: the server certificate's subject alternative names.
        anonymous: the identity of requests without a token (None: 401, as the API server answers).
        """
        self.objects = objects
        self.schemas = schemas
        self.anonymous = anonymous
        self.tls = Tls(list(names), list(ips), folder) if folder is not None else None
        self.rbac = Rbac(lambda: [o for (_, _, _, _), o in self.store.items()])
        self.lock = threading.RLock()
        self.requests: list[ApiRequest] = []
        self.tokens: dict[str, str] = {}
        self.admin_token = self._new_token(ADMIN)
        self.store: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.plural_kind: dict[tuple[str, str], str] = {}
        for kind, info in objects.kinds.items():
            self.plural_kind[(info.group, info.plural)] = kind
        for obj in objects:
            info = objects.kinds.get(obj["kind"])
            if info is None:
                continue
            o = copy.deepcopy(obj)
            o["metadata"].setdefault("generation", 1)
            o["metadata"].setdefault("resourceVersion", "1")
            self.store[
                (
                    info.group,
                    info.plural,
                    o["metadata"].get("namespace", "") if info.namespaced else "",
                    o["metadata"]["name"],
                )
            ] = o
        self._httpd: ThreadingHTTPServer | None = None
        self._rv = 1

    def _new_token(self, identity: str) -> str:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = identity
        return token

    def token_for(self, namespace: str, service_account: str) -> str:
        """The bearer token of a service account (the one mounted into its pods)."""
        identity = f"system:serviceaccount:{namespace}:{service_account}"
        for token, who in self.tokens.items():
            if who == identity:
                return token
        return self._new_token(identity)

    # --- serving ---------------------------------------------------------------------------------
    def listen(self, host: str, port: int) -> tuple[str, int]:
        """Bind (in the calling thread's network namespace) and serve in a thread; returns the address."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _go(self) -> None:
                server._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _go

        httpd = ThreadingHTTPServer((host, port), Handler)
        httpd.daemon_threads = True
        if self.tls is not None:
            httpd.socket = self.tls.server_context().wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, name="rehearsal-apiserver", daemon=True).start()
        return httpd.server_address[0], httpd.server_address[1]

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        auth = h.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        # The scheme is case-insensitive (RFC 7235): the kubernetes client sends "bearer".
        identity = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else self.anonymous
        path, _, query = h.path.partition("?")
        if path == "/version":
            code, out = 200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0-freshrec-rehearsal"}
        elif identity is None:
            code, out = self.status(401, "Unauthorized", "Unauthorized")
            self._record("anonymous", h.command.lower(), "", path, "", "", 401, "no valid bearer token")
        else:
            code, out = self.call(identity, h.command, path, query, h.headers.get("Content-Type", ""), body)
        data = json.dumps(out).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def status(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
        return code, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "reason": reason,
            "message": message,
            "code": code,
        }

    def _record(
        self,
        identity: str,
        verb: str,
        group: str,
        resource: str,
        ns: str,
        name: str,
        code: int,
        msg: str,
        ctype: str = "",
    ) -> None:
        with self.lock:
            self.requests.append(ApiRequest(identity, verb, group, resource, ns, name, code, msg, ctype))

    # --- the API -----------------------------------------------------------------------------------
    def call(
        self, identity: str, method: str, path: str, query: str = "", ctype: str = "", body: bytes = b""
    ) -> tuple[int, dict[str, Any]]:
        """One API request as ``identity`` (also used in-process by the rehearsal's controllers)."""
        m = _PATH.match(path)
        if not m:
            return self.status(404, "NotFound", f"the server could not find the requested resource ({path})")
        group = "" if m["core"] else m["group"]
        ns, plural, name, sub = m["ns"] or "", m["plural"], m["name"] or "", m["sub"] or ""
        watch = "watch=true" in query or "watch=1" in query
        verb = {
            "GET": ("watch" if watch else "get") if name else ("watch" if watch else "list"),
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }.get(method.upper(), method.lower())
        resource = plural + (f"/{sub}" if sub else "")
        kind = self.plural_kind.get((group, plural))
        what = f"{plural}{'.' + group if group else ''}{f' {name!r}' if name else ''}"
        if kind is None:
            code, out = self.status(
                404, "NotFound", f"the server doesn't have a resource type {plural!r} in group {group!r}"
            )
        elif not self.rbac.allowed(identity, verb, group, resource, ns, name):
            where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
            msg = (
                f"{plural}{'.' + group if group else ''} {json.dumps(name) + ' ' if name else ''}is forbidden: "
                f'User "{identity}" cannot {verb} resource "{resource}" in API group "{group}"{where}'
            )
            code, out = self.status(403, "Forbidden", msg)
        elif watch:
            code, out = self.status(
                405, "MethodNotAllowed", "watch is not served by the rehearsal's API server"
            )
        else:
            with self.lock:
                code, out = self._dispatch(verb, kind, group, plural, ns, name, sub, ctype, body)
        message = out.get("message", "") if code >= 400 else what
        self._record(identity, verb, group, resource, ns, name, code, message, ctype)
        return code, out

    def _dispatch(
        self,
        verb: str,
        kind: str,
        group: str,
        plural: str,
        ns: str,
        name: str,
        sub: str,
        ctype: str,
        body: bytes,
    ) -> tuple[int, dict[str, Any]]:
        key = (group, plural, ns, name)
        if verb == "list":
            items = [
                copy.deepcopy(o)
                for (g, p, n, _), o in self.store.items()
                if (g, p) == (group, plural) and (not ns or n == ns)
            ]
            return 200, {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {}, "items": items}
        if verb == "create":
            obj = json.loads(body or b"{}")
            obj.setdefault("metadata", {})
            if ns:
                obj["metadata"]["namespace"] = ns
            name = obj["metadata"].get("name") or obj["metadata"].get(
                "generateName", "obj-"
            ) + secrets.token_hex(3)
            obj["metadata"]["name"] = name
            key = (group, plural, ns, name)
            if key in self.store:
                return self.status(409, "AlreadyExists", f'{plural} "{name}" already exists')
            return self._write(key, obj, created=True)
        obj = self.store.get(key)
        if obj is None:
            return self.status(404, "NotFound", f'{plural}{"." + group if group else ""} "{name}" not found')
        if verb == "get":
            return 200, copy.deepcopy(obj)
        if verb == "delete":
            del self.store[key]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        try:
            if verb == "update":
                patched = json.loads(body)
            else:
                mtype = ctype.split(";")[0].strip()
                if mtype == "application/json-patch+json":
                    patched = json_patch(obj, json.loads(body))
                elif mtype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                    patched = merge_patch(obj, json.loads(body))
                else:
                    return self.status(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return self.status(422, "Invalid", f"the patch cannot be applied: {exc}")
        new = copy.deepcopy(obj)
        if sub == "status":
            new["status"] = patched.get("status")
            if new["status"] is None:
                new.pop("status")
        else:
            new = {k: v for k, v in patched.items() if k != "status"}
            if "status" in obj:
                new["status"] = obj["status"]
            new["metadata"] = {
                **patched.get("metadata", {}),
                "generation": obj["metadata"].get("generation", 1),
            }
            if new.get("spec") != obj.get("spec"):
                new["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        return self._write(key, new)

    def _write(
        self, key: tuple[str, str, str, str], obj: dict[str, Any], created: bool = False
    ) -> tuple[int, dict[str, Any]]:
        from freshrec.rollout.k8s import validate_custom_object

        if (obj.get("apiVersion", ""), obj.get("kind", "")) in self.schemas:
            try:
                validate_custom_object(obj, self.schemas)
            except ValueError as exc:
                return self.status(422, "Invalid", str(exc))
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        if created:
            obj["metadata"].setdefault("generation", 1)
            obj["metadata"].setdefault("uid", secrets.token_hex(8))
            obj["metadata"].setdefault(
                "creationTimestamp", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            )
        self.store[key] = obj
        return (201 if created else 200), copy.deepcopy(obj)

    @property
    def url(self) -> str:
        """``http(s)://host:port`` once listening."""
        assert self._httpd is not None, "not listening"
        host, port = self._httpd.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def obj(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """The stored object (the live one: tests and controllers read it without copying)."""
        info = self.objects.kinds[kind]
        return self.store[(info.group, info.plural, namespace if info.namespaced else "", name)]

    def put(self, obj: dict[str, Any]) -> None:
        """Store an object as if it had been applied (no validation, no RBAC)."""
        info = self.objects.kinds[obj["kind"]]
        meta = obj["metadata"]
        meta.setdefault("generation", 1)
        self.store[
            (info.group, info.plural, meta.get("namespace", "") if info.namespaced else "", meta["name"])
        ] = obj

    # --- in-process helpers for the rehearsal's controllers -----------------------------------------
    def path_of(self, kind: str, namespace: str, name: str = "", sub: str = "") -> str:
        info = self.objects.kinds[kind]
        root = f"/apis/{info.group}/{info.version}" if info.group else "/api/v1"
        ns = f"/namespaces/{namespace}" if info.namespaced else ""
        return f"{root}{ns}/{info.plural}" + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        code, out = self.call(ADMIN, "GET", self.path_of(kind, namespace, name))
        return out if code == 200 else None

    def list(self, kind: str, namespace: str = "") -> list[dict[str, Any]]:
        return self.call(ADMIN, "GET", self.path_of(kind, namespace))[1].get("items", [])

    def patch(
        self, kind: str, namespace: str, name: str, body: dict[str, Any], sub: str = ""
    ) -> dict[str, Any]:
        """A merge patch as the rehearsal's controllers (admin); raises on refusal."""
        code, out = self.call(
            ADMIN,
            "PATCH",
            self.path_of(kind, namespace, name, sub),
            "",
            "application/merge-patch+json",
            json.dumps(body).encode(),
        )
        if code >= 400:
            raise Broken(
                "api-write",
                "rehearsal controller",
                f"{kind} {namespace}/{name}",
                out.get("message", str(code)),
            )
        return out

    def create(self, kind: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        code, out = self.call(
            ADMIN, "POST", self.path_of(kind, namespace), "", "application/json", json.dumps(obj).encode()
        )
        if code >= 400:
            raise Broken(
                "api-write", "rehearsal controller", f"{kind} {namespace}", out.get("message", str(code))
            )
        return out

    def requests_by(self, identity_prefix: str) -> list[ApiRequest]:
        with self.lock:
            return [r for r in self.requests if r.identity.startswith(identity_prefix)]


def write_service_account_files(folder: Path, token: str, ca_pem: bytes, namespace: str) -> Path:
    """``token``, ``ca.crt`` and ``namespace``: what kubelet projects at /var/run/secrets/kubernetes.io/serviceaccount."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "token").write_text(token)
    (folder / "ca.crt").write_bytes(ca_pem)
    (folder / "namespace").write_text(namespace)
    for p in folder.iterdir():
        p.chmod(0o644)
    return folder
