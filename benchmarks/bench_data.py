"""Data benchmarks: preparing the real datasets, ingesting a CSV, event-log window reads, the generator.

- prepare: ``freshrec.data.prepare.prepare`` (load the described dataset, validate every row, write the
  date-partitioned event log and the profile tables); baseline: the bare minimum without any checks —
  pandas ``read_csv`` of the ratings file and one ``to_parquet`` — in the same run.
- ingest: ``ingest_file`` of a 100k-row CSV of events (validation, quarantine, partitioned append, fsync);
  baseline: ``read_csv`` + ``to_parquet`` of the same file; best of 7 each, alternating.
- window read: ``EventLog.read`` of one week from the MovieLens-100k log (partition pruning); baseline:
  reading the whole log and filtering in pandas.
- synthetic: ``generate`` of 100k events (target < 1 s).

Run: ``nice -n 10 .venv/bin/python -m benchmarks.bench_data [--quick]``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.results import Row, main_for

REPO = Path(__file__).resolve().parents[1]
DATASETS = (REPO / ".." / "shared" / "datasets").resolve()
RATINGS = {
    "movielens-100k": ("movielens-100k/u.data", "\t"),
    "movielens-1m-tail": ("movielens-1m-tail/ratings_tail.dat", "::"),
}


def _timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _bare_copy(path: Path, sep: str, out: Path) -> None:
    df = pd.read_csv(path, sep=sep, header=None, engine="python" if len(sep) > 1 else "c")
    df.to_parquet(out)


def run(quick: bool) -> list[Row]:
    from freshrec.config import load_settings
    from freshrec.data.eventlog import EventLog
    from freshrec.data.ingest import ingest_file
    from freshrec.data.prepare import prepare
    from freshrec.data.synthetic import generate

    rows: list[Row] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    datasets = ["movielens-100k"] if quick else ["movielens-100k", "movielens-1m-tail"]
    for name in datasets:
        settings = load_settings(workdir=tmp / name, data={"datasets_dir": DATASETS})
        seconds, report = _timed(lambda settings=settings, name=name: prepare(settings, name))
        rel, sep = RATINGS[name]
        base, _ = _timed(
            lambda rel=rel, sep=sep: _bare_copy(DATASETS / rel, sep, tmp / "bare.parquet"), repeat=2
        )
        n = report.ingest.received
        rows.append(
            Row(
                f"data: prepare {name} (load, validate, event log, tables)",
                seconds,
                base,
                unit="s",
                conditions=f"{n:,} events, {report.ingest.partitions} date partitions; baseline read_csv + to_parquet",
            )
        )

    # ingest of a CSV of 100k generated events
    events = generate(n_events=20_000 if quick else 100_000, seed=1).events
    csv = tmp / "events.csv"
    events.to_csv(csv, index=False)
    # best of 7 for both sides, alternating, so both see the same load (a fresh event log each time: a
    # second ingest of a file is skipped)
    seconds = base = float("inf")
    for k in range(7):
        once, report = _timed(lambda k=k: ingest_file(csv, load_settings(workdir=tmp / f"ingest-{k}")))
        bare, _ = _timed(lambda: pd.read_csv(csv, dtype=str).to_parquet(tmp / "bare-ingest.parquet"))
        seconds, base = min(seconds, once), min(base, bare)
    rows.append(
        Row(
            "data: ingest_file CSV rows/s",
            len(events) / seconds,
            len(events) / base,
            unit="rows/s",
            conditions=f"{len(events):,} synthetic events, {report.partitions} partitions; baseline read_csv + to_parquet",
        )
    )

    # window read on the MovieLens-100k log
    log = EventLog(tmp / "movielens-100k" / "eventlog")
    start, end = pd.Timestamp("1997-12-01", tz="UTC"), pd.Timestamp("1997-12-08", tz="UTC")
    window_s, window = _timed(lambda: log.read(start, end), repeat=3)

    def full_then_filter():
        df = log.read()
        return df[(df["event_timestamp"] >= start) & (df["event_timestamp"] < end)]

    full_s, full = _timed(full_then_filter, repeat=3)
    assert len(window) == len(full)
    rows.append(
        Row(
            "data: event log read 1 week (movielens-100k)",
            window_s * 1000,
            full_s * 1000,
            unit="ms",
            conditions=f"{len(window):,} of 100,000 events; baseline full read + pandas filter",
        )
    )

    generate(n_events=1000)  # warm-up
    gen_s, _ = _timed(lambda: generate(n_events=100_000, seed=2), repeat=3)
    rows.append(
        Row("data: synthetic generate 100k events", gen_s, 1.0, unit="s", conditions="baseline: 1 s target")
    )
    return rows


if __name__ == "__main__":
    main_for(run)
