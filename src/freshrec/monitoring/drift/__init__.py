"""Drift and data-quality checks: a reference window against a current window.

* :mod:`.result` — the typed :class:`DriftResult` (saved as JSON, read by name);
* :mod:`.profile` — column kinds, the cached :class:`ReferenceProfile`, window readers;
* :mod:`.statistics` — Evidently's drift statistics computed on full data with numpy;
* :mod:`.check` — :func:`check_drift`, the check itself (quality, drift, skew, verdict);
* :mod:`.report` — the Evidently HTML report on samples and the pipeline artifacts;
* :mod:`.cli` — ``freshrec drift``.

The public names load on first use (``from freshrec.monitoring.drift import check_drift`` works), so
importing the package, or its CLI for ``freshrec --help``, imports neither numpy nor pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "check_drift": "check",
    "ReferenceProfile": "profile",
    "cached_profile": "profile",
    "read_frame": "profile",
    "resolve_columns": "profile",
    "stratified_sample": "profile",
    "write_pipeline_outputs": "report",
    "ColumnKind": "result",
    "ColumnQuality": "result",
    "DriftResult": "result",
    "FeatureDrift": "result",
    "QualityFailure": "result",
    "SkewStat": "result",
    "TargetDrift": "result",
    "Verdict": "result",
    "FAST_METHODS": "statistics",
    "categorical_drift": "statistics",
    "numeric_drift": "statistics",
    "wasserstein_exact": "statistics",
    "wasserstein_norm_bounded": "statistics",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
