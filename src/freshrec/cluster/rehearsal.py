"""The cluster rehearsal: the rendered overlay and the compiled pipeline, run as written on one machine.

``freshrec rehearse --overlay production`` (``make rehearse``) builds the overlay with ``kubectl
kustomize``, reads the compiled pipeline YAML, brings up a one-node stand-in cluster
(:mod:`freshrec.cluster.rehearsal_cluster`: pods as sandboxed processes with their volumes at their mount
paths, a network namespace per pod, Services as proxies to ready pods, an API server enforcing the
rendered RBAC, KFP/Argo/Prometheus stand-ins) and plays the loop's story through it. Each arrow of the story
is a *connection*: a writer and a reader that must meet. The story:

1. platform: every object lands in a namespace that exists, bindings name existing Roles and service
   accounts, every workload runs the same project image, and each Prometheus analysis judged on the
   stand-in's empty answer is *not* successful;
2. day 0: the model repository holds a stable version 1 (trained by ``run_training``, what
   ``freshrec train --publish`` does, and put where the rendered TF Serving reads it);
3. Feast: the rendered ``feast apply`` Job registers the feature repository in PostgreSQL;
4. serving: TF Serving (the Rollout's stable revision), the ranking gateway, the online learner and
   the stream feature job come up ready, as rendered;
5. submit: ``freshrec.pipelines.submit`` sends the compiled YAML to the KFP API; the run's tasks
   (ingest, Feast apply/materialize, training set, train warm-started from v1, evaluate, data quality,
   push with the reference profile) run from the YAML's executors with its platform spec;
6. handoff: the rollout task patches the Rollout as the run's service account; the Argo stand-in
   starts the canary; TF Serving loads the new version from the model volume;
7. traffic: users (the rehearsal) rank through the gateway Service — features from Feast's Redis,
   scores from TF Serving's canary and stable — the gateway writes the prediction log, the users' clicks
   go to the event stream;
8. verdict: the analysis Job reads the prediction log and the clicks and gives its verdict, the
   Prometheus analyses come out inconclusive on empty data, the canary is promoted or aborted, the
   rollout task follows it to the end;
9. online: the learner consumes the clicks from Redis Streams and exports a version TF Serving picks up;
10. schedules: the materialisation CronJob writes Redis from the tables the pipeline wrote; the drift
    CronJob reads the event log and the reference profile the pipeline wrote.

The rehearsal stops at the first connection that does not meet and reports it with both ends (a
:class:`~freshrec.cluster.rehearsal_objects.Broken`), the connections exercised before it, and the
stand-ins it used. Long-running pods are kept to one replica, pause and analysis intervals are shortened
(``time_scale``), and the workloads' own args and env are never changed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from freshrec.cluster.rehearsal_objects import Broken, kustomize, mount_for, pod_templates

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
ROLES: dict[str, tuple[str, ...]] = {
    # role -> the freshrec subcommand (consecutive words of command + args) its container runs
    "gateway": ("serving", "gateway"),
    "online-learner": ("online",),
    "stream-features": ("features", "stream"),
    "feast-apply": ("apply",),
    "materialize": ("materialize",),
    "drift-monitor": ("drift", "check"),
    "analysis": ("rollout", "analyze"),
}


@dataclass
class ConnectionResult:
    """One arrow of the story: who writes, who reads, and what the rehearsal saw."""

    name: str
    writer: str
    reader: str
    status: str = "not reached"  # ok | broken | not reached
    evidence: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    """What a rehearsal did; ``ok`` only when every connection met."""

    overlay: str
    pipeline: str
    ok: bool = False
    wall_s: float = 0.0
    connections: list[ConnectionResult] = field(default_factory=list)
    failure: dict[str, str] | None = None
    notes: list[str] = field(default_factory=list)
    stand_ins: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    load: str = ""

    @property
    def exercised(self) -> list[ConnectionResult]:
        return [c for c in self.connections if c.status == "ok"]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exercised"] = len(self.exercised)
        return d

    def summary(self) -> str:
        lines = [
            f"rehearsal of {self.overlay} + {self.pipeline}: {'PASS' if self.ok else 'FAIL'} in {self.wall_s:.0f} s"
        ]
        for c in self.connections:
            mark = {"ok": "ok  ", "broken": "FAIL", "not reached": "--  "}[c.status]
            lines.append(
                f"  [{mark}] {c.name}: {c.writer} -> {c.reader}"
                + (f"  ({c.evidence})" if c.evidence and c.status == "ok" else "")
            )
        if self.failure:
            lines.append(
                f"broken: [{self.failure['kind']}] {self.failure['writer']} -> {self.failure['reader']}"
            )
            lines.append("  " + self.failure["detail"].replace("\n", "\n  "))
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)


def _runs(container: dict[str, Any], words: tuple[str, ...]) -> bool:
    tokens = [str(t) for t in (container.get("command") or []) + (container.get("args") or [])]
    flat = " ".join(tokens).split()
    n = len(words)
    return any(tuple(flat[i : i + n]) == words for i in range(len(flat) - n + 1))


class Rehearsal:
    """One rehearsal of an overlay and a compiled pipeline. See the module docstring."""

    def __init__(
        self,
        overlay: str,
        *,
        repo: Path = REPO,
        pipeline: Path | None = None,
        docs: list[dict[str, Any]] | None = None,
        work_root: Path | None = None,
        time_scale: float = 0.01,
        keep: bool = False,
        bootstrap_cache: Path | None = None,
        progress: Callable[[str], None] | None = None,
        requests: int = 240,
        submit_settings: dict[str, Any] | None = None,
        pipeline_namespace: str | None = None,
        keep_going: bool = False,
    ) -> None:
        self.overlay = overlay
        self.repo = repo
        self.pipeline = pipeline or repo / "pipelines" / "continuous_training" / "continuous_training.yaml"
        self.docs = docs
        self.work_root = (
            work_root or Path(os.environ.get("TMPDIR", "/tmp")) / f"freshrec-rehearsal-{secrets.token_hex(3)}"
        )
        self.time_scale = time_scale
        self.keep = keep
        self.bootstrap_cache = bootstrap_cache
        self.progress = progress or (lambda msg: log.info("%s", msg))
        self.n_requests = requests
        # What the user submits as the run's settings (the README's runbook); the dataset is the synthetic one.
        self.pipeline_namespace = pipeline_namespace
        self.keep_going = keep_going
        self.broken_soft: list[Broken] = []
        self.submit_settings = {"data": {"dataset": "synthetic"}, **(submit_settings or {})}
        self.report = Report(
            overlay=overlay,
            pipeline=str(
                self.pipeline.relative_to(repo) if self.pipeline.is_relative_to(repo) else self.pipeline
            ),
        )
        self.cluster: Any = None
        self.state: dict[str, Any] = {}

    # --- driver --------------------------------------------------------------------------------------
    @contextmanager
    def connection(
        self, name: str, writer: str, reader: str, soft: bool = False
    ) -> Iterator[ConnectionResult]:
        """Record one arrow of the story; a :class:`Broken` inside marks it broken and ends the story,
        unless ``keep_going`` and the arrow is ``soft`` (nothing later in the story depends on it)."""
        result = ConnectionResult(name, writer, reader)
        self.report.connections.append(result)
        started = time.monotonic()
        try:
            yield result
        except Broken as exc:
            result.status = "broken"
            result.evidence = str(exc)[:4000]
            if not (soft and self.keep_going):
                raise
            self.broken_soft.append(exc)
            self.progress(f"BROKEN (going on): {exc}"[:2000])
            return
        finally:
            result.seconds = time.monotonic() - started
        result.status = "ok"
        self.progress(f"ok: {name} ({result.evidence})")

    def run(self) -> Report:
        """Play the story; never raises for a broken connection (the report says what broke)."""
        from freshrec.cluster.rehearsal_cluster import Cluster

        started = time.monotonic()
        self.report.load = (
            Path("/proc/loadavg").read_text().split(" ")[:3].__str__()
            if Path("/proc/loadavg").exists()
            else ""
        )
        try:
            docs = (
                self.docs
                if self.docs is not None
                else kustomize(self.repo / "manifests" / "overlays" / self.overlay)
            )
            docs = self._runbook_secrets(docs)
            from freshrec.cluster.rehearsal_kfp import split_package

            self.package, self.platform = split_package(self.pipeline)
            self.project_image = self._project_image()
            self.cluster = Cluster(
                docs,
                repo=self.repo,
                root=self.work_root,
                crd_files=crd_files(self.repo),
                project_image=self.project_image,
                pipeline_namespace=self._pipeline_namespace(),
                kfp_service=self._kfp_service(),
                time_scale=self.time_scale,
            )
            self._isolate_stores()
            self.cluster.up()
            self.cluster.network.in_cluster_thread(self._story)
            self.report.ok = all(c.status == "ok" for c in self.report.connections)
            if self.broken_soft:
                exc = self.broken_soft[0]
                self.report.failure = {
                    "kind": exc.kind,
                    "writer": exc.writer,
                    "reader": exc.reader,
                    "detail": exc.detail,
                }
        except Broken as exc:
            self.report.failure = {
                "kind": exc.kind,
                "writer": exc.writer,
                "reader": exc.reader,
                "detail": exc.detail,
            }
            for c in self.report.connections:
                if c.status == "not reached" and c is self.report.connections[-1]:
                    c.status = "broken"
        except Exception as exc:  # a bug of the rehearsal itself: reported as such, never as a pass
            self.report.failure = {
                "kind": "rehearsal-error",
                "writer": "the rehearsal",
                "reader": "itself",
                "detail": traceback.format_exc(),
            }
            log.error("rehearsal error: %s", exc)
        finally:
            if self.cluster is not None:
                self.report.notes += self.cluster.notes
                network = getattr(self.cluster, "network", None)
                failed = [x for x in (network.connections if network else []) if not x.ok]
                if failed:
                    self.report.notes.append(
                        f"{len(failed)} proxied connection(s) failed, first: "
                        + "; ".join(f"{x.client} -> {x.service}:{x.port} ({x.detail})" for x in failed[:3])
                    )
                self.report.stand_ins = self._stand_ins()
                self.report.timeline = list(self.state.get("timeline", []))
                self._teardown()
            self.report.wall_s = time.monotonic() - started
        return self.report

    def _teardown(self) -> None:
        try:
            for ctl in self.state.get("controllers", []):
                ctl.stop()
            self.cluster.down(keep=self.keep)
        finally:
            self._release_stores()

    def _stand_ins(self) -> list[str]:
        out = [
            "Kubernetes API: loopback TLS server with the rendered RBAC (kubernetes.default:443)",
            "Argo Rollouts controller: played in-process (steps, analysis runs, Gateway API weights)",
            "Prometheus (prometheus-operated.monitoring:9090): answers every query with no data",
            "Pushgateway (prometheus-pushgateway.monitoring:9091): keeps what is pushed",
            "KFP (the layout's ml-pipeline.kubeflow:8888): v2beta1 API; runs execute the compiled YAML's executors",
            f"images: {self.project_image} = this machine's Python env + docker/Dockerfile; tensorflow/serving = freshrec serve with the binary's flags",
            "Redis/PostgreSQL: this machine's, behind the rendered Services (own Redis db, own PostgreSQL database)",
            "one node, one replica per workload, no resource limits enforced, no NetworkPolicy enforcement",
        ]
        return out

    # --- helpers ---------------------------------------------------------------------------------------
    def _runbook_secrets(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The README runbook's step 3: the operator creates the secrets an overlay leaves to them.

        Only those the cluster layout names as external (``ClusterLayout.external_secrets``) and only when the
        overlay does not render them (production); a workload referring to any other missing Secret breaks.
        """
        import base64

        from freshrec.config import load_settings

        layout = load_settings().cluster
        rendered = {(d.get("metadata") or {}).get("name") for d in docs if d and d.get("kind") == "Secret"}
        out = list(docs)
        for name, keys in layout.external_secrets().items():
            if name in rendered:
                continue
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "Opaque",
                    "metadata": {
                        "name": name,
                        "namespace": layout.namespace,
                        "annotations": {"rehearsal.freshrec.io/created-by": "README runbook step 3"},
                    },
                    "data": {k: base64.b64encode(secrets.token_hex(24).encode()).decode() for k in keys},
                }
            )
            self.report.notes.append(
                f"Secret {layout.namespace}/{name} created as the runbook's step 3 says (`kubectl create secret "
                f"generic {name}`): the {self.overlay} overlay leaves it to the operator"
            )
        return out

    def _project_image(self) -> str:
        images = {e["container"]["image"] for e in self.package["deploymentSpec"]["executors"].values()}
        if len(images) != 1:
            raise Broken(
                "image",
                f"pipeline {self.pipeline.name}",
                "its executors",
                f"executors use several images {sorted(images)}",
            )
        return images.pop()

    def _kfp_service(self) -> tuple[str, str, int]:
        from freshrec.config import load_settings

        kfp = load_settings().cluster.services.kfp_api
        return kfp.name, kfp.namespace or "kubeflow", kfp.port

    def _pipeline_namespace(self) -> str:
        from freshrec.config import load_settings
        from freshrec.pipelines.submit import run_request

        return self.pipeline_namespace or run_request(load_settings()).namespace

    def _isolate_stores(self) -> None:
        """A Redis database and a PostgreSQL database of this rehearsal's own on the shared local servers."""
        import psycopg
        import redis as redis_lib

        from freshrec.cluster.rehearsal_net import postgres_database, redis_select

        r = redis_lib.Redis(host="127.0.0.1", port=6379)
        for offset in range(8):
            db = 8 + (int(self.cluster.run_id, 16) + offset) % 8
            if redis_lib.Redis(host="127.0.0.1", port=6379, db=db).set(
                "freshrec:rehearsal:owner", self.cluster.run_id, nx=True, ex=3600
            ):
                break
        else:
            raise Broken("stores", "the rehearsal", "local Redis", "no free Redis database among 8-15")
        r.close()
        self.redis_db = db
        self.pg_db = f"freshrec_rehearsal_{self.cluster.run_id}"
        # What the postgres image's entrypoint does for POSTGRES_USER: the rendered StatefulSet's user
        # owns the database (the local server trusts loopback, so the Secret's password is not checked).
        users = {
            e["value"]
            for obj in self.cluster.objects.of_kind("StatefulSet", "Deployment")
            for c in ((pod_templates(obj) or {}).get("spec") or {}).get("containers") or []
            if "postgres" in c.get("image", "")
            for e in c.get("env") or []
            if e.get("name") == "POSTGRES_USER" and "value" in e
        }
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.pg_db}"')
            for user in sorted(users):
                exists = conn.execute("select 1 from pg_roles where rolname = %s", (user,)).fetchone()
                if not exists:
                    conn.execute(f'CREATE ROLE "{user}" LOGIN')
                conn.execute(f'GRANT ALL ON DATABASE "{self.pg_db}" TO "{user}"')
                conn.execute(f'ALTER DATABASE "{self.pg_db}" OWNER TO "{user}"')
        self.cluster.network_preludes = {
            "host:redis": redis_select(db),
            "host:postgres": postgres_database(self.pg_db),
        }
        self.cluster.notes.append(
            f"Redis database {db} and PostgreSQL database {self.pg_db} stood in for the cluster's stores"
        )

    def _release_stores(self) -> None:
        import psycopg
        import redis as redis_lib

        if getattr(self, "redis_db", None) is not None:
            redis_lib.Redis(host="127.0.0.1", port=6379, db=self.redis_db).flushdb()
        if getattr(self, "pg_db", None):
            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')

    def workloads(
        self, role: str, kinds: tuple[str, ...] = ("Deployment", "StatefulSet", "Job", "CronJob", "Rollout")
    ) -> list[dict[str, Any]]:
        out = []
        for obj in self.cluster.objects.of_kind(*kinds):
            tpl = pod_templates(obj) or {}
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if labels.get("app.kubernetes.io/component") == role or any(
                _runs(c, ROLES[role]) for c in (tpl.get("spec") or {}).get("containers") or []
            ):
                out.append(obj)
        return out

    def one(self, role: str, kinds: tuple[str, ...], why: str) -> dict[str, Any]:
        found = self.workloads(role, kinds)
        if not found:
            raise Broken(
                "missing-workload", why, f"a {role} workload",
                f"the overlay renders no {'/'.join(kinds)} running `freshrec {' '.join(ROLES[role])}` "
                f"(or labelled app.kubernetes.io/component: {role})",
            )  # fmt: skip
        return found[0]

    def service_for(self, pods: list[Any], container_port: int | None, who: str) -> tuple[str, int, str]:
        """(ClusterIP, port, Service name) of a Service that selects ``pods`` and reaches ``container_port``."""
        from freshrec.cluster.rehearsal_objects import selector_matches

        pod = pods[0]
        for svc in self.cluster.objects.of_kind("Service"):
            if svc["metadata"]["namespace"] != pod.namespace or not selector_matches(
                svc["spec"].get("selector"), pod.labels
            ):
                continue
            for port in svc["spec"].get("ports") or []:
                try:
                    target = pod.container_port(port.get("targetPort", port["port"]))
                except Broken:
                    continue
                if container_port is None or target == container_port:
                    return (
                        svc["spec"]["clusterIP"],
                        int(port["port"]),
                        f"{svc['metadata']['namespace']}/{svc['metadata']['name']}",
                    )
        raise Broken(
            "missing-reference",
            who,
            f"a Service for {pod.owner}",
            f"no Service in {pod.namespace} selects {pod.labels} on port {container_port}",
        )

    def host_path(self, pod: Any, container: str, path: str) -> tuple[Path, str]:
        """The folder on this machine behind ``path`` as ``container`` of ``pod`` sees it, and its description."""
        c = next(
            x
            for x in pod.spec.get("containers", []) + pod.spec.get("initContainers", [])
            if x["name"] == container
        )
        found = mount_for(c, path)
        if found is None:
            return Path("/nonexistent"), f"{path} in the container's own filesystem (no volume mounted there)"
        m, rest = found
        host, _ = pod.volumes[m["name"]]
        sub = m.get("subPath", "")
        vol = next((v for v in pod.spec.get("volumes") or [] if v["name"] == m["name"]), {})
        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
        where = f"{claim or m['name']}:{'/'.join(p for p in (sub, rest) if p) or '/'}"
        return (host / sub / rest if sub else host / rest), where

    def claims_listing(self, namespace: str) -> str:
        root = self.cluster.root / "volumes" / namespace
        if not root.is_dir():
            return "(no claim written yet)"
        parts = []
        for claim in sorted(root.iterdir()):
            subs = sorted(p.name for p in claim.iterdir())[:12]
            parts.append(f"{claim.name}: {subs}")
        return "; ".join(parts)

    # --- the story -----------------------------------------------------------------------------------
    def _story(self) -> None:
        from freshrec.cluster.rehearsal_story import Story

        Story(self).play()


