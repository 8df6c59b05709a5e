"""The rehearsal's users: ranking requests through the gateway Service, clicks into the event stream.

They replay held-out impressions of the same synthetic dataset the pipeline trains on (the newest 10 % by
time, grouped per user into pages of up to ten items, with fresh ids and the current time), as a client of
the cluster would: HTTP to the gateway's Service address, ``XADD`` to the event stream through the Redis
Service the online learner reads (``freshrec.online.sources.publish_events``, the project's producer).
Then they look for what the readers must see: the prediction log and the clicks where the analysis Job
reads them, the learner's consumer group caught up, a new version served.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd

from freshrec.cluster.rehearsal_objects import Broken, container_env, pod_templates, ref

PAGE = 10
ROUND = 80  # requests between two looks at the canary's clicks
MAX_REQUESTS = 4000


class Users:
    """See the module docstring."""

    def __init__(self, story: Any) -> None:
        from freshrec.data.synthetic import generate

        self.s = story
        self.c = story.c
        events = generate().events.sort_values("event_timestamp", kind="stable")
        held_out = events.iloc[int(len(events) * 0.9) :]
        pages = []
        for user, rows in held_out.groupby("user_id", sort=False):
            for start in range(0, len(rows), PAGE):
                chunk = rows.iloc[start : start + PAGE]
                pages.append(
                    (str(user), [str(i) for i in chunk["item_id"]], [int(x) for x in chunk["label"]])
                )
        self.all_pages = pages
        self.pages = pages[: story.r.n_requests]
        self.responses: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.event_ids: list[str] = []

    # --- ranking ---------------------------------------------------------------------------------------
    def gateway_address(self) -> tuple[str, int, str]:
        pods = self.s.gateway_pods
        container = pod_templates(self.s.gateway)["spec"]["containers"][0]
        port = next((p["containerPort"] for p in container.get("ports") or []), None)
        return self.s.r.service_for(pods, port, "users (ranking requests)")

    def rank_and_check(self) -> None:
        import requests

        ip, port, svc = self.gateway_address()
        url = f"http://{ip}:{port}/v1/rank"
        session = requests.Session()

        def one(page: tuple[str, list[str], list[int]]) -> None:
            user, items, _ = page
            rid = uuid.uuid4().hex
            try:
                r = session.post(
                    url, json={"user_id": user, "item_ids": items, "request_id": rid}, timeout=30
                )
            except requests.RequestException as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            if r.status_code != 200:
                self.errors.append(f"HTTP {r.status_code}: {r.text[:300]}")
                return
            self.responses.append({**r.json(), "user": user, "page": page})

        with self.s.r.connection(
            "users -> gateway Service -> ranked lists",
            "users (the rehearsal)",
            f"gateway {ref(self.s.gateway)} via Service {svc}",
        ) as conn:
            target = self.s.canary_clicks_wanted()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(one, self.pages))
                # The canary's pause stands for the traffic the plan waits for (pause.until_clicks reaches
                # the next analysis as min-clicks): the users go on until the canary arm has that many clicks.
                sent = len(self.pages)
                while self._canary_clicks() < target and sent < MAX_REQUESTS:
                    more = self._pages(sent, min(ROUND, MAX_REQUESTS - sent))
                    self.pages += more
                    sent += len(more)
                    list(pool.map(one, more))
            if len(self.errors) > 0.05 * len(self.pages):
                raise Broken(
                    "gateway", f"gateway {ref(self.s.gateway)}", "users",
                    f"{len(self.errors)}/{len(self.pages)} requests failed, first: {self.errors[0]}" + self.s.gateway_pods[0].logs_summary(20),
                )  # fmt: skip
            clicks = self._canary_clicks()
            if clicks < target:
                raise Broken(
                    "traffic", f"users ({len(self.pages)} requests, {clicks} clicks on the canary)",
                    f"{ref(self.s.rollout)} analysis (min-clicks {target})",
                    f"the canary got too little traffic to reach the analysis' min-clicks within {MAX_REQUESTS} requests "
                    f"(weights set: {self.s.ctl.weights}); the analysis Job would wait out its --max-wait-s",
                )  # fmt: skip
            conn.evidence = (
                f"{len(self.responses)} ranked, {len(self.errors)} errors"
                + (f" (first: {self.errors[0][:200]})" if self.errors else "")
                + f"; {clicks} canary clicks for min-clicks {target}"
            )
        gw_pods = {p.name for p in self.s.gateway_pods}
        with self.s.r.connection(
            "gateway -> Feast online store (Redis)",
            f"gateway {ref(self.s.gateway)}",
            "Redis (Feast online store Service)",
        ) as conn:
            used = [
                x for x in self.c.network.connections if x.client in gw_pods and "host:redis" in x.backend
            ]
            if not used:
                raise Broken(
                    "path",
                    f"gateway {ref(self.s.gateway)}",
                    "Feast online store (Redis)",
                    "the gateway ranked without reading Redis: its Feast config points elsewhere",
                )
            conn.evidence = f"{len(used)} connection(s) via {sorted({x.service for x in used})}"
        versions = {int(r["model_version"]) for r in self.responses if r.get("model_version") is not None}
        with self.s.r.connection(
            "gateway -> TF Serving stable and canary",
            f"gateway {ref(self.s.gateway)}",
            f"TF Serving v1 (stable) and v{self.s.version} (canary)",
        ) as conn:
            missing = {1, self.s.version} - versions
            if missing:
                raise Broken(
                    "traffic", f"gateway {ref(self.s.gateway)} (served versions {sorted(versions)})",
                    f"TF Serving {'canary' if self.s.version in missing else 'stable'} (v{sorted(missing)})",
                    "no ranking request was scored by that version: the gateway's model-server address or the route "
                    f"weights do not reach it (weights set: {self.s.ctl.weights})",
                )  # fmt: skip
            by = {v: sum(1 for r in self.responses if int(r["model_version"]) == v) for v in sorted(versions)}
            conn.evidence = f"requests per version {by}"
        self._prediction_log_check()

    def _canary_clicks(self) -> int:
        version = self.s.version
        return sum(
            sum(r["page"][2])
            for r in self.responses
            if r.get("model_version") is not None and int(r["model_version"]) == version
        )

    def _pages(self, start: int, n: int) -> list[tuple[str, list[str], list[int]]]:
        """The next ``n`` held-out pages, from the start again once all were sent (fresh request ids)."""
        return [self.all_pages[(start + i) % len(self.all_pages)] for i in range(n)]

    def _analysis_job(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        for t in self.c.objects.of_kind("AnalysisTemplate"):
            for m in t["spec"].get("metrics") or []:
                job = ((m.get("provider") or {}).get("job") or {}).get("spec")
                if job:
                    c = job["template"]["spec"]["containers"][0]
                    owner = {
                        "kind": "AnalysisTemplate",
                        "metadata": t["metadata"],
                        "spec": {"template": job["template"]},
                    }
                    return t, owner, c
        raise Broken(
            "missing-workload", "prediction log", "an analysis Job", "no AnalysisTemplate runs a Job"
        )

    def _reader_path(self, flag: str) -> tuple[Path | None, str, str]:
        from freshrec.cluster.rehearsal_story import _opt

        t, owner, c = self._analysis_job()
        tokens = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
        path = _opt(tokens, flag)
        if path is None:
            workdir = _opt(tokens, "workdir") or "/var/lib/freshrec"
            path = f"{workdir}/{'predictions' if flag == 'predictions' else 'eventlog'}"
        return self.s._static_host_path(owner, c, path), path, ref(t)

    def _prediction_log_check(self) -> None:
        from freshrec.serving.predlog import read_predictions

        host, path, who = self._reader_path("predictions")
        ids = {r["request_id"] for r in self.responses}
        with self.s.r.connection(
            "gateway -> prediction log -> analysis Job",
            f"gateway {ref(self.s.gateway)}",
            f"{who} Job reads --predictions={path}",
        ) as conn:
            deadline = time.monotonic() + 60
            found = 0
            while time.monotonic() < deadline:
                frame = read_predictions(host) if host is not None and host.is_dir() else pd.DataFrame()
                found = len(set(frame["request_id"]) & ids) if len(frame) and "request_id" in frame else 0
                if found >= 0.9 * len(ids):
                    break
                time.sleep(1.0)
            if found < 0.9 * len(ids):
                raise Broken(
                    "path", f"gateway {ref(self.s.gateway)} prediction log", f"{who} Job reads {path} ({host})",
                    f"{found}/{len(ids)} of the users' requests are in the prediction log the analysis reads "
                    f"(claims: {self.s.r.claims_listing(self.s.ns)})",
                )  # fmt: skip
            conn.evidence = f"{found} requests logged at {path}"

    # --- clicks ------------------------------------------------------------------------------------------
    def _learner_stream(self) -> tuple[str, int, int, str, str]:
        """(Service IP, port, db, stream, group) of the event stream the rendered learner consumes."""
        from freshrec.config import OnlineSettings

        learner = self.s.learner
        pod = self.s.learner_pods[0]
        c = pod.spec["containers"][0]
        env = container_env(
            self.c.objects, pod.obj, c, ref(learner), self.c.images.resolve(c["image"], ref(learner)).env
        )
        defaults = OnlineSettings()
        url = env.get("FRESHREC_ONLINE__REDIS_URL", defaults.redis_url)
        stream = env.get("FRESHREC_ONLINE__STREAM", defaults.stream)
        group = env.get("FRESHREC_ONLINE__GROUP", defaults.group)
        u = urlparse(url)
        host = u.hostname or "localhost"
        svc = self._service_by_dns(host, pod.namespace)
        if svc is None:
            raise Broken(
                "missing-reference", f"online learner {ref(learner)} FRESHREC_ONLINE__REDIS_URL={url}", f"Service {host}",
                f"{host!r} names no Service reachable from namespace {pod.namespace}",
            )  # fmt: skip
        db = int((u.path or "/0").strip("/") or 0)
        return svc["spec"]["clusterIP"], int(u.port or 6379), db, stream, group

    def _service_by_dns(self, host: str, namespace: str) -> dict[str, Any] | None:
        parts = host.split(".")
        name, ns = parts[0], parts[1] if len(parts) > 1 else namespace
        return self.c.objects.get("Service", ns, name)

    def clicks_and_check(self) -> None:
        import redis as redis_lib

        from freshrec.online.sources import publish_events

        ip, port, db, stream, group = self._learner_stream()
        self.stream, self.group, self.redis_addr = stream, group, (ip, port, db)
        rows = []
        now = pd.Timestamp.now(tz="UTC")
        for r in self.responses:
            user, items, labels = r["page"]
            for item, label in zip(items, labels, strict=True):
                eid = f"rehearsal-{uuid.uuid4().hex}"
                self.event_ids.append(eid)
                rows.append(
                    {
                        "event_id": eid,
                        "event_timestamp": now,
                        "user_id": user,
                        "item_id": item,
                        "label": label,
                    }
                )
        frame = pd.DataFrame(rows)
        self.frame = frame
        client = redis_lib.Redis(host=ip, port=port, db=db)
        publish_events(client, stream, frame)
        self.c.note(
            f"the users published {len(frame)} click/no-click events to Redis stream {stream!r} (what the learner reads)"
        )
        host, path, who = self._reader_path("events")
        with self.s.r.connection(
            "users' clicks -> event log -> analysis Job",
            f"event stream {stream!r} (Redis)",
            f"{who} Job reads --events={path}",
        ) as conn:
            wanted = set(self.event_ids)
            seen = _wait_for_ids(host, wanted, 45)
            if seen < 0.9 * len(wanted):
                raise Broken(
                    "path", f"clicks on Redis stream {stream!r}", f"{who} Job reads {path} ({host})",
                    f"{seen}/{len(wanted)} clicks reached the event log the analysis reads within 45 s: no workload "
                    f"writes the stream into it (claims: {self.s.r.claims_listing(self.s.ns)})",
                )  # fmt: skip
            conn.evidence = f"{seen} clicks at {path}"

    # --- the online learner ---------------------------------------------------------------------------------
    def clicks_after_promotion(self) -> None:
        """The users go on clicking after the canary's verdict: the same pages' clicks again, new ids."""

        from freshrec.online.sources import publish_events

        frame = self.frame.copy()
        frame["event_id"] = [f"rehearsal-{uuid.uuid4().hex}" for _ in range(len(frame))]
        frame["event_timestamp"] = pd.Timestamp.now(tz="UTC")
        self.event_ids += list(frame["event_id"])
        publish_events(self._redis(), self.stream, frame)
        self.c.note(f"after the verdict the users published {len(frame)} more events to {self.stream!r}")

    # --- the stream feature job ------------------------------------------------------------------------
    def feast_rows(self) -> dict[bytes, dict[bytes, bytes]]:
        """Every hash of the Feast online store (Redis), to see which rows the stream job rewrites."""

        client = self._redis()
        return {k: client.hgetall(k) for k in client.scan_iter(count=1000) if client.type(k) == b"hash"}

    def stream_job_metric(self, name: str) -> float | None:
        """A counter of the stream feature job, scraped through its metrics Service as Prometheus does."""
        import requests
        from prometheus_client.parser import text_string_to_metric_families

        pods = self.s.stream_pods
        c = pod_templates(self.s.stream)["spec"]["containers"][0]
        port = next((p["containerPort"] for p in c.get("ports") or [] if p.get("name") == "metrics"), None)
        ip, svc_port, _ = self.s.r.service_for(pods, port, "Prometheus (the job's ServiceMonitor)")
        text = requests.get(f"http://{ip}:{svc_port}/metrics", timeout=10).text
        return sum(
            s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name
        )

    def stream_job_checks(self, rows_before: dict[bytes, dict[bytes, bytes]], written_before: float) -> None:
        """The stream feature job consumed the users' clicks (its own group), rewrote their activity rows in
        the Feast online store the gateway reads, and its metrics reach Prometheus through its Service."""

        from freshrec.features.stream import METRIC_PREFIX

        job, pods = self.s.stream, self.s.stream_pods
        c = pods[0].spec["containers"][0]
        env = container_env(
            self.c.objects, pods[0].obj, c, ref(job), self.c.images.resolve(c["image"], ref(job)).env
        )
        group = env.get("FRESHREC_FEATURES__STREAM__GROUP", "freshrec-features")
        client = self._redis()
        with self.s.r.connection(
            "event stream -> stream feature job",
            f"Redis stream {self.stream!r}",
            f"stream feature job {ref(job)} (group {group!r})",
        ) as conn:
            info = self._group_drained(client, group, 90)
            if info is None or int(info.get("entries-read") or 0) < len(self.event_ids):
                raise Broken(
                    "path", f"Redis stream {self.stream!r} ({len(self.event_ids)} events)", f"stream feature job group {group!r}",
                    f"the job did not consume them: group info {info or 'no such group'}" + pods[0].logs_summary(20),
                )  # fmt: skip
            conn.evidence = f"group {group}: {info.get('entries-read')} read, {info.get('pending')} pending"
        with self.s.r.connection(
            "stream feature job -> Feast online store (Redis)",
            f"stream feature job {ref(job)}",
            "Feast online store (Redis) the gateway reads",
        ) as conn:
            names = {p.name for p in pods}
            used = [x for x in self.c.network.connections if x.client in names and "host:redis" in x.backend]
            after = self.feast_rows()
            changed = sum(1 for k, v in after.items() if rows_before.get(k) != v)
            if not used or not changed:
                raise Broken(
                    "path", f"stream feature job {ref(job)}", "Feast online store (Redis)",
                    f"{changed} of {len(after)} online rows changed after the users' clicks, {len(used)} connection(s) "
                    "from the job to Redis: the job's Feast config points elsewhere" + pods[0].logs_summary(20),
                )  # fmt: skip
            conn.evidence = f"{changed} of {len(after)} rows rewritten; {len(used)} connection(s) via {sorted({x.service for x in used})}"
        with self.s.r.connection(
            "stream feature job metrics -> Prometheus (Service + ServiceMonitor)",
            f"stream feature job {ref(job)} metrics port",
            "Prometheus scrape through the job's Service",
        ) as conn:
            name = f"{METRIC_PREFIX}_rows_written_total"
            written = self.stream_job_metric(name) or 0.0
            if written <= written_before:
                raise Broken(
                    "path", f"stream feature job {ref(job)}", "its metrics Service",
                    f"{name} did not grow through the Service ({written_before:.0f} -> {written:.0f})",
                )  # fmt: skip
            conn.evidence = f"{name} {written_before:.0f} -> {written:.0f}"

    def _group_drained(self, client: Any, group: str, timeout_s: float) -> dict[str, Any] | None:
        """The group's XINFO once it has read every published event and has none pending (None: no group)."""
        deadline = time.monotonic() + timeout_s
        info: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            groups = {
                g["name"].decode() if isinstance(g["name"], bytes) else g["name"]: g
                for g in client.xinfo_groups(self.stream)
            }
            info = groups.get(group)
            if (
                info
                and int(info.get("entries-read") or 0) >= len(self.event_ids)
                and int(info.get("pending", 0)) == 0
            ):
                break
            time.sleep(1.0)
        return info

    def _redis(self) -> Any:
        """A client for the event stream's Redis, through its Service (as the users reach it)."""
        import redis as redis_lib

        ip, port, db = self.redis_addr
        return redis_lib.Redis(host=ip, port=port, db=db)

    def drifted_clicks(self, n: int = 12_000) -> None:
        """A shift the drift monitor must see: a burst of clicks on a handful of items (a promotion gone viral),
        published to the stream and waited for in the event log the drift CronJob reads."""

        from freshrec.online.sources import publish_events

        base = self.frame.sample(n=n, replace=True, random_state=0).reset_index(drop=True)
        hot = list(pd.unique(self.frame["item_id"]))[:5]
        base["item_id"] = [hot[k % len(hot)] for k in range(len(base))]
        base["label"] = 1
        base["event_id"] = [f"rehearsal-drift-{uuid.uuid4().hex}" for _ in range(len(base))]
        base["event_timestamp"] = pd.Timestamp.now(tz="UTC")
        self.event_ids += list(base["event_id"])
        publish_events(self._redis(), self.stream, base)
        host, path, _ = self._reader_path("events")
        seen = _wait_for_ids(host, set(base["event_id"]), 90)
        self.c.note(
            f"the users clicked {n} times on {len(hot)} items (all clicks): {seen} reached the event log at {path}"
        )

    def learner_consumed(self) -> None:

        client = self._redis()
        with self.s.r.connection(
            "event stream -> online learner",
            f"Redis stream {self.stream!r}",
            f"online learner {ref(self.s.learner)} (group {self.group!r})",
        ) as conn:
            info = self._group_drained(client, self.group, 90)
            if (
                not info
                or int(info.get("entries-read") or 0) < len(self.event_ids)
                or int(info.get("pending", 0))
            ):
                raise Broken(
                    "path", f"Redis stream {self.stream!r} ({len(self.event_ids)} events)", f"online learner group {self.group!r}",
                    f"the learner did not consume them: group info {info or 'no such group'}" + self.s.learner_pods[0].logs_summary(20),
                )  # fmt: skip
            conn.evidence = (
                f"group {self.group}: {info.get('entries-read')} read, {info.get('pending')} pending"
            )

    def learner_export_served(self) -> None:
        """An online export descending from the stable pods' version appears on the volume and they serve it.

        Exports of the learner's older lineage (learned from v1 before the promotion) may be there too: the
        stable pods must not serve those, so the check waits for a descendant (the sidecar's own rule).
        """
        from freshrec.rollout.model_config import served_version

        stable = self.s.ctl.pods[self.s.ctl.stable_hash][0]
        host, _ = self.s.r.host_path(stable, self.s.tfs_base[0], self.s.tfs_base[1])
        before = max(int(p.name) for p in host.iterdir() if p.name.isdigit())
        with self.s.r.connection(
            "online learner -> model repository -> TF Serving",
            f"online learner {ref(self.s.learner)}",
            f"TF Serving stable pod {stable.name}",
        ) as conn:
            deadline = time.monotonic() + 120
            newer = None
            while time.monotonic() < deadline:
                descendant = served_version(host, self.s.version)
                if descendant > self.s.version:
                    newer = descendant
                    break
                time.sleep(1.0)
            if newer is None:
                raise Broken(
                    "path", f"online learner {ref(self.s.learner)}", f"model repository TF Serving reads ({self.s.models_where})",
                    f"no online export descending from v{self.s.version} appeared there (newest v{before}; "
                    f"versions and parents: {_lineage(host, self.s.version)})" + self.s.learner_pods[0].logs_summary(25),
                )  # fmt: skip
            try:
                status = self.s._model_status(stable, newer, timeout_s=60)
            except Broken as exc:
                raise Broken(
                    "path",
                    f"online export v{newer} at {self.s.models_where}",
                    f"TF Serving {stable.name}",
                    f"the version is on the volume but TF Serving does not load it: {exc.detail[:1500]}",
                ) from exc
            conn.evidence = f"v{newer} (from v{self.s.version}): {status}"


