"""Canary analysis: one function that compares the canary arm with the stable arm.

Checks (each is pass, fail, inconclusive or skipped):

- ``error_rate``: canary errors / requests against ``max_error_rate``. Fails as soon as the canary has
  more errors than ``max_error_rate × max(requests, min_requests)`` (no later success can bring it
  under the limit); inconclusive below ``min_requests``.
- ``latency_p99``: canary p99 (ms) against ``max_p99_latency_ms``.
- ``score_shift``: two-sample Kolmogorov-Smirnov distance between the arms' predicted scores; fails when
  the distance exceeds ``max_score_ks`` and is significant — a guard against a broken model (constant or
  inverted scores), not against a better one.
- ``logloss``: online logloss per prediction (scores joined with clicks). Welch z-test on the difference
  of means, one-sided: fails when canary − stable exceeds ``max_logloss_increase`` and is significantly
  above 0; inconclusive when it exceeds the margin but is not significant (keep waiting).
- ``ctr``: z-test on the click rate of the arms' predictions; fails on a relative drop above
  ``max_ctr_drop`` that is significant; inconclusive when the drop is large but not significant.

The items of one ranked request are not independent (same user, same moment). When the predictions carry
``request_id`` (the gateway logs it), the logloss and CTR tests use cluster-robust standard errors over
requests; without it they treat rows as independent (pooled two-proportion test for CTR).

Label-based checks say "inconclusive" while either arm has fewer than ``min_clicks`` clicks, instead of
guessing from noise. The verdict is ``fail`` if any check fails, else ``inconclusive`` if any check is
inconclusive, else ``pass``. Skipped checks (no data source given, e.g. no stats for latency) do not
count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from freshrec.config import RolloutSettings
from freshrec.rollout.plan import ALL_CHECKS
from freshrec.training.metrics import logloss_rows

Verdict = Literal["pass", "fail", "inconclusive"]
Status = Literal["pass", "fail", "inconclusive", "skipped"]
ARMS = ("stable", "canary")


@dataclass(frozen=True)
class ArmStats:
    """Request counters of one arm (the gateway's ``GET /v1/admin/stats`` or Prometheus)."""

    requests: int = 0
    errors: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArmStats:
        """Accept the gateway's field names (``latency_p99_ms`` or a nested ``latency_ms.p99``)."""
        lat = d.get("latency_ms") or {}
        return cls(
            requests=int(d.get("requests", 0) or 0),
            errors=int(d.get("errors", 0) or 0),
            latency_p50_ms=_opt_float(d.get("latency_p50_ms", lat.get("p50"))),
            latency_p99_ms=_opt_float(d.get("latency_p99_ms", lat.get("p99"))),
        )


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


@dataclass(frozen=True)
class Check:
    """One comparison: the figure for each arm, the threshold, and what was concluded."""

    name: str
    status: Status
    stable: float | None
    canary: float | None
    threshold: float | None
    detail: str
    p_value: float | None = None

    @property
    def passed(self) -> bool | None:
        """True/False when conclusive, None when inconclusive or skipped."""
        return {"pass": True, "fail": False}.get(self.status)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


@dataclass(frozen=True)
class AnalysisResult:
    verdict: Verdict
    checks: list[Check] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        """One line per failed or inconclusive check."""
        return [f"{c.name}: {c.detail}" for c in self.checks if c.status in ("fail", "inconclusive")]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r} in this analysis")

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": self.reasons,
            "checks": [c.to_dict() for c in self.checks],
            "counts": self.counts,
        }