def crd_files(repo: Path) -> list[Path]:
    """The CRDs of the platform (Argo Rollouts, Gateway API, Prometheus operator) from ../shared/schemas."""
    folder = repo.parent / "shared" / "schemas" / "crds"
    wanted = ("argo-rollouts_", "gateway.networking.k8s.io_", "monitoring.coreos.com_")
    files = sorted(p for p in folder.glob("*.yaml") if p.name.startswith(wanted))
    if not files:
        raise RuntimeError(
            f"CRD schemas not found under {folder.resolve()} (expected ../shared/schemas/crds)"
        )
    return files


def write_rows(
    reports: list[Report], breaks: list[dict[str, Any]] | None = None, path: Path | None = None
) -> None:
    """The rehearsal's figures into benchmarks/results.md (row names fixed by the issue)."""
    sys.path.insert(0, str(REPO))
    from benchmarks.results import RESULTS, Row
    from benchmarks.results import write_rows as write

    full = reports[-1]
    names = "; ".join(c.name for c in full.exercised)
    every = ", ".join(f"{r.overlay} {'PASS' if r.ok else 'FAIL'} {len(r.exercised)}" for r in reports)
    walls = ", ".join(f"{r.overlay} {r.wall_s:.0f} s" for r in reports)
    rows = [
        Row(
            "cluster rehearsal: connections exercised",
            len(full.exercised),
            None,
            None,
            f"{full.overlay} overlay + {full.pipeline}: {names}; per overlay: {every} (load {full.load})",
        ),
        Row(
            "cluster rehearsal: wall (s)",
            round(full.wall_s, 1),
            300,
            None,
            f"one full story ({full.overlay}), budget 300 s on 2 cores; each overlay: {walls}; load {full.load}; "
            f"{os.cpu_count()} CPU cores",
            "s",
        ),
    ]
    if breaks:
        caught = sum(1 for b in breaks if b["caught"])
        kinds = "; ".join(
            f"{b['kind']}: {'caught' if b['caught'] else 'MISSED'} as [{b['failure'].get('kind')}] "
            f"{str(b['failure'].get('writer'))[:60]} -> {str(b['failure'].get('reader'))[:60]}"
            for b in breaks
        )
        rows.append(
            Row(
                "cluster rehearsal: injected breaks caught",
                f"{caught}/{len(breaks)}",
                None,
                None,
                f"local overlay, one rendered object broken per kind ({len(breaks)} kinds): {kinds}",
            )
        )
    # The GPU figure of issue 13 (benchmarks/gpu_check.py) needs a lent GPU; without one the row says so,
    # and a measured figure already in the table is left alone.
    from benchmarks.gpu_check import GPU_ROW
    from benchmarks.results import read_rows

    current = read_rows(path or RESULTS).get(GPU_ROW)
    if current is None or current[1].startswith("not run"):
        rows.append(
            Row(
                GPU_ROW,
                "not run: no GPU lent to this task",
                None,
                None,
                "no GPU visible on this machine (CPU image, TensorFlow without CUDA) and the device tool lent none "
                "to this task (status: not_drawn); `python -m benchmarks.gpu_check` on a GPU node measures it "
                "against the CPU in the same run",
            )
        )
    write(rows, path or RESULTS)


