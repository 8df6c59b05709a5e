"""The loop's background pipeline: stopping it (Ctrl-C, a failed stage) stops the task it is running too.

Real processes: a child that starts a grandchild, as ``freshrec pipeline run --local`` starts each
kfp.local task.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from freshrec.loop.runner import _PipelineJob, _stop_pipeline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_stop_pipeline_stops_the_running_task_too(tmp_path):
    pidfile = tmp_path / "task.pid"
    script = (
        "import subprocess, sys, time\n"
        "task = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(task.pid))\n"
        "time.sleep(120)\n"
    )
    log = open(tmp_path / "pipeline.log", "wb")  # noqa: SIM115 (closed by _stop_pipeline)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    job = _PipelineJob("retrain-1", proc, tmp_path / "pipeline.log", log, set(), time.perf_counter())
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text()):
        assert time.monotonic() < deadline, "the child never started its task"
        time.sleep(0.05)
    task_pid = int(pidfile.read_text())
    assert _alive(task_pid)

    _stop_pipeline(job)

    assert proc.poll() is not None
    assert log.closed
    deadline = time.monotonic() + 10
    while _alive(task_pid):
        if time.monotonic() > deadline:
            os.kill(task_pid, 9)
            pytest.fail("the pipeline's running task outlived the stopped pipeline")
        time.sleep(0.05)


def test_stop_pipeline_after_it_exited_only_closes_the_log(tmp_path):
    log = open(tmp_path / "pipeline.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-c", "pass"], stdout=log, start_new_session=True)
    proc.wait()
    job = _PipelineJob("retrain-1", proc, tmp_path / "pipeline.log", log, set(), time.perf_counter())
    _stop_pipeline(job)
    assert proc.returncode == 0 and log.closed
