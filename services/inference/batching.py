"""Dynamic batching: concurrent requests to one model signature are run as one batch.

On a CPU one forward pass over 16 images costs less than 16 passes over one image (up to about half,
ResNet50 at 256x256 on 2 cores), so a server with many concurrent clients gains throughput by
merging their requests. The :class:`Batcher` worker takes the first waiting request, then keeps
collecting until the batch holds ``max_batch_size`` rows or ``batch_timeout_s`` has passed, runs the
model once on the concatenated inputs and hands every caller its own slice of the outputs. While a
batch runs, new requests queue up and form the next batch, so under load batches fill without
waiting. A request waits for company only when requests have been arriving close together, so a
lone client does not pay the timeout.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
# A request waits up to the batch timeout for others only if the previous one arrived within this
# many timeouts of it.
ARRIVAL_WINDOW_FACTOR = 10.0
RunBatch = Callable[[Tensors], Tensors]
# Called after each batch with its rows, each request's wait in the queue and the run time (seconds).
BatchObserver = Callable[[int, list[float], float], None]


@dataclass
class _Pending:
    inputs: Tensors
    rows: int
    future: Future[Tensors] = field(default_factory=Future)
    gap_s: float = float("inf")  # time since the previous request arrived
    enqueued: float = field(default_factory=time.monotonic)


def _rows(inputs: Tensors) -> int:
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0


def concatenate(requests: list[Tensors]) -> Tensors:
    return {key: np.concatenate([request[key] for request in requests], axis=0) for key in requests[0]}


def split(outputs: Tensors, rows: list[int]) -> list[Tensors]:
    """Cut every output back into per-request slices along the batch dimension."""
    offsets = np.cumsum([0, *rows])
    return [
        {key: value[offsets[i] : offsets[i + 1]] for key, value in outputs.items()} for i in range(len(rows))
    ]


def compatible(first: Tensors, other: Tensors) -> bool:
    """Two requests can share a batch when their inputs agree on names, dtypes and non-batch shapes."""
    return first.keys() == other.keys() and all(
        first[key].dtype == other[key].dtype and first[key].shape[1:] == other[key].shape[1:] for key in first
    )


class Batcher:
    """Worker threads that merge concurrent calls of ``run_batch`` into batches.

    With ``threads`` > 1 (TF Serving's ``num_batch_threads``) a second batch can be collected and run
    while the first one runs. On 2 CPU cores one ResNet50 batch already keeps both busy, and two
    concurrent batches were slower (burst of 16: 1.27 s with 2 threads, 0.9-1.06 s with 1), so the
    servers default to one; the models of a fan-out still run concurrently, one batcher each.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch_size: int,
        batch_timeout_s: float,
        name: str,
        threads: int = 1,
        observer: BatchObserver | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.observer = observer
        self.max_batch_size = max(1, max_batch_size)
        self.batch_timeout_s = max(0.0, batch_timeout_s)
        self.name = name
        self.batches_run = 0
        self.rows_run = 0
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._last_arrival = float("-inf")
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{name}-{index}", daemon=True)
            for index in range(max(1, threads))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs: Tensors) -> Future[Tensors]:
        pending = _Pending(inputs, _rows(inputs))
        with self._lock:
            now = time.monotonic()
            pending.gap_s = now - self._last_arrival
            self._last_arrival = now
            if not self._closed.is_set():
                self._queue.put(pending)
                return pending.future
        # The model was replaced between lookup and submit: it is still in memory, so run inline
        # rather than fail the request.
        self._run([pending])
        return pending.future

    def close(self) -> None:
        """Stop accepting work; requests already queued are still answered."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            for _ in self._threads:  # one stop marker per worker
                self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _collect(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch = [first]
        rows = first.rows
        # Wait for company only when requests have been coming close together: a lone client whose
        # previous request came a whole model pass ago would wait for nothing.
        busy = first.gap_s < ARRIVAL_WINDOW_FACTOR * self.batch_timeout_s
        deadline = time.monotonic() + (self.batch_timeout_s if busy else 0.0)
        while rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            rows += item.rows
        return batch, False

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._collect(first)
            groups: list[list[_Pending]] = []
            for item in batch:  # requests with other shapes (another image size) run in their own batch
                for group in groups:
                    if compatible(group[0].inputs, item.inputs):
                        group.append(item)
                        break
                else:
                    groups.append([item])
            for group in groups:
                self._run(group)
        # Answer whatever arrived after the close marker.
        while True:
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                return
            if late is not None:
                self._run([late])

    def _run(self, group: list[_Pending]) -> None:
        started = time.monotonic()
        try:
            inputs = group[0].inputs if len(group) == 1 else concatenate([item.inputs for item in group])
            outputs = self.run_batch(inputs)
            parts = [outputs] if len(group) == 1 else split(outputs, [item.rows for item in group])
        except BaseException as exc:  # every waiting caller gets the error, the worker carries on
            for item in group:
                item.future.set_exception(exc)
            return
        self.batches_run += 1
        self.rows_run += sum(item.rows for item in group)
        finished = time.monotonic()
        for item, part in zip(group, parts, strict=True):
            item.future.set_result(part)
        if self.observer is not None:  # after the answers, so callers never wait on it; it never raises
            self.observer(sum(item.rows for item in group), [started - item.enqueued for item in group],
                          finished - started)