OVERLAYS = ("local", "gpu", "production")


def rehearse_overlays(
    overlays: list[str],
    *,
    keep: bool = False,
    keep_going: bool = False,
    json_out: Path | None = None,
    rows: bool = False,
) -> list[Report]:
    """Rehearse each overlay in turn, print each report; optionally save JSON and the results rows."""
    reports = []
    # One day-0 model for every overlay (what `freshrec train --publish` made once).
    bootstrap = Path(os.environ.get("TMPDIR", "/tmp")) / f"freshrec-bootstrap-{secrets.token_hex(3)}"
    for overlay in overlays:
        report = Rehearsal(
            overlay,
            keep=keep,
            keep_going=keep_going,
            progress=lambda m: print(m, flush=True),
            bootstrap_cache=bootstrap,
        ).run()
        print(report.summary(), flush=True)
        reports.append(report)
    if json_out:
        json_out.write_text(json.dumps([r.to_dict() for r in reports], indent=1, default=str))
    if rows:
        # The breaks are rehearsed whatever the overlays gave: each must fail naming both of its ends.
        from freshrec.cluster.rehearsal_breaks import rehearse_breaks

        root = Path(os.environ.get("TMPDIR", "/tmp")) / f"freshrec-breaks-{secrets.token_hex(3)}"
        breaks = rehearse_breaks(kustomize(REPO / "manifests" / "overlays" / "local"), root, bootstrap)
        for b in breaks:
            print(f"break {b['kind']}: {'caught' if b['caught'] else 'MISSED'}\n{b['summary']}", flush=True)
        write_rows(reports, breaks)
    return reports


