"""Server-side request batching, as TF Serving's ``--enable_batching`` does it.

Concurrent requests for the same servable and signature are merged into one run of the model: a batch is
open until it holds ``max_batch_size`` rows (``max_execution_batch_size`` with large-batch splitting) or
``batch_timeout_micros`` have passed since its first request; then one of ``num_batch_threads`` workers
concatenates the inputs along the 0th dimension, pads the batch up to the next ``allowed_batch_sizes``
entry with copies of the first row of the last request (as ``BatchingSession`` pads), runs the model once
and hands each request its own rows of every output. What TF Serving answers is kept: a request larger
than ``max_batch_size`` without splitting is ``INVALID_ARGUMENT``; a request arriving while
``max_enqueued_batches`` batches wait is ``UNAVAILABLE`` (the caller retries or sheds load); inputs of one
request with different 0th dimensions cannot be batched (``INVALID_ARGUMENT``).

One :class:`BatchScheduler` per server owns the worker threads (TF Serving's shared batch thread pool);
each servable signature gets its own queue in it (:meth:`BatchScheduler.queue`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from freshrec.serving.tfs_config import BatchingOptions

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]


class BatchingError(Exception):
    """A request the batcher refuses, with the TF Serving status code to answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Task:
    inputs: Arrays
    size: int
    future: Future = field(default_factory=Future)


@dataclass
class _Batch:
    opened: float
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    closed: bool = False


def batch_size_of(inputs: Arrays) -> int:
    """The common 0th dimension of a request's inputs.

    Raises:
        BatchingError: INVALID_ARGUMENT when inputs are scalars or disagree on the 0th dimension.
    """
    sizes = {name: (np.shape(v)[0] if np.ndim(v) else None) for name, v in inputs.items()}
    if not sizes or any(s is None for s in sizes.values()):
        raise BatchingError("INVALID_ARGUMENT", "Batching session Run() input tensors must be at least 1-D")
    if len(set(sizes.values())) > 1:
        raise BatchingError(
            "INVALID_ARGUMENT",
            f"Batching session Run() input tensors must have equal 0th-dimension size; got {sizes}",
        )
    return next(iter(sizes.values()))