def _norm_sf(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov distance and its asymptotic p-value.

    The p-value uses the Kolmogorov distribution with Stephens' small-sample correction
    (Numerical Recipes ``kstwo``); written here rather than imported because scipy.stats alone takes
    seconds to import in the CLI.
    """
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    d = float(
        np.max(
            np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b))
        )
    )
    en = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 1e-3:
        return d, 1.0
    j = np.arange(1, 101)
    p = float(2 * np.sum((-1.0) ** (j - 1) * np.exp(-2 * j**2 * lam**2)))
    return d, min(max(p, 0.0), 1.0)


def _logloss_rows(frame: pd.DataFrame) -> np.ndarray:
    return logloss_rows(frame["label"].to_numpy(dtype=float), frame["score"].to_numpy(dtype=float))


def check_error_rate(stats: dict[str, ArmStats] | None, s: RolloutSettings) -> Check:
    name, limit = "error_rate", s.max_error_rate
    if not stats or "canary" not in stats:
        return Check(name, "skipped", None, None, limit, "no request stats given")
    st, ca = stats.get("stable", ArmStats()), stats["canary"]
    rate = lambda a: a.errors / a.requests if a.requests else None  # noqa: E731
    sr, cr = rate(st), rate(ca)
    if ca.errors > limit * max(ca.requests, s.min_requests):
        return Check(name, "fail", sr, cr, limit, f"{ca.errors} errors in {ca.requests} canary requests")
    if ca.requests < s.min_requests:
        return Check(
            name,
            "inconclusive",
            sr,
            cr,
            limit,
            f"{ca.requests} canary requests < min_requests {s.min_requests}",
        )
    return Check(name, "pass", sr, cr, limit, f"{ca.errors} errors in {ca.requests} canary requests")


def check_latency(stats: dict[str, ArmStats] | None, s: RolloutSettings) -> Check:
    name, limit = "latency_p99", s.max_p99_latency_ms
    ca = (stats or {}).get("canary")
    if ca is None or ca.latency_p99_ms is None:
        return Check(name, "skipped", None, None, limit, "no canary latency given")
    st = (stats or {}).get("stable")
    sp = st.latency_p99_ms if st else None
    if ca.requests and ca.requests < s.min_requests:
        return Check(
            name, "inconclusive", sp, ca.latency_p99_ms, limit, f"only {ca.requests} canary requests"
        )
    ok = ca.latency_p99_ms <= limit
    rel = "<=" if ok else ">"
    return Check(
        name,
        "pass" if ok else "fail",
        sp,
        ca.latency_p99_ms,
        limit,
        f"canary p99 {ca.latency_p99_ms:.1f} ms {rel} {limit} ms",
    )


def check_score_shift(arms: dict[str, pd.DataFrame], s: RolloutSettings) -> Check:
    name, limit = "score_shift", s.max_score_ks
    st, ca = arms["stable"]["score"].to_numpy(float), arms["canary"]["score"].to_numpy(float)
    if min(len(st), len(ca)) < s.min_predictions:
        return Check(
            name,
            "inconclusive",
            None,
            None,
            limit,
            f"{len(st)} stable / {len(ca)} canary predictions < min_predictions {s.min_predictions}",
        )
    ks, p = ks_2samp(st, ca)
    detail = f"KS {ks:.3f}, mean score {st.mean():.4f} → {ca.mean():.4f}"
    status: Status = "fail" if ks > limit and p < s.alpha else "pass"
    # stable/canary hold the mean scores so a reader sees the direction; the threshold is on KS.
    return Check(name, status, float(st.mean()), float(ca.mean()), limit, detail, p)


def _clicks(frame: pd.DataFrame) -> int:
    return int(frame["label"].sum()) if len(frame) else 0


def mean_and_se(values: np.ndarray, clusters: np.ndarray | None = None) -> tuple[float, float]:
    """Mean of ``values`` and its standard error; cluster-robust when ``clusters`` is given.

    The items of one ranked request share a user and a moment, so their outcomes are correlated; treating
    them as independent understates the error and calls noise significant. With request ids the error
    is the ratio-estimator (cluster) standard error over requests.
    """
    n = len(values)
    mean = float(values.mean())
    if clusters is None:
        return mean, float(math.sqrt(values.var(ddof=1) / n)) if n > 1 else math.inf
    frame = pd.DataFrame({"v": values - mean, "c": clusters})
    resid = frame.groupby("c", sort=False)["v"].sum().to_numpy()
    k = len(resid)
    if k < 2:
        return mean, math.inf
    return mean, float(math.sqrt(k / (k - 1) * np.sum(resid**2)) / n)


def _clusters(frame: pd.DataFrame) -> np.ndarray | None:
    return frame["request_id"].to_numpy() if "request_id" in frame.columns else None


def _one_sided_worse(diff: float, se: float) -> float:
    """p-value of H1 "canary worse by diff > 0" for a normal test statistic."""
    if se == 0:
        return 0.0 if diff > 0 else 1.0
    return _norm_sf(diff / se)


def check_logloss(arms: dict[str, pd.DataFrame], s: RolloutSettings) -> Check:
    """Welch z-test of the canary's mean logloss minus stable's (cluster-robust per request)."""
    name, margin = "logloss", s.max_logloss_increase
    st, ca = arms["stable"], arms["canary"]
    few = _too_few_clicks(st, ca, s)
    if few:
        return Check(name, "inconclusive", None, None, margin, few)
    ms, ses = mean_and_se(_logloss_rows(st), _clusters(st))
    mc, sec = mean_and_se(_logloss_rows(ca), _clusters(ca))
    diff = mc - ms
    p = _one_sided_worse(diff, math.hypot(ses, sec))
    detail = f"logloss {ms:.4f} → {mc:.4f} (Δ {diff:+.4f}, one-sided p {p:.3g})"
    if diff <= margin:
        status: Status = "pass"
    else:
        status = "fail" if p < s.alpha else "inconclusive"
    return Check(name, status, ms, mc, margin, detail, p)


def check_ctr(arms: dict[str, pd.DataFrame], s: RolloutSettings) -> Check:
    """Two-proportion z-test on click rates (pooled), or cluster-robust when request ids are logged."""
    name, max_drop = "ctr", s.max_ctr_drop
    st, ca = arms["stable"], arms["canary"]
    few = _too_few_clicks(st, ca, s)
    if few:
        return Check(name, "inconclusive", None, None, max_drop, few)
    ys, yc = st["label"].to_numpy(dtype=float), ca["label"].to_numpy(dtype=float)
    if _clusters(st) is not None and _clusters(ca) is not None:
        ps, ses = mean_and_se(ys, _clusters(st))
        pc, sec = mean_and_se(yc, _clusters(ca))
        se = math.hypot(ses, sec)
    else:
        ps, pc = float(ys.mean()), float(yc.mean())
        pooled = (ys.sum() + yc.sum()) / (len(ys) + len(yc))
        se = math.sqrt(pooled * (1 - pooled) * (1 / len(ys) + 1 / len(yc)))
    p = _one_sided_worse(ps - pc, se)  # H1: canary CTR lower
    drop = (ps - pc) / ps if ps > 0 else 0.0
    detail = f"CTR {ps:.4f} → {pc:.4f} (relative drop {drop:+.1%}, one-sided p {p:.3g})"
    if drop <= max_drop:
        status: Status = "pass"
    else:
        status = "fail" if p < s.alpha else "inconclusive"
    return Check(name, status, ps, pc, max_drop, detail, p)


def _too_few_clicks(st: pd.DataFrame, ca: pd.DataFrame, s: RolloutSettings) -> str | None:
    cs, cc = _clicks(st), _clicks(ca)
    if min(cs, cc) < s.min_clicks:
        return f"{cs} stable / {cc} canary clicks < min_clicks {s.min_clicks}: keep waiting"
    return None


def split_arms(
    joined: pd.DataFrame, canary_version: int | None = None, stable_version: int | None = None
) -> dict[str, pd.DataFrame]:
    """Split joined predictions into stable/canary frames.

    By ``model_version`` when versions are given (in the cluster the arm is the pod the request reached),
    else by the ``arm`` column the gateway logged.
    """
    if joined is None or len(joined) == 0:
        empty = pd.DataFrame({"score": pd.Series(dtype=float), "label": pd.Series(dtype="int8")})
        return {"stable": empty, "canary": empty}
    if canary_version is not None:
        col = "model_version"
        needed = [col, "score", "label"]
    else:
        col = "arm"
        needed = [col, "score", "label"]
    missing = [c for c in needed if c not in joined.columns]
    if missing:
        raise ValueError(f"joined predictions lack column(s) {missing}; have {list(joined.columns)}")
    rows = joined.dropna(subset=["score", "label"])
    if canary_version is not None:
        versions = rows[col].astype("int64")
        ca = rows[versions == int(canary_version)]
        st = (
            rows[versions == int(stable_version)]
            if stable_version is not None
            else rows[versions != int(canary_version)]
        )
    else:
        ca, st = rows[rows[col] == "canary"], rows[rows[col] == "stable"]
    return {"stable": st, "canary": ca}


def analyze(
    joined_predictions: pd.DataFrame | None,
    arm_stats: dict[str, ArmStats | dict[str, Any]] | None,
    rollout_settings: RolloutSettings,
    checks: tuple[str, ...] | list[str] = ALL_CHECKS,
    *,
    canary_version: int | None = None,
    stable_version: int | None = None,
) -> AnalysisResult:
    """Compare canary with stable.

    Args:
        joined_predictions: predictions joined with clicks (``predlog.join_clicks``): columns ``arm``
            (or ``model_version`` with ``canary_version``), ``score``, ``label``.
        arm_stats: per arm (``"stable"``, ``"canary"``) request counters, as :class:`ArmStats` or the
            gateway's stats dicts; None skips the error and latency checks.
        rollout_settings: thresholds.
        checks: which checks to run (a plan's analysis step may choose a subset).
        canary_version / stable_version: split by model version instead of the ``arm`` column.
    """
    unknown = set(checks) - set(ALL_CHECKS)
    if unknown:
        raise ValueError(f"unknown analysis check(s) {sorted(unknown)}; known: {list(ALL_CHECKS)}")
    stats = None
    if arm_stats is not None:
        stats = {k: v if isinstance(v, ArmStats) else ArmStats.from_dict(v) for k, v in arm_stats.items()}
    arms = split_arms(joined_predictions, canary_version, stable_version)
    runners = {
        "error_rate": lambda: check_error_rate(stats, rollout_settings),
        "latency_p99": lambda: check_latency(stats, rollout_settings),
        "score_shift": lambda: check_score_shift(arms, rollout_settings),
        "logloss": lambda: check_logloss(arms, rollout_settings),
        "ctr": lambda: check_ctr(arms, rollout_settings),
    }
    results = [runners[name]() for name in ALL_CHECKS if name in checks]
    statuses = {c.status for c in results}
    verdict: Verdict
    if "fail" in statuses:
        verdict = "fail"
    elif "inconclusive" in statuses or not statuses - {"skipped"}:
        # Nothing measured at all is not a pass.
        verdict = "inconclusive"
    else:
        verdict = "pass"
    counts = {arm: {"predictions": len(arms[arm]), "clicks": _clicks(arms[arm])} for arm in ARMS}
    if stats:
        for arm in ARMS:
            if arm in stats:
                counts[arm].update(requests=stats[arm].requests, errors=stats[arm].errors)
    return AnalysisResult(verdict, results, counts)


# --- Prometheus (cluster mode) ---------------------------------------------------------------------

_SELECTOR = 'namespace="{ns}",model_name="{model}",rollouts_pod_template_hash="{hash}"'
PROMETHEUS_QUERIES = {
    "requests": "sum(increase(:tensorflow:serving:request_count{{{sel}}}[{window}]))",
    "errors": 'sum(increase(:tensorflow:serving:request_count{{{sel},status!="OK"}}[{window}]))',
    # TF Serving records latency in microseconds.
    "latency_p99_ms": (
        "histogram_quantile(0.99, sum by (le) "
        "(rate(:tensorflow:serving:request_latency_bucket{{{sel}}}[{window}]))) / 1000"
    ),
}


def prometheus_arm_stats(
    url: str,
    *,
    canary_hash: str,
    stable_hash: str,
    namespace: str,
    model: str = "ctr",
    window: str = "10m",
    timeout_s: float = 10.0,
) -> dict[str, ArmStats]:
    """Per-arm request counters of the TF Serving pods, from Prometheus' instant-query API.

    The arms are told apart by the pods' ``rollouts_pod_template_hash`` label (the ServiceMonitor copies
    it), as in the ``ctr-serving-latency-errors`` AnalysisTemplate.

    Raises:
        RuntimeError: Prometheus answered with an error.
    """
    import requests

    out = {}
    for arm, pod_hash in (("stable", stable_hash), ("canary", canary_hash)):
        sel = _SELECTOR.format(ns=namespace, model=model, hash=pod_hash)
        values: dict[str, float | None] = {}
        for key, template in PROMETHEUS_QUERIES.items():
            query = template.format(sel=sel, window=window)
            resp = requests.get(f"{url.rstrip('/')}/api/v1/query", params={"query": query}, timeout=timeout_s)
            body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
            if resp.status_code >= 400 or body.get("status") != "success":
                raise RuntimeError(
                    f"Prometheus query failed ({resp.status_code}): {body.get('error', resp.text)}: {query}"
                )
            result = body["data"]["result"]
            value = float(result[0]["value"][1]) if result else None
            values[key] = None if value is None or math.isnan(value) else value
        out[arm] = ArmStats(
            requests=round(values["requests"] or 0),
            errors=round(values["errors"] or 0),
            latency_p99_ms=values["latency_p99_ms"],
        )
    return out
