"""Benchmarks: each ``bench_*.py`` module has ``run(quick: bool) -> list[Row]`` and can run alone."""
