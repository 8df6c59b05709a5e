"""Anomaly screening before the online learner: each micro-batch gets a verdict before it is learned.

The export guard (:mod:`freshrec.online.guard`) judges a *model* after it has learned; screening judges the
*data* before it is learned, so a poisoned batch never moves the weights at all. Each batch that passed
validation is compared with the recent reference (the statistics of the last ``reference_batches`` batches
that were learned):

- ``label_rate``: the batch's click rate against the reference's (robust z: median and MAD of the
  reference batches' rates, with a floor on the scale);
- ``score_shift``: the serving version's mean score on the batch against the reference's mean scores;
- ``serving_logloss`` / ``serving_auc``: how surprising the batch's labels are to the serving version (a
  label flip makes the served model rank the batch worse than chance);
- ``label_drift``: a one-sided CUSUM over consecutive batches of their label disagreement with the serving
  version (the serving AUC's robust-z deficit plus the serving logloss's robust-z excess, over sqrt 2). A
  label flip from a point on is persistent but single batches of it overlap clean ones (one person rating
  a whole batch: on the MovieLens replay flipped batches reach AUC 0.58, clean ones fall to 0.50); the
  CUSUM holds the first flipped batch (its deficit alone passes the limit) and keeps holding while the
  evidence stays, batches too small for the other tests included. A batch failing a test that is not about
  its labels (a bot, duplicates, a broken feature) does not feed it: that anomaly explains its labels. An
  operator's release resets it;
- ``entity_tail_clicks``: per user with many events in the batch, the binomial tail probability of its
  clicks on long-tail items (popularity at most the reference's 10th percentile) at the reference's rate of
  such clicks. A bot clicking every item clicks the catalogue's tail, which people rarely click (about 4% of
  events on MovieLens; the injected bot: half of its 128). Click *rate* alone does not separate a bot from
  a person: on the MovieLens replay one person clicks 128 of 132 items in a batch after 131 of 298 before;
- ``entity_share``: the share of the batch's events from its three most active users (on MovieLens a
  person rates a whole batch alone, so this one only catches what is far outside the reference);
- ``duplicate_share``: the share of events repeating an earlier event's (user, item, time) under another
  ``event_id`` (a replay keeps its ``event_id`` and is dropped by the seen-set before screening);
- ``feature_range``: the share of rows with a numeric model input outside the reference's range, widened
  by ``range_margin`` of its width.

A batch that fails any test is *held*: written with its verdict under ``<state dir>/held/<batch id>/``
before the learner commits the source positions (so it is never lost), not learned, and not added to the
reference. ``freshrec online held`` lists held batches; ``freshrec online release`` marks them to be learned
(the learner picks them up at its next step and adds them to the reference: after a real shift, releasing
lets the reference follow it); ``freshrec online drop`` deletes them with a reason kept in ``dropped.jsonl``.
Until ``min_reference_batches`` batches were learned only the absolute tests (duplicates) apply.

No multivariate (isolation-forest) score: on the MovieLens replay the per-test verdicts already hold every
injected batch and no clean one (``benchmarks/bench_update_loop.py``), so a further score could only add
false holds.

Each test's threshold is ``max_robust_z`` unless ``max_robust_z_by_test`` overrides it (``score_shift``:
10, since a batch rated by one person the model knows to dislike most films is 7.5 robust sd low).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from freshrec.config import ScreeningSettings
from freshrec.io import atomic_directory, atomic_write_json
from freshrec.training.metrics import auc, logloss

log = logging.getLogger(__name__)

TESTS = (
    "label_rate",
    "score_shift",
    "serving_logloss",
    "serving_auc",
    "entity_share",
    "duplicate_share",
    "feature_range",
    "label_drift",
    "entity_tail_clicks",
)
# Robust-z tests: (statistic, side); "upper" holds only large values, "lower" only small ones.
# Tests of the labels against the serving version: a batch failing any *other* test (a bot, duplicates, a
# broken feature) does not feed the label_drift CUSUM, its labels are explained by that anomaly.
_LABEL_TESTS = {"label_rate", "serving_logloss", "serving_auc", "label_drift"}
_Z_TESTS = {
    "label_rate": ("label_rate", "both"),
    "score_shift": ("mean_score", "both"),
    "serving_logloss": ("serving_logloss", "upper"),
    "serving_auc": ("serving_auc", "lower"),
    "entity_share": ("entity_share", "upper"),
}
RELEASED_MARK = "RELEASED"


@dataclass
class TestResult:
    """One screening test of one batch."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str = ""


