"""Prometheus metrics of the local model server, under TF Serving's metric names.

TF Serving exposes ``:tensorflow:serving:request_count`` (counter) and
``:tensorflow:serving:request_latency`` (histogram, microseconds) at
``/monitoring/prometheus/metrics``; the same names here let one set of PromQL queries (the
AnalysisTemplates, the PrometheusRule) work locally and in the cluster. Extra labels: ``version``
and ``API``/``entrypoint`` (predict|metadata|status, REST|GRPC). Every label is bounded: ``model_name``
is a served model or :data:`UNKNOWN_MODEL`, ``version`` a served version or empty, the rest fixed sets. Written by hand rather than with
prometheus_client because its counters always get a ``_total`` suffix, which TF Serving's do not.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from typing import Any

# TF Serving's request latency buckets: 10us * 1.8^k
BUCKETS_US = [10 * 1.8**k for k in range(30)]

COUNT = ":tensorflow:serving:request_count"
LATENCY = ":tensorflow:serving:request_latency"
LOADED = ":tensorflow:serving:loaded_versions"
LOAD_FAILURES = ":tensorflow:serving:load_failures"


# The model_name label of requests for a model the server does not serve: one series for all of them,
# so a client asking for endless made-up names cannot grow the exposition (issue 17: 26 KB -> 21.7 MB).
UNKNOWN_MODEL = "(unknown)"


def model_label(manager: Any, name: str) -> str:
    """``name`` when the manager serves a model of that name, else :data:`UNKNOWN_MODEL`."""
    return name if name in manager.views() else UNKNOWN_MODEL


def _labels(names: Iterable[str], values: Iterable[object]) -> str:
    parts = []
    for n, v in zip(names, values, strict=True):
        text = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{n}="{text}"')
    return "{" + ",".join(parts) + "}"


class ServerMetrics:
    """Request counters and latency histograms; thread-safe."""

    COUNT_LABELS = ("model_name", "version", "API", "entrypoint", "status")
    LATENCY_LABELS = ("model_name", "version", "API", "entrypoint")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], int] = {}
        self._hist: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., sum, count

    def observe(
        self, model: str, version: object, api: str, entrypoint: str, status: str, seconds: float
    ) -> None:
        """Count one request and record its latency."""
        us = seconds * 1e6
        key = (model, str(version or ""), api, entrypoint)
        with self._lock:
            ckey = (*key, status)
            self._counts[ckey] = self._counts.get(ckey, 0) + 1
            h = self._hist.get(key)
            if h is None:
                h = self._hist[key] = [0.0] * (len(BUCKETS_US) + 3)
            h[bisect.bisect_left(BUCKETS_US, us)] += 1  # the last bucket slot is +Inf
            h[-2] += us
            h[-1] += 1

    def request_count(self, model: str | None = None, status: str | None = None) -> int:
        """Total requests seen (optionally of one model / status); for tests and the CLI."""
        with self._lock:
            return sum(
                n
                for k, n in self._counts.items()
                if (model is None or k[0] == model) and (status is None or k[4] == status)
            )

    def render(self, loaded: dict[str, list[int]], failures: dict[str, int]) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        lines = [f"# TYPE {COUNT} counter"]
        with self._lock:
            counts = dict(self._counts)
            hist = {k: list(v) for k, v in self._hist.items()}
        for key, n in sorted(counts.items()):
            lines.append(f"{COUNT}{_labels(self.COUNT_LABELS, key)} {n}")
        lines.append(f"# TYPE {LATENCY} histogram")
        for key, h in sorted(hist.items()):
            cumulative = 0.0
            for i, edge in enumerate([*BUCKETS_US, float("inf")]):
                cumulative += h[i]
                le = "+Inf" if edge == float("inf") else repr(round(edge, 3))
                lines.append(
                    f"{LATENCY}_bucket{_labels((*self.LATENCY_LABELS, 'le'), (*key, le))} {cumulative:g}"
                )
            lines.append(f"{LATENCY}_sum{_labels(self.LATENCY_LABELS, key)} {h[-2]:.1f}")
            lines.append(f"{LATENCY}_count{_labels(self.LATENCY_LABELS, key)} {h[-1]:g}")
        lines.append(f"# TYPE {LOADED} gauge")
        for model, versions in sorted(loaded.items()):
            for v in sorted(versions):  # one series per loaded version, value 1
                lines.append(f"{LOADED}{_labels(('model_name', 'version'), (model, v))} 1")
        lines.append(f"# TYPE {LOAD_FAILURES} gauge")
        for model, n in sorted(failures.items()):
            lines.append(f"{LOAD_FAILURES}{_labels(('model_name',), (model,))} {n}")
        return "\n".join(lines) + "\n"
