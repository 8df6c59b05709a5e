"""``abuse: probes held``: how many of issue 17's abuse probes the code withstands.

A probe is a test marked ``probe`` in ``tests/integration/test_abuse_*.py`` (servers, ingest, streams);
each failed on the code before issue 17. This runs them all with pytest (real servers, Redis, files, on
loopback) and counts from its JUnit report: held = passed, total = collected (a probe that errors or is
skipped does not hold). The conditions give the count per file.

Run: ``nice -n 10 .venv/bin/python -m benchmarks.bench_abuse``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from benchmarks.results import Row, main_for

REPO = Path(__file__).resolve().parents[1]


def count_probes(junit: Path) -> tuple[Counter[str], Counter[str]]:
    """(held per file, total per file) from a pytest JUnit XML report."""
    held: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("classname", "").rsplit(".", 1)[-1]
        total[name] += 1
        if not any(child.tag in ("failure", "error", "skipped") for child in case):
            held[name] += 1
    return held, total


def run(quick: bool) -> list[Row]:
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests" / "integration").glob("test_abuse_*.py"))
    if not files:
        return [Row("abuse: probes held", "0/0", conditions="no tests/integration/test_abuse_*.py")]
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp:
        junit = Path(tmp) / "probes.xml"
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-m",
                "probe",
                "-p",
                "no:cacheprovider",
                f"--junitxml={junit}",
                *files,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - start
        if not junit.exists():
            raise RuntimeError(
                f"pytest wrote no report (exit {proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        held, total = count_probes(junit)
    per_file = ", ".join(f"{name} {held[name]}/{n}" for name, n in sorted(total.items()))
    load = Path("/proc/loadavg").read_text().split()[0]
    return [
        Row(
            "abuse: probes held",
            f"{sum(held.values())}/{sum(total.values())}",
            conditions=f"pytest -m probe tests/integration/test_abuse_*.py: {per_file}; {seconds:.0f} s, load avg {load}",
        )
    ]


if __name__ == "__main__":
    main_for(run)