@dataclass
class Verdict:
    """The screening verdict of one batch."""

    batch_id: str
    held: bool
    events: int
    first_event_time: str | None
    last_event_time: str | None
    tests: dict[str, TestResult] = field(default_factory=dict)
    stats: dict[str, float | None] = field(default_factory=dict)
    screened_at: float = field(default_factory=time.time)

    @property
    def reasons(self) -> list[str]:
        """Messages of the failed tests."""
        return [t.message for t in self.tests.values() if not t.passed]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = self.reasons
        return out


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def binomial_log10_sf(k: int, n: int, p: float) -> float:
    """log10 P(X >= k) for X ~ Binomial(n, p) (exact, summed in log space)."""
    if k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    p = min(max(p, 1e-12), 1 - 1e-12)
    lp, lq = math.log(p), math.log1p(-p)
    lg = math.lgamma(n + 1)
    terms = [
        lg - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in range(k, n + 1)
    ]
    m = max(terms)
    return (m + math.log(sum(math.exp(t - m) for t in terms))) / math.log(10)


def _key_hashes(events: pd.DataFrame, columns: list[str]) -> np.ndarray:
    return pd.util.hash_pandas_object(events[columns].astype(str), index=False).to_numpy(np.uint64)


def batch_stats(events: pd.DataFrame, scores: np.ndarray | None, label: str = "label") -> dict[str, float]:
    """The screening statistics of one batch (``scores``: the serving version's probabilities)."""
    y = pd.to_numeric(events[label], errors="coerce").to_numpy(np.float64)
    stats: dict[str, float] = {"events": float(len(events)), "label_rate": float(np.nanmean(y))}
    counts = events["user_id"].astype(str).value_counts()
    stats["entity_share"] = float(counts.iloc[:3].sum() / max(1, len(events)))
    if scores is not None and len(scores) == len(events):
        stats["mean_score"] = float(np.mean(scores))
        stats["serving_logloss"] = logloss(y, scores)
        stats["serving_auc"] = auc(y, scores)
    return stats


