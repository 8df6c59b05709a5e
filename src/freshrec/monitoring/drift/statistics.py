"""Drift statistics on full data, following Evidently's own definitions.

Normed Wasserstein distance, Jensen-Shannon distance and PSI (with Evidently's binning) are computed
here with numpy, so the verdicts are the ones Evidently would give on the same rows. Wasserstein is
estimated from exact CDFs at a few thousand quantile edges of both windows with a rigorous error bound;
only when the bound straddles the threshold is the exact distance computed (so the verdict never
depends on the approximation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# Methods computed here on full data; any other Evidently method name is delegated to Evidently itself.
FAST_METHODS = {"wasserstein", "jensenshannon", "psi"}
_EDGES = 2048  # quantile edges per window for the Wasserstein estimate; bound ~ range / _EDGES


def wasserstein_norm_bounded(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> tuple[float, float, float]:
    """Normed Wasserstein distance estimate, its error bound, and the norm (std of reference).

    W1 is the integral of |F_r - F_c|. Both CDFs are known exactly at the edges (quantiles of both
    windows); inside [e_i, e_i+1) each CDF can only move by its mass strictly between the two edges, so
    the estimate sum(width * |F_r(e_i) - F_c(e_i)|) is off by at most sum(width * (inside_r + inside_c)).
    On discrete data every value is an edge, nothing lies strictly between, and the estimate is exact.
    """
    norm = max(float(np.std(ref_sorted)), 0.001)
    qr = ref_sorted[np.linspace(0, len(ref_sorted) - 1, min(_EDGES, len(ref_sorted))).astype(np.int64)]
    qc = cur_sorted[np.linspace(0, len(cur_sorted) - 1, min(_EDGES, len(cur_sorted))).astype(np.int64)]
    edges = np.unique(np.concatenate([qr, qc]))
    nr, nc = len(ref_sorted), len(cur_sorted)
    fr = np.searchsorted(ref_sorted, edges, side="right") / nr  # F at each edge (right-continuous)
    fc = np.searchsorted(cur_sorted, edges, side="right") / nc
    # Mass strictly between two edges: the only room F has to move inside [e_i, e_i+1).
    inside_r = np.searchsorted(ref_sorted, edges[1:], side="left") / nr - fr[:-1]
    inside_c = np.searchsorted(cur_sorted, edges[1:], side="left") / nc - fc[:-1]
    w = np.diff(edges)
    estimate = float(np.sum(w * np.abs(fr[:-1] - fc[:-1])))
    bound = float(np.sum(w * (inside_r + inside_c)))
    return estimate / norm, bound / norm, norm


def wasserstein_exact(u: np.ndarray, v: np.ndarray) -> float:
    """Exact first Wasserstein distance of two sorted samples (integral of |Q_u - Q_v| over p)."""
    nu, nv = len(u), len(v)
    p = np.concatenate([np.arange(1, nu + 1) / nu, np.arange(1, nv + 1) / nv])
    p.sort()
    lo = np.concatenate([[0.0], p[:-1]])
    mid = (lo + p) * 0.5
    iu = np.minimum((mid * nu).astype(np.int64), nu - 1)
    iv = np.minimum((mid * nv).astype(np.int64), nv - 1)
    return float(np.dot(np.abs(u[iu] - v[iv]), p - lo))


def _counts_union(ref: Mapping[Any, int], cur: Mapping[Any, int]) -> tuple[np.ndarray, np.ndarray]:
    keys = list(set(ref) | set(cur))
    r = np.array([ref.get(k, 0) for k in keys], dtype=np.float64)
    c = np.array([cur.get(k, 0) for k in keys], dtype=np.float64)
    return r, c


def _sorted_counts(values: np.ndarray) -> dict[float, int]:
    if len(values) == 0:
        return {}
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    counts = np.diff(np.concatenate([starts, [len(values)]]))
    return dict(zip(values[starts].tolist(), counts.tolist(), strict=True))


def _sturges_hist(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Evidently's numeric binning: np.histogram_bin_edges(ref+cur, "sturges"), then counts per window."""
    n = len(ref_sorted) + len(cur_sorted)
    first = min(ref_sorted[0], cur_sorted[0])
    last = max(ref_sorted[-1], cur_sorted[-1])
    if first == last:
        first, last = first - 0.5, last + 0.5
    width = (last - first) / (np.log2(n) + 1.0)
    bins = int(np.ceil((last - first) / width)) if width else 1
    edges = np.linspace(first, last, bins + 1, endpoint=True)

    def counts(sorted_values: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(sorted_values, edges, side="left")
        idx[-1] = len(sorted_values)  # numpy's last bin is closed on the right
        return np.diff(idx).astype(np.float64)

    return counts(ref_sorted), counts(cur_sorted)


def _binned_distance(method: str, ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    rp = ref_counts / ref_counts.sum()
    cp = cur_counts / cur_counts.sum()
    if method == "jensenshannon":
        from scipy.spatial import distance

        return float(distance.jensenshannon(rp, cp))
    if method == "psi":
        rp, cp = _fill_zeroes(rp), _fill_zeroes(cp)
        return float(np.sum((rp - cp) * np.log(rp / cp)))
    raise ValueError(f"no binned implementation of {method!r}")


def _fill_zeroes(p: np.ndarray) -> np.ndarray:
    # Evidently's get_binned_data(feel_zeroes=True): empty bins get a tiny share so logs stay finite.
    p = p.copy()
    nonzero = p[p != 0]
    if len(nonzero) and (p == 0).any():
        smallest = nonzero.min()
        p[p == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return p


def numeric_drift(
    ref_sorted: np.ndarray, cur_sorted: np.ndarray, method: str, threshold: float
) -> tuple[float, bool, float, bool]:
    """(score, drifted, error_bound, exact) for a numeric column with a fast method."""
    if method == "wasserstein":
        score, bound, norm = wasserstein_norm_bounded(ref_sorted, cur_sorted)
        if score - bound >= threshold or score + bound < threshold:
            return score, score >= threshold, bound, bound == 0.0
        # The bound straddles the threshold: settle it exactly (rare, costs one more pass).
        exact = wasserstein_exact(ref_sorted, cur_sorted) / norm
        return exact, exact >= threshold, 0.0, True
    if _n_unique(ref_sorted) > 20:
        r, c = _sturges_hist(ref_sorted, cur_sorted)
    else:
        r, c = _counts_union(_sorted_counts(ref_sorted), _sorted_counts(cur_sorted))
    score = _binned_distance(method, r, c)
    return score, score >= threshold, 0.0, True


def _n_unique_union(ref_sorted: np.ndarray, cur_sorted: np.ndarray, limit: int) -> int:
    """Distinct values of both windows together (as Evidently counts them), exactly up to ``limit``."""
    n_ref = _n_unique(ref_sorted)
    if n_ref > limit:
        return n_ref  # the union is larger still: only whether it exceeds the limit matters
    return len(set(_sorted_counts(ref_sorted)) | set(_sorted_counts(cur_sorted)))


def _n_unique(sorted_values: np.ndarray) -> int:
    if len(sorted_values) == 0:
        return 0
    return int(np.count_nonzero(sorted_values[1:] != sorted_values[:-1]) + 1)


def categorical_drift(ref_counts: Mapping[str, int], cur_counts: Mapping[str, int], method: str) -> float:
    """Jensen-Shannon distance or PSI between two category-count tables (exact, on full data)."""
    if method not in ("jensenshannon", "psi"):
        raise ValueError(f"method {method!r} has no fast categorical implementation")
    r, c = _counts_union(ref_counts, cur_counts)
    return _binned_distance(method, r, c)
