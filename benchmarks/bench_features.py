"""Feature benchmarks: online lookup latency (1 user x 100 items) and building the training set.

- lookup: ``OnlineFeatures.lookup`` on SQLite and on Redis (+ PostgreSQL registry), p50/p99 over random
  (user, 100 items) requests on MovieLens-100k; baseline: Feast's plain ``get_online_features`` with the
  ``ranking_v1`` service and 100 (user, item) rows, measured in the same run. Target p99 <= 15 ms.
- training set: the full frame (activity features + point-in-time join) for MovieLens-100k and the
  MovieLens-1M tail with ``build_training_frame`` (pure pandas), wall time and peak RSS during the build,
  each in a fresh subprocess; baseline: the same frame through Feast (activity tables +
  ``get_historical_features``) on MovieLens-100k only (see ``bench_training_set``).

Run: ``nice -n 10 .venv/bin/python -m benchmarks.bench_features [--quick]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks.results import Row, main_for

REPO = Path(__file__).resolve().parents[1]
DATASETS = (REPO / ".." / "shared" / "datasets").resolve()
REDIS_CONNECTION = "127.0.0.1:6379,db=0"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _settings(workdir: Path, environment: str = "local", project: str = "freshrec"):
    from freshrec.config import load_settings

    return load_settings(
        workdir=workdir,
        data={"datasets_dir": DATASETS},
        features={
            "environment": environment,
            "project": project,
            "redis_connection": REDIS_CONNECTION,
            "postgres_url": POSTGRES_URL,
        },
    )


def _prepare(settings, dataset: str):
    from freshrec.data.prepare import prepare

    prepare(settings, dataset)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.asarray(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _lookup_rows(settings, label: str, n: int, events) -> list[Row]:
    from freshrec.features import store

    online = store.OnlineFeatures(settings)
    fs = online.store
    service = fs.get_feature_service(settings.features.feature_service)
    rng = np.random.default_rng(0)
    users = events["user_id"].unique()
    items = events["item_id"].unique()
    requests = [
        (str(rng.choice(users)), [str(i) for i in rng.choice(items, 100, replace=False)]) for _ in range(n)
    ]
    for user, cands in requests[:10]:  # warm up connections, caches, the registry
        online.lookup(user, cands)
        fs.get_online_features(
            features=service, entity_rows=[{"user_id": user, "item_id": i} for i in cands]
        ).to_dict()
    ours, plain, ours_cpu, plain_cpu = [], [], [], []
    for user, cands in requests:
        t, c = time.perf_counter(), time.process_time()
        frame = online.lookup(user, cands)
        ours.append(time.perf_counter() - t)
        ours_cpu.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        fs.get_online_features(
            features=service, entity_rows=[{"user_id": user, "item_id": i} for i in cands]
        ).to_dict()
        plain.append(time.perf_counter() - t)
        plain_cpu.append(time.process_time() - c)
    assert len(frame) == 100
    p50, p99 = _percentiles(ours)
    b50, b99 = _percentiles(plain)
    load = os.getloadavg()[0]
    cond = (
        f"MovieLens-100k, {n} requests, random user + 100 distinct items; baseline get_online_features(ranking_v1); "
        f"load avg {load:.1f} on {os.cpu_count()} cores"
    )
    return [
        Row(f"features lookup p50 1x100 {label} (ms)", p50, b50, conditions=cond),
        Row(f"features lookup p99 1x100 {label} (ms)", p99, b99, conditions=cond + "; target p99 <= 15 ms"),
        # CPU time (process_time) is what a loaded machine inflates least: the figure to compare across runs
        Row(
            f"features lookup CPU mean 1x100 {label} (ms)",
            float(np.mean(ours_cpu)) * 1000,
            float(np.mean(plain_cpu)) * 1000,
            conditions=cond + "; CPU time (process_time) per lookup",
        ),
    ]


def bench_lookup(quick: bool) -> list[Row]:
    from freshrec.data.eventlog import EventLog
    from freshrec.features import store

    n = 100 if quick else 500
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        local = _settings(Path(tmp) / "work")
        _prepare(local, "movielens-100k")
        store.apply(local)
        store.materialize(local, rebuild_activity=False)
        events = EventLog(local.eventlog_dir).read(columns=["user_id", "item_id"])
        rows += _lookup_rows(local, "sqlite", n, events)

        project = f"freshrec_bench_{uuid.uuid4().hex[:6]}"
        redis = _settings(Path(tmp) / "work", "redis", project)
        try:
            store.apply(redis)
            store.materialize(redis, rebuild_activity=False)
            rows += _lookup_rows(redis, "redis", n, events)
        finally:
            # delete only this project (Feast's SqlRegistry.teardown would wipe every project)
            fs = store.feature_store(redis)
            fs._get_provider().online_store.teardown(fs.config, fs.list_feature_views(), fs.list_entities())
            fs.registry.delete_project(project, commit=True)
    return rows


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5) so it covers only the build; return RSS now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mib("VmRSS")
    except OSError:
        return 0.0  # no /proc: fall back to the whole process's peak


def job(dataset: str, mode: str) -> None:
    """Child process: build the training set once, print wall time and peak RSS as JSON."""
    import resource

    import pandas as pd

    from freshrec.data.datasets import load_dataset, load_description
    from freshrec.data.prepare import profile_table

    ds = load_dataset(load_description(dataset), DATASETS)
    users = profile_table(ds.users, ds.events, "user_id")
    items = profile_table(ds.items, ds.events, "item_id")
    rss_before = _reset_peak_rss()
    if mode == "pandas":
        from freshrec.features.training_set import build_training_frame

        t = time.perf_counter()
        frame = build_training_frame(ds.events, users, items)
        wall = time.perf_counter() - t
    else:
        from freshrec.features import store
        from freshrec.io import atomic_write_parquet

        with tempfile.TemporaryDirectory(prefix="bench-feast-") as tmp:
            settings = _settings(Path(tmp) / "work")
            atomic_write_parquet(users, settings.tables_dir / "users.parquet")
            atomic_write_parquet(items, settings.tables_dir / "items.parquet")
            store.write_activity_tables(settings, ds.events.iloc[:100])  # placeholder so apply can infer
            store.apply(settings)
            t = time.perf_counter()
            store.write_activity_tables(settings, ds.events)
            frame = store.get_training_set(settings, ds.events)
            wall = time.perf_counter() - t
    assert isinstance(frame, pd.DataFrame) and len(frame) == len(ds.events)
    peak = _status_mib("VmHWM") if rss_before else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": wall, "peak_mib": peak, "before_mib": rss_before, "rows": len(frame)}))


def _run_job(dataset: str, mode: str) -> dict:
    code = f"from benchmarks.bench_features import job; job({dataset!r}, {mode!r})"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=1800, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"training-set job {dataset}/{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_training_set(quick: bool) -> list[Row]:
    rows: list[Row] = []
    for dataset in ("movielens-100k", "movielens-1m-tail"):
        ours = _run_job(dataset, "pandas")
        # Feast's Dask join needs ~30x the time and ~13x the memory of pandas on 100k events (measured
        # here): on the 1M tail it would take minutes and several GB on a 2-core box, so only 100k has it
        base = _run_job(dataset, "feast") if dataset == "movielens-100k" else None
        cond = (
            f"{ours['rows']:,} events; build_training_frame (activity + PIT join) in a fresh process; "
            "baseline: Feast activity tables + get_historical_features"
        )
        rows.append(
            Row(
                f"features training set wall {dataset} (s)",
                ours["wall_s"],
                base["wall_s"] if base else None,
                conditions=cond,
            )
        )
        rows.append(
            Row(
                f"features training set peak RSS {dataset} (MiB)",
                ours["peak_mib"],
                base["peak_mib"] if base else None,
                conditions=cond
                + f"; peak RSS during the build (RSS before it: {ours['before_mib']:.0f} MiB)",
            )
        )
    return rows


def run(quick: bool) -> list[Row]:
    return bench_lookup(quick) + bench_training_set(quick)


if __name__ == "__main__":
    main_for(run)