def rehearse(
    overlay: list[str] = typer.Option(
        None, "--overlay", "-o", help="Overlay(s) (default: local, gpu, production)."
    ),
    keep: bool = typer.Option(
        False, "--keep/--no-keep", help="Keep the rehearsal's folders (pods' logs, volumes)."
    ),
    keep_going: bool = typer.Option(
        False, "--keep-going/--stop", help="Go on past broken connections nothing later needs."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the reports as JSON here."),
    rows: bool = typer.Option(
        False, "--rows/--no-rows", help="Write the figures into benchmarks/results.md."
    ),
) -> None:
    """Rehearse the rendered overlays and the compiled pipeline on this machine (needs root)."""
    reports = rehearse_overlays(
        list(overlay or OVERLAYS), keep=keep, keep_going=keep_going, json_out=json_out, rows=rows
    )
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)


def main(argv: list[str] | None = None) -> int:
    """``python -m freshrec.cluster.rehearsal [--overlay X ...] [--json F] [--keep] [--keep-going] [--rows]``."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Rehearse the overlays and the compiled pipeline on this machine."
    )
    parser.add_argument(
        "--overlay", action="append", default=None, help="local | gpu | production (repeatable)"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--keep", action="store_true", help="keep the rehearsal's folders (pods' logs, volumes)"
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="go on past broken connections nothing later needs"
    )
    parser.add_argument("--rows", action="store_true", help="write the figures into benchmarks/results.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    reports = rehearse_overlays(
        args.overlay or list(OVERLAYS),
        keep=args.keep,
        keep_going=args.keep_going,
        json_out=args.json,
        rows=args.rows,
    )
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ConnectionResult", "Rehearsal", "Report", "main", "rehearse"]
