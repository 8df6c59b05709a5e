"""The one results table, ``benchmarks/results.md``: a row per figure, merged by figure name.

Every benchmark returns :class:`Row` objects; running one benchmark alone updates its rows and keeps
the others, ``make bench`` rewrites them all. Row names are stable so progress can be followed.
"""

from __future__ import annotations

import argparse
import math
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).with_name("results.md")
HEADER = "| figure | value | baseline | ratio | conditions |\n|---|---|---|---|---|\n"


@dataclass
class Row:
    """One figure. ``ratio`` is value / baseline unless given (e.g. for "higher is better" flips)."""

    figure: str
    value: float | str
    baseline: float | str | None = None
    ratio: float | None = None
    conditions: str = ""
    unit: str = ""

    def cells(self) -> list[str]:
        ratio = self.ratio
        if ratio is None and _num(self.value) and _num(self.baseline) and float(self.baseline) != 0:
            ratio = float(self.value) / float(self.baseline)
        return [
            self.figure,
            _fmt(self.value, self.unit),
            "—" if self.baseline is None else _fmt(self.baseline, self.unit),
            "—" if ratio is None else f"{ratio:.3g}",
            self.conditions.replace("|", "/"),
        ]


def _num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(float(x))


def _fmt(x: object, unit: str) -> str:
    if _num(x):
        x = float(x)  # type: ignore[arg-type]
        text = f"{x:.4g}" if abs(x) < 1e5 else f"{x:,.0f}"
        return f"{text} {unit}".strip()
    return str(x)


def read_rows(path: Path = RESULTS) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| figure ") or re.match(r"^\|[-| ]+\|$", line):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5:
            rows[cells[0]] = cells
    return rows


def write_rows(new: list[Row], path: Path = RESULTS, replace_all: bool = False) -> None:
    """Merge ``new`` into the table by figure name (or replace the table) and write it."""
    rows = {} if replace_all else read_rows(path)
    for row in new:
        rows[row.figure] = row.cells()
    body = "".join("| " + " | ".join(cells) + " |\n" for _, cells in sorted(rows.items()))
    machine = f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    path.write_text(
        "# Benchmark results\n\nRewritten by `make bench` (one benchmark alone: "
        "`python -m benchmarks.<module>`). Ratios are value / baseline, both measured in the same run. "
        f"Machine: {machine}.\n\n" + HEADER + body
    )


def print_rows(rows: list[Row]) -> None:
    for row in rows:
        print(" | ".join(row.cells()))


def main_for(run: Callable[[bool], list[Row]]) -> None:
    """``if __name__ == "__main__": main_for(run)`` in each benchmark module."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave results.md alone")
    args = parser.parse_args()
    rows = run(args.quick)
    print_rows(rows)
    if not args.no_write:
        write_rows(rows)
