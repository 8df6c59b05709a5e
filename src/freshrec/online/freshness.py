"""Freshness: how long from an event entering the source to the server answering with a model that learned it.

Per exported version, the tracker polls the serving REST API
(``GET /v1/models/<name>/versions/<v>``) until the version is ``AVAILABLE``; the latency is that moment
minus the wall-clock time at which the newest event the version learned entered the source. Results go to
a Prometheus histogram and to JSON records for the run report.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300, 600)


@dataclass
class FreshnessRecord:
    version: int
    newest_entered_at: float | None
    published_at: float | None
    available_at: float | None
    freshness_s: float | None  # event entered the source → version served
    publish_to_serve_s: float | None
    timed_out: bool = False


def make_metrics(registry: Any | None = None) -> dict[str, Any]:
    """Prometheus metrics of the online learner (created on demand; pass a registry in tests)."""
    from prometheus_client import REGISTRY, Counter, Gauge, Histogram

    registry = registry if registry is not None else REGISTRY
    return {
        "freshness": Histogram(
            "freshrec_online_freshness_seconds",
            "Event entered the source to the server answering with a version that learned it",
            buckets=BUCKETS,
            registry=registry,
        ),
        "exports": Counter(
            "freshrec_online_exports", "Versions exported by the online learner", registry=registry
        ),
        "version": Gauge(
            "freshrec_online_served_version", "Newest version learned online and served", registry=registry
        ),
    }


def version_available(base_url: str, model: str, version: int, timeout_s: float = 2.0) -> bool:
    """True when the server reports ``version`` of ``model`` as AVAILABLE (TF Serving's status API)."""
    import requests

    try:
        resp = requests.get(f"{base_url}/v1/models/{model}/versions/{version}", timeout=timeout_s)
    except requests.RequestException:
        return False
    if resp.status_code != 200:
        return False
    statuses = resp.json().get("model_version_status", [])
    return any(str(s.get("version")) == str(version) and s.get("state") == "AVAILABLE" for s in statuses)


class FreshnessTracker:
    """Follows exported versions until the server serves them (one background thread per version).

    Args:
        base_url: the serving REST base URL (``http://127.0.0.1:8501``).
        model: the model name.
        metrics: from :func:`make_metrics` (None: JSON records only).
        poll_s: how often to ask the server.
        timeout_s: give up on a version after this long (recorded as timed out).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        metrics: dict[str, Any] | None = None,
        poll_s: float = 0.05,
        timeout_s: float = 120.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.metrics = metrics
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.records: list[FreshnessRecord] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def track(self, version: int, newest_entered_at: float | None, published_at: float | None = None) -> None:
        """Start following ``version`` (non-blocking)."""
        t = threading.Thread(
            target=self._follow, args=(version, newest_entered_at, published_at or time.time()), daemon=True
        )
        t.start()
        self._threads.append(t)

    def on_export(self, rec: Any) -> None:
        """Callback for ``OnlineLearner(on_export=...)``."""
        if rec.version is not None:
            self.track(rec.version, rec.newest_entered_at, rec.published_at)

    def _follow(self, version: int, entered: float | None, published: float) -> None:
        deadline = time.monotonic() + self.timeout_s
        available = None
        while time.monotonic() < deadline:
            if version_available(self.base_url, self.model, version):
                available = time.time()
                break
            time.sleep(self.poll_s)
        rec = FreshnessRecord(
            version=version,
            newest_entered_at=entered,
            published_at=published,
            available_at=available,
            freshness_s=(available - entered) if available is not None and entered is not None else None,
            publish_to_serve_s=(available - published) if available is not None else None,
            timed_out=available is None,
        )
        with self._lock:
            self.records.append(rec)
        if self.metrics is not None and rec.freshness_s is not None:
            self.metrics["freshness"].observe(rec.freshness_s)
            self.metrics["exports"].inc()
            self.metrics["version"].set(version)
        if rec.timed_out:
            log.warning("version %s not served within %.0f s", version, self.timeout_s)

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for every tracked version to be served (or to time out)."""
        for t in self._threads:
            t.join(timeout_s)

    def summary(self) -> dict[str, Any]:
        """p50/p95/max freshness and the per-version records (JSON-able)."""
        with self._lock:
            recs = list(self.records)
        values = np.asarray([r.freshness_s for r in recs if r.freshness_s is not None], dtype=float)
        return {
            "versions": len(recs),
            "served": int(values.size),
            "timed_out": sum(r.timed_out for r in recs),
            "p50_s": float(np.percentile(values, 50)) if values.size else None,
            "p95_s": float(np.percentile(values, 95)) if values.size else None,
            "max_s": float(values.max()) if values.size else None,
            "records": [asdict(r) for r in sorted(recs, key=lambda r: r.version)],
        }
