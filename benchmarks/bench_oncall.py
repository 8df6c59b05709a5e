"""On-call drill for ``make bench``: the incident drill of benchmarks/oncall_drill.py."""

from __future__ import annotations

from benchmarks.results import Row, main_for


def run(quick: bool) -> list[Row]:
    from benchmarks.oncall_drill import run as drill_run

    return drill_run(quick)


if __name__ == "__main__":
    main_for(run)
