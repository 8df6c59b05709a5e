"""Online learning benchmark for ``make bench``: the replay of benchmarks/online_replay.py."""

from __future__ import annotations

from benchmarks.results import Row, main_for


def run(quick: bool) -> list[Row]:
    from benchmarks.online_replay import run as replay_run

    return replay_run(quick)


if __name__ == "__main__":
    main_for(run)
