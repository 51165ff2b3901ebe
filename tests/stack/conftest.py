"""The stack test's one Compose project: started once for the module, torn down with its volumes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack.stack import POSTERS, REPO, Stack, StackError

# Short limits so that a container killed mid-training has its task redelivered within the test:
# the broker's visibility timeout is derived from the longest allowed task (shared/config.py), here
# 300 + 20 s. A training of the test (32-pixel posters, a small CNN, 3 epochs) takes about 40 s on
# 2 quiet cores, but more than its 135 s soft limit at load average 8-10 (seen on 2026-11-30 while
# other jobs shared the cores), hence 300 s for training; the other tasks end well within 150 s.
STACK_TEST_ENV = {
    "POSTERGENRE_TRAIN_TIME_LIMIT_S": "300",
    "POSTERGENRE_CRAWL_TIME_LIMIT_S": "150",
    "POSTERGENRE_DATASET_TIME_LIMIT_S": "150",
    "POSTERGENRE_BROKER_VISIBILITY_MARGIN_S": "20",
    "POSTERGENRE_WORKER_SOFT_SHUTDOWN_S": "20",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not POSTERS.joinpath("labels.csv").is_file():
        pytest.skip(f"the stack test imports real posters from {POSTERS}")
    stack = Stack(project_dir=tmp_path_factory.mktemp("stack-project"), extra_env=STACK_TEST_ENV)
    stack.write_env()
    stack.compose("down", "--volumes", "--remove-orphans", check=False)  # a previous run's leftovers
    try:
        yield stack
    finally:
        times = REPO / "var" / "stack" / "stack-test-times.json"
        times.parent.mkdir(parents=True, exist_ok=True)
        times.write_text(json.dumps(stack.timings, indent=1) + "\n")
        if os.environ.get("POSTERGENRE_STACK_KEEP"):
            print(f"\nstack left running: {' '.join(stack.compose_args('ps'))}")
        else:
            stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)


@pytest.fixture(scope="session")
def started(stack: Stack) -> Stack:
    """`compose up` of the cpu profile, gated as compose.yaml says, until the page is ready."""
    start = time.monotonic()
    result = stack.compose("up", "--detach", "--no-build", check=False, timeout=600)
    if result.returncode != 0:
        raise StackError(f"compose up failed:\n{result.stderr[-4000:]}\n{stack.logs()}")
    stack.wait_until("the web service ready", stack.ready, timeout=300, every=0.5)
    stack.timings["compose up to /readyz"] = time.monotonic() - start
    return stack