class BatchQueue:
    """The queue of one servable signature: requests in, merged runs out."""

    def __init__(self, scheduler: BatchScheduler, run: RunFn, name: str) -> None:
        self.scheduler = scheduler
        self.options = scheduler.options
        self.run_fn = run
        self.name = name
        self._batches: deque[_Batch] = deque()
        self.retired = False
        self.stats = {"batches": 0, "rows": 0, "padded_rows": 0, "requests": 0}

    def run(self, inputs: Arrays) -> Arrays:
        """Run one request through the queue; blocks until its batch has run.

        Raises:
            BatchingError: INVALID_ARGUMENT (too large, unequal 0th dimensions), UNAVAILABLE (queue full).
            Exception: whatever the model raised for the batch this request was in.
        """
        opts = self.options
        n = batch_size_of(inputs)
        if n > opts.max_batch_size:
            raise BatchingError(
                "INVALID_ARGUMENT",
                f"Task size {n} is larger than maximum input batch size {opts.max_batch_size}",
            )
        limit = opts.execution_limit
        pieces = [(s, min(s + limit, n)) for s in range(0, n, limit)] if n > limit else [(0, n)]
        tasks = [_Task({k: v[a:b] for k, v in inputs.items()}, b - a) for a, b in pieces]
        with self.scheduler.cond:
            for task in tasks:
                self._enqueue(task)
            self.stats["requests"] += 1
            self.scheduler.cond.notify_all()
        results = [t.future.result() for t in tasks]
        if len(results) == 1:
            return results[0]
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]}

    def _enqueue(self, task: _Task) -> None:
        # Called with the scheduler's lock held.
        limit = self.options.execution_limit
        open_batch = self._batches[-1] if self._batches and not self._batches[-1].closed else None
        if open_batch is not None and open_batch.size + task.size > limit:
            open_batch.closed = True
            open_batch = None
        if open_batch is None:
            if len(self._batches) >= self.options.max_enqueued_batches:
                raise BatchingError(
                    "UNAVAILABLE", "The batch scheduling queue to which this task was submitted is full"
                )
            open_batch = _Batch(opened=time.monotonic())
            self._batches.append(open_batch)
        open_batch.tasks.append(task)
        open_batch.size += task.size
        if open_batch.size >= limit:
            open_batch.closed = True

    def _ready(self, now: float, force: bool = False) -> _Batch | None:
        # With the scheduler's lock held: the oldest batch that is full or whose timeout has passed.
        if not self._batches:
            return None
        batch = self._batches[0]
        if force or batch.closed or now - batch.opened >= self.options.batch_timeout_micros / 1e6:
            return self._batches.popleft()
        return None

    def _next_deadline(self) -> float | None:
        if not self._batches:
            return None
        return self._batches[0].opened + self.options.batch_timeout_micros / 1e6

    def _process(self, batch: _Batch) -> None:
        try:
            names = list(batch.tasks[0].inputs)
            merged = {k: np.concatenate([t.inputs[k] for t in batch.tasks]) for k in names}
            padded = _padded_size(batch.size, self.options.allowed_batch_sizes)
            if padded > batch.size:
                last = batch.tasks[-1].inputs
                merged = {
                    k: np.concatenate([v, np.repeat(last[k][:1], padded - batch.size, axis=0)])
                    for k, v in merged.items()
                }
            outputs = self.run_fn(merged)
        except BaseException as exc:
            for t in batch.tasks:
                t.future.set_exception(exc)
            return
        with self.scheduler.cond:
            self.stats["batches"] += 1
            self.stats["rows"] += batch.size
            self.stats["padded_rows"] += padded - batch.size
        start = 0
        for t in batch.tasks:
            t.future.set_result({k: v[start : start + t.size] for k, v in outputs.items()})
            start += t.size


def _padded_size(size: int, allowed: tuple[int, ...]) -> int:
    for candidate in allowed:
        if candidate >= size:
            return candidate
    return size


class BatchScheduler:
    """The batch threads shared by every queue of a server."""

    def __init__(self, options: BatchingOptions) -> None:
        self.options = options
        self.cond = threading.Condition()
        self._queues: list[BatchQueue] = []
        self._stop = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{options.thread_pool_name}-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    def queue(self, run: RunFn, name: str) -> BatchQueue:
        """A new queue whose batches run ``run`` (one per servable signature)."""
        q = BatchQueue(self, run, name)
        with self.cond:
            self._queues.append(q)
        return q

    def remove(self, queue: BatchQueue) -> None:
        """Forget a queue (its servable was unloaded) once the batches already in it have run."""
        with self.cond:
            queue.retired = True
            self._prune()

    def _prune(self) -> None:
        self._queues = [q for q in self._queues if not (q.retired and not q._batches)]

    def _work(self) -> None:
        while True:
            with self.cond:
                job = None
                while job is None:
                    self._prune()
                    if self._stop and not any(q._batches for q in self._queues):
                        return
                    now = time.monotonic()
                    deadlines = []
                    for q in list(self._queues):
                        batch = q._ready(now, force=self._stop)
                        if batch is not None:
                            job = (q, batch)
                            break
                        d = q._next_deadline()
                        if d is not None:
                            deadlines.append(d)
                    if job is None:
                        self.cond.wait(timeout=max(0.0, min(deadlines) - now) if deadlines else None)
            job[0]._process(job[1])

    def stop(self) -> None:
        """Run what is queued, then stop the threads."""
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        for t in self._threads:
            t.join(timeout=10)

    def stats(self) -> dict[str, Any]:
        """Per-queue counters: batches run, rows, padded rows, requests."""
        with self.cond:
            return {q.name: dict(q.stats) for q in self._queues}
