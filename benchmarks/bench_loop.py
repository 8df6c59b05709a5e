"""The main job's budget (issue 8): ``freshrec run --quick`` ≤ 3 minutes, ``freshrec run`` ≤ 10 minutes.

Each run is a fresh ``freshrec run`` process on a new workdir (free ports), timed on the wall clock from
start to exit, as a user sees it; the stage times come from the run's own ``run.json``. The baseline is
the issue's budget (value / budget < 1 meets it). ``--quick`` runs only the quick loop.

Quality (issue 14): the mean window AUC of what was served, of the online learner (prequential) and of the
frozen bootstrap model, per run; ``BENCH_LOOP_SEEDS=42,7,123`` repeats the full run with those training
seeds (``training.seed``) and reports the mean with every seed's value. The full run's wall time is its
first seed's. ``BENCH_LOOP_KINDS=full`` skips the quick run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.results import Row, main_for

BUDGET_S = {"quick": 180.0, "full": 600.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_loop(kind: str, seed: int | None = None) -> dict:
    """One ``freshrec run`` (``--quick`` for kind "quick"): wall seconds, load and its run record."""
    with tempfile.TemporaryDirectory(prefix=f"freshrec-bench-loop-{kind}-") as tmp:
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "FRESHREC_SERVING__REST_PORT": str(_free_port()),
            "FRESHREC_SERVING__GRPC_PORT": str(_free_port()),
            "FRESHREC_SERVING__GATEWAY_PORT": str(_free_port()),
            "FRESHREC_SERVING__GATEWAY_ADMIN_PORT": str(_free_port()),
        }
        if seed is not None:
            env["FRESHREC_TRAINING__SEED"] = str(seed)
        cmd = [sys.executable, "-m", "freshrec.cli", "--workdir", tmp, "run"]
        if kind == "quick":
            cmd.append("--quick")
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"freshrec run ({kind}) failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        record = json.loads(next(Path(tmp, "reports").glob("*/run.json")).read_text())
    return {"wall_s": wall, "load": max(load_before, os.getloadavg()[0]), "record": record, "seed": seed}


def rows_for(kind: str, got: dict) -> list[Row]:
    record = got["record"]
    label = "freshrec run --quick" if kind == "quick" else "freshrec run"
    opts = record["options"]
    conditions = (
        f"movielens-100k, {opts['max_replay_events'] or 'all'} replay events in windows of "
        f"{opts['window_events']}; fresh workdir, a new process, wall clock to exit; "
        f"load avg up to {got['load']:.1f} on {os.cpu_count()} cores"
    )
    rows = [
        Row(
            f"loop: {label} wall (s)",
            round(got["wall_s"], 1),
            BUDGET_S[kind],
            conditions=conditions + f"; baseline: the {BUDGET_S[kind] / 60:.0f}-minute budget",
        )
    ]
    for stage in record["stages"]:
        rows.append(Row(f"loop: {label} stage {stage['name']} (s)", stage["seconds"], conditions=conditions))
    for retrain in record["retrains"]:
        rows.append(
            Row(
                f"loop: {label} retrain pipeline (s)",
                retrain["seconds"],
                conditions=f"in the background: {retrain.get('windows_meanwhile', 0)} window(s) replayed "
                f"meanwhile; canary {retrain['outcome']}",
            )
        )
        break
    summary = record["summary"]
    if "mean window AUC, online" in summary:
        rows.append(
            Row(
                f"loop: {label} mean window AUC online",
                summary["mean window AUC, online"],
                summary.get("mean window AUC, static"),
                conditions=f"the online learner as it was at each request, per replay window, on the "
                f"features the gateway looked up for the page (request time); baseline: the frozen "
                f"bootstrap model on the same; served {summary.get('mean window AUC, served')}; "
                f"{_context(record)}",
            )
        )
    return rows


def _context(record: dict) -> str:
    """The exact-feature figures of a run (context: features no request can have) and how it learned."""
    summary, opts = record["summary"], record["options"]
    learned = "served" if opts.get("learn_on_served_features") else "exact point-in-time"
    static = summary.get("mean window AUC, static (exact features)")
    learner = summary.get("mean window AUC, online (learner's prequential)")
    return (
        f"on exact point-in-time features: static {static}, the learner's prequential {learner}; the "
        f"learner trained on {learned} features, exports every {opts.get('export_every_events')} events"
    )


def quality_rows(kind: str, runs: list[dict]) -> list[Row]:
    """Served vs online vs static mean window AUC over the runs (seeds), and freshness from every export."""
    label = "freshrec run --quick" if kind == "quick" else "freshrec run"
    means: dict[str, list[float]] = {"served": [], "online": [], "static": []}
    fresh: list[float] = []
    for got in runs:
        for variant, values in means.items():
            values.append(float(got["record"]["summary"][f"mean window AUC, {variant}"]))
        fresh += [float(f) for f in got["record"].get("freshness_s", [])]
    seeds = ", ".join(
        f"seed {got['seed']}: served {s:.4f} online {o:.4f} static {t:.4f}"
        for got, s, o, t in zip(runs, means["served"], means["online"], means["static"], strict=True)
    )
    load = max(got["load"] for got in runs)
    avg = {k: round(sum(v) / len(v), 4) for k, v in means.items()}
    cond = (
        f"movielens-100k, {len(runs)} run(s) ({seeds}); load avg up to {load:.1f} on {os.cpu_count()} cores"
    )
    rows = [
        Row(
            f"loop: {label} mean window AUC served",
            avg["served"],
            avg["static"],
            conditions=f"what the gateway answered, per replay window; baseline: the frozen bootstrap model "
            f"on the same request-time features (target ≥ static + 0.005 and ≥ online − 0.005); online "
            f"{avg['online']}; {cond}",
        ),
        Row(
            f"loop: {label} mean window AUC static",
            avg["static"],
            conditions=f"the frozen bootstrap model on the served impressions' request-time features; "
            f"{_context(runs[0]['record'])}; {cond}",
        ),
    ]
    if kind == "full":
        exports = sum(len(got["record"].get("versions", [])) - 1 for got in runs)
        p50 = float(np.percentile(fresh, 50)) if fresh else float("nan")
        rows.append(
            Row(
                "loop: freshness p50 (s)",
                round(p50, 2),
                2.0,
                conditions=f"event entered the event log → served by a version that learned it, wall clock, "
                f"{len(fresh)} of {exports} exports measured; baseline: the 2 s target; {cond}",
            )
        )
    return rows


def run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    kinds = ("quick",) if quick else tuple(os.environ.get("BENCH_LOOP_KINDS", "quick,full").split(","))
    seeds = [int(s) for s in os.environ.get("BENCH_LOOP_SEEDS", "42").split(",")]
    for kind in kinds:
        runs = []
        for seed in seeds if kind == "full" else seeds[:1]:
            print(f"   freshrec run ({kind}, seed {seed}) ...", flush=True)
            runs.append(run_loop(kind, seed))
        rows += rows_for(kind, runs[0])
        rows += quality_rows(kind, runs)
    return rows


if __name__ == "__main__":
    main_for(run)
