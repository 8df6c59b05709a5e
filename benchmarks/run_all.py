"""``make bench``: run every ``benchmarks/bench_*.py`` and rewrite ``benchmarks/results.md``."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from benchmarks.results import Row, print_rows, write_rows

# Benchmarks whose file name says what they check rather than bench_*: run too.
EXTRA_MODULES = ("gpu_check",)
REHEARSAL_ROWS = "cluster rehearsal:"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("only", nargs="*", help="module names (bench_x) to run; default all")
    args = parser.parse_args()
    modules = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py")) + list(EXTRA_MODULES)
    if args.only:
        modules = [m for m in modules if m in args.only]
    rows: list[Row] = []
    failed = []
    for name in modules:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            got = importlib.import_module(f"benchmarks.{name}").run(args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        print_rows(got)
        print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
        rows += got
    if not args.only and not failed:
        # `make rehearse` writes the cluster rehearsal's rows (it needs root and takes minutes): keep them.
        from benchmarks.results import read_rows

        kept = [
            Row(c[0], c[1], None if c[2] == "—" else c[2], None if c[3] == "—" else float(c[3]), c[4])
            for f, c in read_rows().items()
            if f.startswith(REHEARSAL_ROWS) and f not in {r.figure for r in rows}
        ]
        write_rows(rows + kept, replace_all=True)
    else:
        write_rows(rows)
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
