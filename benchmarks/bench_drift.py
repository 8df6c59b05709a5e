"""Drift check at scale: freshrec.monitoring.drift.check_drift against Evidently's default DataDriftPreset.

Synthetic data: N reference x N current rows x 20 columns (12 numeric, 8 categorical; 8 drifted, one of
them right at the threshold), N = 1M (100k with --quick). Both run on the same frames in the same
process tree, each in a forked child so that the peak RSS of each is measured separately (it includes
the input frames, which both share). Evidently is imported before timing for both.

Also the real MovieLens-100k windows: first 80% vs last 20% by time, on the training-set features.
Figures: wall time of freshrec (cold: profile built; warm: profile cached per model version), the
Evidently baseline, their ratio, peak RSS, and how many per-column drift verdicts agree.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.results import Row, main_for

REPO = Path(__file__).resolve().parents[1]
DATASETS = (REPO / ".." / "shared" / "datasets").resolve()


def synthetic(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, set[str]]:
    """Reference and current frames; returns the names of the columns with injected drift."""
    rng = np.random.default_rng(seed)

    def cats(k: int, p: np.ndarray | None, size: int) -> np.ndarray:
        names = np.array([f"c{i:03d}" for i in range(k)], dtype=object)
        return names[rng.choice(k, size=size, p=p)]

    def zipf(k: int, a: float) -> np.ndarray:
        w = 1.0 / np.arange(1, k + 1) ** a
        return w / w.sum()

    frames = []
    for current in (False, True):
        d = current  # drift switch
        with_nan = rng.normal(10, 2, n)
        with_nan[rng.random(n) < 0.01] = np.nan
        frames.append(
            pd.DataFrame(
                {
                    "num_normal": rng.normal(0, 1, n),
                    "num_normal_shift": rng.normal(0.5 if d else 0, 1, n),
                    "num_lognormal": rng.lognormal(0, 1, n),
                    "num_lognormal_scale": rng.lognormal(0.4 if d else 0, 1, n),
                    "num_exponential": rng.exponential(2, n),
                    "num_uniform": rng.uniform(0, 1, n),
                    "num_uniform_shift": rng.uniform(0.2 if d else 0, 1.2 if d else 1, n),
                    "num_normal_small_shift": rng.normal(0.03 if d else 0, 1, n),
                    "num_poisson": rng.poisson(3, n).astype(np.int64),
                    "num_poisson_shift": rng.poisson(4 if d else 3, n).astype(np.int64),
                    "num_with_nan": with_nan,
                    "num_borderline": rng.normal(0.1 if d else 0, 1, n),  # W/std ~ 0.1 = the threshold
                    "cat_5": cats(5, None, n),
                    "cat_5_shift": cats(5, np.array([0.4, 0.3, 0.1, 0.1, 0.1]) if d else None, n),
                    "cat_zipf50": cats(50, zipf(50, 1.1), n),
                    "cat_zipf50_shift": cats(50, zipf(50, 0.5 if d else 1.1), n),
                    "cat_200": cats(200, None, n),
                    "cat_3_small": cats(3, np.array([0.36, 0.33, 0.31]) if d else None, n),
                    "int_small": rng.integers(0, 5, n),
                    "int_small_shift": rng.choice(5, n, p=[0.4, 0.3, 0.1, 0.1, 0.1] if d else None),
                }
            )
        )
    drifted = {
        "num_normal_shift",
        "num_lognormal_scale",
        "num_uniform_shift",
        "num_poisson_shift",
        "cat_5_shift",
        "cat_zipf50_shift",
        "int_small_shift",
    }
    return frames[0], frames[1], drifted  # num_borderline sits on the threshold: in neither set


def _in_child(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn`` in a forked child; return its result, its peak RSS in MB and its CPU seconds."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            payload = pickle.dumps(("ok", fn()))
        except BaseException as exc:  # report, never fall through into the parent's code
            payload = pickle.dumps(("error", repr(exc)))
        with os.fdopen(write_fd, "wb") as fh:
            fh.write(payload)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    _, _, usage = os.wait4(pid, 0)
    status, value = pickle.loads(data)
    if status != "ok":
        raise RuntimeError(f"benchmark child failed: {value}")
    return value, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime


def _evidently_default(ref: pd.DataFrame, cur: pd.DataFrame) -> dict[str, Any]:
    from evidently import Dataset, Report
    from evidently.presets import DataDriftPreset

    t0 = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur), Dataset.from_pandas(ref))
    seconds = time.perf_counter() - t0
    verdicts: dict[str, bool] = {}
    methods: dict[str, str] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if not str(config.get("type", "")).endswith(":ValueDrift"):
            continue
        column, value = config["column"], float(metric["value"])
        method, threshold = config.get("method"), config.get("threshold")
        methods[column] = str(method)
        p_value = "p_value" in str(method).lower() or method in {"ks", "chisquare", "z"}
        verdicts[column] = value < threshold if p_value else value >= threshold
    return {"seconds": seconds, "verdicts": verdicts, "methods": methods}


def _freshrec(ref: pd.DataFrame, cur: pd.DataFrame, out_dir: Path, cache_dir: Path) -> dict[str, Any]:
    from freshrec.config import DriftSettings
    from freshrec.monitoring.drift import check_drift

    settings = DriftSettings(score_column=None, target_column=None)
    t0 = time.perf_counter()
    cold = check_drift(ref, cur, None, settings, out_dir, profile_cache_dir=cache_dir, cache_key="bench-v1")
    cold_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    warm = check_drift(ref, cur, None, settings, out_dir, profile_cache_dir=cache_dir, cache_key="bench-v1")
    warm_s = time.perf_counter() - t1
    assert {n: f.drifted for n, f in warm.features.items()} == {
        n: f.drifted for n, f in cold.features.items()
    }
    return {
        "cold_s": cold_s,
        "warm_s": warm_s,
        "verdicts": {n: f.drifted for n, f in cold.features.items()},
        "methods": {n: f.method for n, f in cold.features.items()},
        "inexact": sum(not f.exact for f in cold.features.values()),
        "timings": cold.timings_s,
        "warm_timings": warm.timings_s,
        "html": str(cold.html_path),
    }


def _agreement(ours: dict[str, bool], theirs: dict[str, bool]) -> tuple[int, int, list[str]]:
    common = sorted(set(ours) & set(theirs))
    disagree = [c for c in common if ours.get(c) != theirs.get(c)]
    return len(common) - len(disagree), len(common), disagree


def _compare(name: str, ref: pd.DataFrame, cur: pd.DataFrame, truth: set[str] | None) -> list[Row]:
    import evidently.presets  # noqa: F401  (imported before timing, for both)

    with tempfile.TemporaryDirectory() as tmp:
        ours, ours_mb, ours_cpu = _in_child(
            lambda: _freshrec(ref, cur, Path(tmp) / "out", Path(tmp) / "cache")
        )
    theirs, theirs_mb, theirs_cpu = _in_child(lambda: _evidently_default(ref, cur))
    agree, total, disagree = _agreement(ours["verdicts"], theirs["verdicts"])
    shape = f"{len(ref):,} x {len(cur):,} rows x {ref.shape[1]} columns"
    cond = f"{shape}; 2 shared cores, nice 10; Evidently 0.7 default DataDriftPreset in the same run"
    print(f"[{name}] freshrec cold {ours['cold_s']:.2f}s warm {ours['warm_s']:.2f}s {ours['timings']}")
    print(f"[{name}] evidently {theirs['seconds']:.2f}s; agreement {agree}/{total}; disagree {disagree}")
    print(f"[{name}] methods ours {ours['methods']}\n[{name}] methods evidently {theirs['methods']}")
    rows = [
        Row(
            f"drift check {name} freshrec cold", ours["cold_s"], theirs["seconds"], unit="s", conditions=cond
        ),
        Row(
            f"drift check {name} freshrec warm profile",
            ours["warm_s"],
            theirs["seconds"],
            unit="s",
            conditions=cond + "; reference profile cached per model version",
        ),
        Row(
            f"drift check {name} freshrec verdicts only",
            ours["timings"]["total"] - ours["timings"].get("evidently_report", 0.0),
            theirs["seconds"],
            unit="s",
            conditions=cond + "; cold, without the Evidently HTML report on the sample (--no-html)",
        ),
        Row(
            f"drift check {name} CPU time",
            ours_cpu,
            theirs_cpu,
            unit="s",
            conditions=cond + "; user+sys CPU seconds of each child (less sensitive to the shared load); "
            "ours includes the cold and the warm check",
        ),
        Row(
            f"drift check {name} peak RSS",
            ours_mb,
            theirs_mb,
            unit="MB",
            conditions=cond + "; includes the input frames",
        ),
        Row(
            f"drift check {name} verdict agreement",
            f"{agree}/{total}",
            conditions=f"per-column drift verdicts equal to Evidently's; differ: {', '.join(disagree) or 'none'}; "
            f"checked by one side only: {', '.join(sorted(set(ours['verdicts']) ^ set(theirs['verdicts']))) or 'none'}",
        ),
    ]
    if truth is not None:
        found = {c for c, v in ours["verdicts"].items() if v} - {"num_borderline"}
        rows.append(
            Row(
                f"drift check {name} injected drift found",
                f"{len(found & truth)}/{len(truth)}",
                conditions=f"false alarms: {', '.join(sorted(found - truth)) or 'none'}",
            )
        )
    return rows


def movielens_windows() -> tuple[pd.DataFrame, pd.DataFrame]:
    """First 80% vs last 20% by time of MovieLens-100k, on the training-set features."""
    from freshrec.data.datasets import load_dataset, load_description

    ds = load_dataset(load_description("movielens-100k"), DATASETS)
    events = ds.events.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    try:
        from freshrec.features.training_set import build_training_frame

        frame = build_training_frame(events, ds.users, ds.items)
    except ImportError:
        frame = events.merge(ds.users, on="user_id", how="left").merge(ds.items, on="item_id", how="left")
    drop = {
        "event_id",
        "event_timestamp",
        "user_id",
        "item_id",
        "label",
        "rating",
    }  # rating: the label source
    cut = int(len(frame) * 0.8)
    cols = [c for c in frame.columns if c not in drop and not pd.api.types.is_datetime64_any_dtype(frame[c])]
    return frame.iloc[:cut][cols].reset_index(drop=True), frame.iloc[cut:][cols].reset_index(drop=True)


def run(quick: bool) -> list[Row]:
    n = 100_000 if quick else 1_000_000
    ref, cur, truth = synthetic(n)
    size = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
    rows = _compare(f"synthetic {size}x{size}x20", ref, cur, truth)
    del ref, cur
    ml_ref, ml_cur = movielens_windows()
    rows += _compare("movielens-100k 80/20 training-set features", ml_ref, ml_cur, None)
    return rows


if __name__ == "__main__":
    main_for(run)
