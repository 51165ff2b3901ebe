"""The dynamic batcher: requests that queue while a batch runs are merged, answers are sliced back."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from services.inference.batching import Batcher, Tensors


def test_requests_waiting_behind_a_running_batch_form_one_batch_with_the_same_answers():
    release, running = threading.Event(), threading.Event()
    batch_sizes: list[int] = []

    def double(inputs: Tensors) -> Tensors:
        running.set()
        release.wait()
        batch_sizes.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2, "rows": np.arange(len(inputs["x"]))}

    batcher = Batcher(double, max_batch_size=8, batch_timeout_s=0.0, name="test")
    first = batcher.submit({"x": np.ones((1, 2), np.float32)})
    assert running.wait(timeout=10)  # the first request is running alone; the next ones must queue
    requests = [np.full((rows, 2), index, np.float32) for index, rows in enumerate([1, 2, 3], start=1)]
    futures = [batcher.submit({"x": x}) for x in requests]
    release.set()
    np.testing.assert_array_equal(first.result(timeout=10)["y"], np.full((1, 2), 2.0))
    for x, future in zip(requests, futures, strict=True):
        np.testing.assert_array_equal(future.result(timeout=10)["y"], x * 2)
    assert batch_sizes == [1, 6]  # the three waiting requests ran as one batch of 6 rows
    batcher.close()
    batcher.join(timeout=10)


def test_max_batch_size_splits_and_incompatible_shapes_run_apart():
    release, running = threading.Event(), threading.Event()
    batch_sizes: list[int] = []

    def identity(inputs: Tensors) -> Tensors:
        running.set()
        release.wait()
        batch_sizes.append(len(inputs["x"]))
        return {"y": inputs["x"]}

    batcher = Batcher(identity, max_batch_size=4, batch_timeout_s=0.0, name="test")
    blocker = batcher.submit({"x": np.zeros((1, 2))})
    assert running.wait(timeout=10)
    same = [batcher.submit({"x": np.full((2, 2), i)}) for i in range(3)]
    other = batcher.submit({"x": np.zeros((1, 5))})
    release.set()
    blocker.result(timeout=10)
    for i, future in enumerate(same):
        np.testing.assert_array_equal(future.result(timeout=10)["y"], np.full((2, 2), i))
    assert other.result(timeout=10)["y"].shape == (1, 5)
    assert batch_sizes[0] == 1 and max(batch_sizes) <= 4 and sum(batch_sizes) == 1 + 6 + 1
    batcher.close()


def test_an_error_reaches_every_caller_of_the_batch_and_the_worker_carries_on():
    calls = {"n": 0}

    def flaky(inputs: Tensors) -> Tensors:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("bad batch")
        return {"y": inputs["x"]}

    batcher = Batcher(flaky, max_batch_size=4, batch_timeout_s=0.0, name="test")
    with pytest.raises(ValueError, match="bad batch"):
        batcher.submit({"x": np.zeros((1, 1))}).result(timeout=10)
    assert batcher.submit({"x": np.ones((1, 1))}).result(timeout=10)["y"][0, 0] == 1.0
    batcher.close()
    # After close, a late request is still answered (inline), never dropped.
    assert batcher.submit({"x": np.ones((1, 1))}).result(timeout=10)["y"][0, 0] == 1.0


def test_a_lone_request_does_not_wait_for_the_batch_timeout_but_close_ones_share_a_batch():
    batch_sizes: list[int] = []

    def record(inputs: Tensors) -> Tensors:
        batch_sizes.append(len(inputs["x"]))
        return {"y": inputs["x"]}

    # An hour of timeout: a lone request that waited for it would fail result(timeout=10).
    batcher = Batcher(record, max_batch_size=2, batch_timeout_s=3600.0, name="test")
    assert batcher.submit({"x": np.zeros((1, 1))}).result(timeout=10)["y"].shape == (1, 1)
    # Two requests in quick succession: the second arrives within the window, so its batch waits
    # for company and fills up to max_batch_size with the third.
    second = batcher.submit({"x": np.ones((1, 1))})
    third = batcher.submit({"x": np.ones((1, 1))})
    assert second.result(timeout=10)["y"][0, 0] == third.result(timeout=10)["y"][0, 0] == 1.0
    assert batch_sizes[0] == 1 and sum(batch_sizes) == 3
    batcher.close()
