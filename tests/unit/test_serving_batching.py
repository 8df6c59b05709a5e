"""The batch scheduler's rules (TF Serving's ``--enable_batching``), with a stand-in model function.

The model here is a numpy function that records the batch sizes it is called with, so the merging,
padding, splitting and queue-full rules are checked in milliseconds; the real SavedModel path through
the server is in tests/integration/test_server_tfs_mode.py.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from freshrec.serving.batching import BatchingError, BatchScheduler
from freshrec.serving.tfs_config import BatchingOptions


class Model:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay_s = delay_s
        self.release = threading.Event()
        self.release.set()

    def __call__(self, inputs):
        self.release.wait()
        time.sleep(self.delay_s)
        self.sizes.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2.0, "s": np.char.add(inputs["name"].astype(str), "!")}


def request(start: int, n: int):
    x = np.arange(start, start + n, dtype=np.float32)
    return {"x": x, "name": np.array([f"r{i}" for i in range(start, start + n)], dtype=object)}


def run_concurrently(queue, requests):
    results, errors = [None] * len(requests), []

    def go(i):
        try:
            results[i] = queue.run(requests[i])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results, errors


def test_concurrent_requests_share_runs_and_each_gets_its_rows():
    sched = BatchScheduler(
        BatchingOptions(max_batch_size=64, batch_timeout_micros=50_000, num_batch_threads=1)
    )
    model = Model()
    queue = sched.queue(model, "m/1/serving_default")
    reqs = [request(10 * i, 3) for i in range(12)]
    results, errors = run_concurrently(queue, reqs)
    sched.stop()
    assert not errors
    for req, res in zip(reqs, results, strict=True):
        np.testing.assert_array_equal(res["y"], req["x"] * 2)
        assert list(res["s"]) == [f"{n}!" for n in req["name"]]
    assert sum(model.sizes) == 36 and len(model.sizes) < 12  # merged, nothing lost
    assert queue.stats["requests"] == 12 and queue.stats["batches"] == len(model.sizes)


def test_padding_to_allowed_sizes_and_the_size_limit():
    sched = BatchScheduler(
        BatchingOptions(max_batch_size=16, allowed_batch_sizes=(4, 16), num_batch_threads=1)
    )
    model = Model()
    queue = sched.queue(model, "q")
    out = queue.run(request(0, 3))
    assert model.sizes == [4] and len(out["y"]) == 3  # padded to 4, the padding row dropped
    assert queue.stats["padded_rows"] == 1
    with pytest.raises(BatchingError, match="Task size 17 is larger than maximum input batch size 16") as err:
        queue.run(request(0, 17))
    assert err.value.code == "INVALID_ARGUMENT"
    with pytest.raises(BatchingError, match="equal 0th-dimension"):
        queue.run({"x": np.zeros(3, np.float32), "name": np.array(["a"], dtype=object)})
    sched.stop()


def test_large_batch_splitting():
    sched = BatchScheduler(
        BatchingOptions(
            max_batch_size=100,
            enable_large_batch_splitting=True,
            max_execution_batch_size=8,
            num_batch_threads=2,
        )
    )
    model = Model()
    out = sched.queue(model, "q").run(request(0, 20))
    sched.stop()
    np.testing.assert_array_equal(out["y"], np.arange(20, dtype=np.float32) * 2)
    assert max(model.sizes) <= 8 and sum(model.sizes) == 20


def test_full_queue_is_unavailable_and_loses_nothing_admitted():
    sched = BatchScheduler(BatchingOptions(max_batch_size=2, max_enqueued_batches=2, num_batch_threads=1))
    model = Model()
    model.release.clear()  # the model is busy: batches pile up
    queue = sched.queue(model, "q")
    results, errors = [], []

    def go(i):
        try:
            results.append(queue.run(request(i, 2)))
        except BatchingError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    model.release.set()
    for t in threads:
        t.join(10)
    sched.stop()
    assert errors and all(e.code == "UNAVAILABLE" and "queue" in e.message for e in errors)
    assert len(results) + len(errors) == 6 and len(results) >= 2