class HeldStore:
    """Held batches on disk (``root`` None: in memory, for benchmarks): events + verdict per batch."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root is not None else None
        self._memory: OrderedDict[str, tuple[pd.DataFrame, dict[str, Any], bool]] = OrderedDict()
        self._dropped = 0

    def put(self, events: pd.DataFrame, verdict: Verdict) -> None:
        """Keep a held batch (durably, before the learner commits its source positions)."""
        if self.root is None:
            self._memory[verdict.batch_id] = (events, verdict.to_dict(), False)
            return
        with atomic_directory(self.root / verdict.batch_id) as tmp:
            events.to_parquet(tmp / "events.parquet", index=False)
            (tmp / "verdict.json").write_text(json.dumps(verdict.to_dict(), default=str))

    def list(self) -> list[dict[str, Any]]:
        """Every held batch's verdict (with ``released``), oldest first."""
        if self.root is None:
            return [{**v, "released": r} for _, v, r in self._memory.values()]
        out = []
        if self.root.is_dir():
            for d in sorted(self.root.iterdir()):
                if d.is_dir() and not d.name.startswith(".") and (d / "verdict.json").is_file():
                    v = json.loads((d / "verdict.json").read_text())
                    out.append({**v, "released": (d / RELEASED_MARK).is_file()})
        return sorted(out, key=lambda v: v.get("screened_at", 0.0))

    def _resolve(self, batch_ids: list[str] | None) -> list[str]:
        known = [v["batch_id"] for v in self.list()]
        if batch_ids is None:
            return known
        unknown = [b for b in batch_ids if b not in known]
        if unknown:
            raise KeyError(f"no held batch {', '.join(unknown)} (held: {', '.join(known) or 'none'})")
        return list(batch_ids)

    def release(self, batch_ids: list[str] | None = None) -> list[str]:
        """Mark held batches to be learned at the learner's next step (None: all); returns their ids.

        Raises:
            KeyError: an id is not a held batch.
        """
        ids = self._resolve(batch_ids)
        for b in ids:
            if self.root is None:
                ev, v, _ = self._memory[b]
                self._memory[b] = (ev, v, True)
            else:
                (self.root / b / RELEASED_MARK).write_text(str(time.time()))
        return ids

    def drop(self, batch_ids: list[str] | None = None, reason: str = "") -> list[str]:
        """Delete held batches for good (None: all), keeping a line per batch in ``dropped.jsonl``.

        Raises:
            KeyError: an id is not a held batch.
        """
        ids = self._resolve(batch_ids)
        verdicts = {v["batch_id"]: v for v in self.list()}
        for b in ids:
            line = {
                "batch_id": b,
                "events": verdicts[b]["events"],
                "reasons": verdicts[b]["reasons"],
                "dropped_at": time.time(),
                "reason": reason,
            }
            if self.root is None:
                del self._memory[b]
                self._dropped += 1
                continue
            with open(self.root / "dropped.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line, default=str) + "\n")
            shutil.rmtree(self.root / b)
        return ids

    def dropped(self) -> int:
        """How many batches operators dropped."""
        if self.root is None or not (self.root / "dropped.jsonl").is_file():
            return self._dropped
        return sum(1 for line in (self.root / "dropped.jsonl").read_text().splitlines() if line.strip())

    def take_released(self) -> list[tuple[pd.DataFrame, dict[str, Any]]]:
        """Remove and return the released batches (events, verdict), oldest first."""
        out = []
        for v in self.list():
            if not v["released"]:
                continue
            b = v["batch_id"]
            if self.root is None:
                out.append(self._memory.pop(b)[:2])
            else:
                out.append((pd.read_parquet(self.root / b / "events.parquet"), v))
        return out

    def forget(self, batch_id: str) -> None:
        """Delete a released batch once the learner has learned it."""
        if self.root is not None:
            shutil.rmtree(self.root / batch_id, ignore_errors=True)


class Screener:
    """Screening verdicts against the recent reference, with held batches kept in a :class:`HeldStore`.

    Args:
        settings: ``settings.online.screening``.
        state_dir: where ``screening.json`` (reference, counters) and ``held/`` live (None: in memory).
        metrics_path: a Prometheus textfile rewritten after each verdict (None: no textfile).
        model: the model name (the metrics' label).
        log_features: numeric inputs range-checked on the ``log1p`` scale (the counts the model itself
            takes the ``log1p`` of: a heavy user's event count doubling is not a broken feature).
    """

    def __init__(
        self,
        settings: ScreeningSettings,
        state_dir: Path | None = None,
        metrics_path: Path | None = None,
        model: str = "model",
        log_features: Iterable[str] = (),
    ) -> None:
        self.settings = settings
        self.log_features = sorted(set(log_features))
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.metrics_path = metrics_path
        self.model = model
        self.held = HeldStore(self.state_dir / "held" if self.state_dir is not None else None)
        self.reference: deque[dict[str, float]] = deque(maxlen=max(1, settings.reference_batches))
        self.ranges: deque[dict[str, tuple[float, float]]] = deque(maxlen=max(1, settings.reference_batches))
        # (popularity, label) samples of the reference batches' events, for the long-tail click test.
        self.tail_samples: deque[list[list[float]]] = deque(maxlen=max(1, settings.reference_batches))
        self.drift = 0.0  # the label_drift CUSUM
        # (user, item, time) hash -> event_id hash of recent events: a repeat under another id is a duplicate.
        self.recent_keys: OrderedDict[int, int] = OrderedDict()
        self.counters: dict[str, int] = {
            "batches_screened": 0,
            "batches_held": 0,
            "events_held": 0,
            "batches_released": 0,
            "events_released": 0,
        }
        self.holds_by_test: dict[str, int] = dict.fromkeys(TESTS, 0)
        self.verdicts: deque[dict[str, Any]] = deque(maxlen=200)  # the newest held verdicts, for the report
        # The batch just screened, until the learner says whether it learned or held it.
        self._pending: tuple[pd.DataFrame, pd.DataFrame | None, list[str] | None, dict[str, float]] | None = (
            None
        )
        self._pending_drift: float | None = None
        self.restore()

    # ------------------------------------------------------------------------------------------ verdicts
    def screen(
        self,
        events: pd.DataFrame,
        frame: pd.DataFrame | None = None,
        scores: np.ndarray | None = None,
        numeric: list[str] | None = None,
    ) -> Verdict:
        """The verdict of one batch (does not hold or learn it; see :meth:`hold` and :meth:`accept`).

        Args:
            events: the validated, deduplicated events of the batch.
            frame: their model feature rows (for the range test), in the same order.
            scores: the serving version's probabilities for those rows.
            numeric: the numeric model inputs of ``frame`` to range-check.
        """
        s = self.settings
        ts = events["event_timestamp"] if "event_timestamp" in events.columns else None
        verdict = Verdict(
            batch_id=f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}",
            held=False,
            events=len(events),
            first_event_time=str(ts.min()) if ts is not None and len(ts) else None,
            last_event_time=str(ts.max()) if ts is not None and len(ts) else None,
        )
        self.counters["batches_screened"] += 1
        if not len(events):
            return verdict
        stats = batch_stats(events, scores)
        stats["duplicate_share"] = self._duplicate_share(events)
        verdict.stats = {k: _finite(v) for k, v in stats.items()}
        tests = verdict.tests
        dup = stats["duplicate_share"]
        tests["duplicate_share"] = TestResult(
            "duplicate_share",
            dup <= s.max_duplicate_share,
            dup,
            s.max_duplicate_share,
            f"{dup:.1%} of the batch repeats earlier events under new event ids "
            f"(at most {s.max_duplicate_share:.1%})",
        )
        reference_warm = len(self.reference) >= s.min_reference_batches
        warm = reference_warm and len(events) >= s.min_batch_events
        self._pending_drift = None
        if warm:
            for name, (stat, side) in _Z_TESTS.items():
                tests[name] = self._z_test(name, stat, side, stats.get(stat))
            if frame is not None and numeric:
                tests["feature_range"] = self._range_test(frame, numeric)
            tail = self._tail_test(events, frame)
            if tail is not None:
                tests["entity_tail_clicks"] = tail
            tests["label_drift"] = self._drift_test(tests["serving_auc"], tests["serving_logloss"], stats)
            if not all(t.passed for n, t in tests.items() if n not in _LABEL_TESTS):
                self._pending_drift = None
        elif reference_warm and self.drift > s.drift_limit:
            # Too small a batch to judge on its own, while the stream's labels disagree with the serving
            # version: held with the rest (a flip's last, short batch must not slip through).
            tests["label_drift"] = TestResult(
                "label_drift",
                False,
                self.drift,
                s.drift_limit,
                f"label drift alarm: CUSUM of serving-AUC deficits {self.drift:.1f} (limit {s.drift_limit:g}) "
                f"from earlier batches; this batch of {len(events)} events is too small to clear it",
            )
        verdict.held = not all(t.passed for t in tests.values())
        self._pending = (events, frame, numeric, stats)
        return verdict

    def _drift_test(self, auc_test: TestResult, ll_test: TestResult, stats: dict[str, float]) -> TestResult:
        """The CUSUM of the batch's label disagreement: the serving AUC's robust-z deficit and the serving
        logloss's robust-z excess, summed over sqrt(2)."""
        s = self.settings
        parts = [
            sign * float(t.value)
            for t, sign in ((auc_test, -1.0), (ll_test, 1.0))
            if t.threshold is not None and t.value is not None
        ]
        if not parts:
            return TestResult("label_drift", self.drift <= s.drift_limit, self.drift, s.drift_limit, "")
        # Stouffer's sum of the two (a flip moves both; a clean batch one person rates mostly moves one).
        deficit = sum(parts) / math.sqrt(len(parts))
        new = min(s.drift_cap, max(0.0, self.drift + deficit - s.drift_allowance))
        self._pending_drift = new
        return TestResult(
            "label_drift",
            new <= s.drift_limit,
            new,
            s.drift_limit,
            f"labels disagree with the serving version: CUSUM of label-disagreement deficits {new:.1f} (limit "
            f"{s.drift_limit:g}; this batch's serving AUC {stats.get('serving_auc', float('nan')):.3f}, "
            f"logloss {stats.get('serving_logloss', float('nan')):.3f}: {deficit:+.1f} robust sd)",
        )

    def _tail_test(self, events: pd.DataFrame, frame: pd.DataFrame | None) -> TestResult | None:
        s = self.settings
        col = s.popularity_feature
        if frame is None or col not in frame.columns or len(frame) != len(events):
            return None
        ref = [pair for batch in self.tail_samples for pair in batch]
        if len(self.tail_samples) < s.min_reference_batches or not ref:
            return None
        arr = np.asarray(ref, dtype=np.float64)
        cut = float(np.quantile(arr[:, 0], s.tail_quantile))
        base = max(float(np.mean((arr[:, 0] <= cut) & (arr[:, 1] > 0))), 0.5 / len(arr))
        pop = pd.to_numeric(frame[col], errors="coerce").to_numpy(np.float64)
        y = pd.to_numeric(events["label"], errors="coerce").to_numpy(np.float64)
        tail_click = (pop <= cut) & (y > 0)
        users = events["user_id"].astype(str).to_numpy()
        worst, worst_p, worst_n, worst_c = None, 0.0, 0, 0
        counts = pd.Series(tail_click.astype(np.int64)).groupby(users).agg(["size", "sum"])
        for user, (n, c) in counts[counts["size"] >= s.min_entity_events].iterrows():
            lp = binomial_log10_sf(int(c), int(n), base)
            if lp < worst_p:
                worst, worst_p, worst_n, worst_c = user, lp, int(n), int(c)
        value = -worst_p
        return TestResult(
            "entity_tail_clicks",
            value <= s.max_entity_log10_p,
            float(value) if math.isfinite(value) else 1e9,
            s.max_entity_log10_p,
            f"user {worst}: {worst_c} of its {worst_n} events are clicks on long-tail items ({col} <= "
            f"{cut:g}; reference rate {base:.1%}): p = 1e{worst_p:.0f} (limit 1e-{s.max_entity_log10_p:g})",
        )

    def _z_test(self, name: str, stat: str, side: str, value: float | None) -> TestResult:
        s = self.settings
        ref = np.array([r[stat] for r in self.reference if _finite(r.get(stat)) is not None], dtype=float)
        if value is None or not math.isfinite(value) or len(ref) < s.min_reference_batches:
            return TestResult(name, True, _finite(value), None, "")
        med = float(np.median(ref))
        scale = max(1.4826 * float(np.median(np.abs(ref - med))), s.min_scale.get(stat, 0.01))
        z = (value - med) / scale
        limit = s.max_robust_z_by_test.get(name, s.max_robust_z)
        bad = (side in ("both", "upper") and z > limit) or (side in ("both", "lower") and z < -limit)
        return TestResult(
            name,
            not bad,
            float(z),
            limit,
            f"{stat} {value:.4g} is {z:+.1f} robust sd from the reference's {med:.4g} (limit {limit:g})",
        )

    def _range_test(self, frame: pd.DataFrame, numeric: list[str]) -> TestResult:
        s = self.settings
        cols = [c for c in numeric if c in frame.columns]
        ranges: dict[str, tuple[float, float]] = {}
        for r in self.ranges:
            for c, (lo, hi) in r.items():
                a, b = ranges.get(c, (lo, hi))
                ranges[c] = (min(a, lo), max(b, hi))
        outside = np.zeros(len(frame), dtype=bool)
        worst, worst_n = "", 0
        for c in cols:
            if c not in ranges:
                continue
            lo, hi = ranges[c]
            margin = s.range_margin * max(hi - lo, 1e-9)
            x = self._range_values(frame, c)
            bad = ~np.isfinite(x) | (x < lo - margin) | (x > hi + margin)
            if int(bad.sum()) > worst_n:
                worst, worst_n = c, int(bad.sum())
            outside |= bad
        share = float(outside.mean()) if len(outside) else 0.0
        return TestResult(
            "feature_range",
            share <= s.max_out_of_range_share,
            share,
            s.max_out_of_range_share,
            f"{share:.1%} of the rows have a model input outside the reference range (e.g. {worst}; "
            f"at most {s.max_out_of_range_share:.1%})",
        )

    def _range_values(self, frame: pd.DataFrame, column: str) -> np.ndarray:
        x = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)
        return np.log1p(np.maximum(x, 0.0)) if column in self.log_features else x

    def _duplicate_share(self, events: pd.DataFrame) -> float:
        cols = [c for c in ("user_id", "item_id", "event_timestamp") if c in events.columns]
        if len(cols) < 2:
            return 0.0
        keys = _key_hashes(events, cols)
        ids = (
            _key_hashes(events, ["event_id"])
            if "event_id" in events.columns
            else np.arange(len(events), dtype=np.uint64)
        )
        seen: dict[int, int] = {}
        dup = 0
        for k, i in zip(keys.tolist(), ids.tolist(), strict=True):
            prev = seen.get(k, self.recent_keys.get(k))
            if prev is not None and prev != i:
                dup += 1
            seen.setdefault(k, i)
        return dup / max(1, len(events))

    # ------------------------------------------------------------------------------------------ outcomes
    def accept(self, verdict: Verdict) -> None:
        """The batch of ``verdict`` (just screened) is learned: it joins the reference."""
        pending = self._pending
        if pending is None:
            return
        events, frame, numeric, stats = pending
        self._pending = None
        self._commit_drift()
        self._add_to_reference(events, frame, numeric, stats)
        self.save()

    def _commit_drift(self) -> None:
        # The CUSUM follows the stream: a held batch's evidence counts as much as a learned one's.
        if self._pending_drift is not None:
            self.drift = self._pending_drift
            self._pending_drift = None

    def hold(self, verdict: Verdict) -> None:
        """Keep the batch of ``verdict`` (just screened) with its reasons; it is not learned."""
        if self._pending is None:
            raise RuntimeError("hold() without a batch just screened")
        events = self._pending[0]
        self._pending = None
        self._commit_drift()
        self.held.put(events, verdict)
        self.counters["batches_held"] += 1
        self.counters["events_held"] += len(events)
        for name, t in verdict.tests.items():
            if not t.passed:
                self.holds_by_test[name] += 1
        self.verdicts.append(verdict.to_dict())
        log.warning(
            "held batch %s (%d events): %s", verdict.batch_id, len(events), "; ".join(verdict.reasons)
        )
        self.save()

    def released(self) -> list[tuple[pd.DataFrame, dict[str, Any]]]:
        """Released batches to learn now (the learner calls :meth:`learned_released` after each)."""
        return self.held.take_released()

    def learned_released(
        self,
        events: pd.DataFrame,
        verdict: dict[str, Any],
        frame: pd.DataFrame | None = None,
        scores: np.ndarray | None = None,
        numeric: list[str] | None = None,
    ) -> None:
        """A released batch was learned: it joins the reference (the operator said it is the new normal)."""
        stats = batch_stats(events, scores)
        self._add_to_reference(events, frame, numeric, stats)
        self.drift = 0.0  # the operator judged the held data: the drift evidence starts again
        self.held.forget(verdict["batch_id"])
        self.counters["batches_released"] += 1
        self.counters["events_released"] += len(events)
        self.save()

    def _add_to_reference(
        self,
        events: pd.DataFrame,
        frame: pd.DataFrame | None,
        numeric: list[str] | None,
        stats: dict[str, float],
    ) -> None:
        if len(events) >= self.settings.min_batch_events:
            self.reference.append({k: v for k, v in stats.items() if _finite(v) is not None})
            if frame is not None and numeric:
                r = {}
                for c in numeric:
                    if c in frame.columns and len(frame):
                        x = self._range_values(frame, c)
                        x = x[np.isfinite(x)]
                        if len(x):
                            r[c] = (float(x.min()), float(x.max()))
                self.ranges.append(r)
            col = self.settings.popularity_feature
            if frame is not None and col in frame.columns and len(frame) == len(events):
                pop = pd.to_numeric(frame[col], errors="coerce").to_numpy(np.float64)
                y = pd.to_numeric(events["label"], errors="coerce").to_numpy(np.float64)
                keep = np.isfinite(pop) & np.isfinite(y)
                idx = np.flatnonzero(keep)
                step = max(1, len(idx) // self.settings.tail_samples_per_batch)
                idx = idx[::step][: self.settings.tail_samples_per_batch]
                self.tail_samples.append([[float(pop[i]), float(y[i])] for i in idx])
        cols = [c for c in ("user_id", "item_id", "event_timestamp") if c in events.columns]
        if len(cols) >= 2 and len(events):
            keys = _key_hashes(events, cols).tolist()
            ids = (
                _key_hashes(events, ["event_id"]).tolist()
                if "event_id" in events.columns
                else [0] * len(keys)
            )
            for k, i in zip(keys, ids, strict=True):
                self.recent_keys.setdefault(k, i)
            while len(self.recent_keys) > self.settings.recent_keys:
                self.recent_keys.popitem(last=False)

    # ------------------------------------------------------------------------------------------ state
    def summary(self) -> dict[str, Any]:
        """Counters, holds per test, currently held batches and the newest held verdicts (JSON-able)."""
        held = self.held.list()
        return {
            **self.counters,
            "held_now": len(held),
            "held_events_now": int(sum(v["events"] for v in held)),
            "batches_dropped": self.held.dropped(),
            "holds_by_test": dict(self.holds_by_test),
            "held": [
                {k: v.get(k) for k in ("batch_id", "events", "first_event_time", "reasons", "released")}
                for v in held
            ],
            "recent_verdicts": list(self.verdicts)[-20:],
        }

    def save(self) -> None:
        """Write ``screening.json`` and the metrics textfile (when this screener has a state dir)."""
        if self.metrics_path is not None:
            from freshrec.monitoring.prometheus import record_screening, write_textfile

            write_textfile(record_screening(self.summary(), self.model), self.metrics_path)
        if self.state_dir is None:
            return
        state = {
            "reference": list(self.reference),
            "ranges": [{c: list(v) for c, v in r.items()} for r in self.ranges],
            "log_features": self.log_features,
            "recent_keys": [[int(k), int(v)] for k, v in self.recent_keys.items()],
            "tail_samples": list(self.tail_samples),
            "drift": self.drift,
            "counters": self.counters,
            "holds_by_test": self.holds_by_test,
            "verdicts": list(self.verdicts),
        }
        atomic_write_json(self.state_dir / "screening.json", state, indent=None)

    def restore(self) -> None:
        """Load ``screening.json`` when there is one (a learner restarting keeps its reference)."""
        path = self.state_dir / "screening.json" if self.state_dir is not None else None
        if path is None or not path.is_file():
            return
        state = json.loads(path.read_text())
        self.reference.extend(state.get("reference", []))
        if state.get("log_features", []) == self.log_features:  # else: ranges on another scale, relearned
            self.ranges.extend({c: (v[0], v[1]) for c, v in r.items()} for r in state.get("ranges", []))
        self.recent_keys = OrderedDict((int(k), int(v)) for k, v in state.get("recent_keys", []))
        self.tail_samples.extend(state.get("tail_samples", []))
        self.drift = float(state.get("drift", 0.0))
        self.counters.update(state.get("counters", {}))
        self.holds_by_test.update(state.get("holds_by_test", {}))
        self.verdicts.extend(state.get("verdicts", []))


def held_store(settings: Any) -> HeldStore:
    """The held batches of ``settings``' model (the directory the online learner holds them in)."""
    return HeldStore(screening_dir(settings) / "held")


def screening_dir(settings: Any) -> Path:
    """Where the online learner of ``settings.model.name`` keeps its screening state."""
    return settings.state_dir / "online" / settings.model.name / "screening"


def metrics_textfile(settings: Any) -> Path:
    """The screening metrics textfile (node-exporter textfile-collector format)."""
    return settings.state_dir / "metrics" / f"freshrec_screening_{settings.model.name}.prom"