def _lineage(base: Path, since: int) -> dict[int, Any]:
    """{version: parent_version or source} of the versions after ``since`` (for a failure's detail)."""
    import json

    out: dict[int, Any] = {}
    for p in base.iterdir():
        if p.name.isdigit() and int(p.name) > since:
            try:
                meta = json.loads((p / "freshrec.json").read_text())
            except (OSError, ValueError):
                out[int(p.name)] = "incomplete"
                continue
            out[int(p.name)] = meta.get("parent_version", meta.get("source"))
    return dict(sorted(out.items()))


def _wait_for_ids(folder: Path | None, wanted: set[str], timeout_s: float) -> int:
    """How many of ``wanted`` reached the event log under ``folder`` (waits up to ``timeout_s`` for 90 %)."""
    deadline = time.monotonic() + timeout_s
    seen = _ids_under(folder, wanted)
    while seen < 0.9 * len(wanted) and time.monotonic() < deadline:
        time.sleep(1.0)
        seen = _ids_under(folder, wanted)
    return seen


def _ids_under(folder: Path | None, wanted: set[str]) -> int:
    if folder is None or not folder.exists():
        return 0
    seen: set[str] = set()
    for p in folder.rglob("*.parquet"):
        try:
            ids = pd.read_parquet(p, columns=["event_id"])["event_id"]
        except (OSError, ValueError, KeyError):
            continue
        seen |= wanted & set(ids.astype(str))
    return len(seen)
