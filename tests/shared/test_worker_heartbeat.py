"""Worker liveness: a real ``postergenre worker`` touches its heartbeat file from its main process, on
the embedded filesystem broker and while its Redis broker does not answer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import servers

REPO = Path(__file__).resolve().parents[2]
# The probe the deployments run, with the file name as its argument (one shell, no Python).
PROBE = 'test $(( $(date +%s) - $(stat -c %Y "$1") )) -lt 120'


def worker_environment(home: Path, heartbeat: Path, broker: str = "") -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("POSTERGENRE_")}
    env.update({"POSTERGENRE_HOME": str(home), "POSTERGENRE_WORKER_HEARTBEAT_FILE": str(heartbeat),
                "POSTERGENRE_WORKER_HEARTBEAT_SECONDS": "0.3", "PYTHONUNBUFFERED": "1"})
    if broker:
        env["POSTERGENRE_BROKER_URL"] = broker
        env["POSTERGENRE_RESULT_BACKEND"] = broker
    return env


StartWorker = Callable[[dict[str, str]], "subprocess.Popen[bytes]"]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(processes)}.log").open("ab")
        command = [sys.executable, "-m", "services.cli", "worker", "--queues", "dataset",
                   "--concurrency", "1", "--loglevel", "INFO"]
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    yield start
    for process in processes:
        servers.stop_process(process)


def wait_for_file(path: Path, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the worker exited ({process.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no heartbeat file after {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def assert_keeps_touching(path: Path, rounds: int = 3) -> None:
    """The file's mtime advances ``rounds`` times, about one heartbeat interval apart."""
    last = path.stat().st_mtime_ns
    for _ in range(rounds):
        deadline = time.monotonic() + 10
        while path.stat().st_mtime_ns == last:
            assert time.monotonic() < deadline, f"{path} was not touched for 10 s"
            time.sleep(0.05)
        last = path.stat().st_mtime_ns


def probe(path: Path) -> int:
    return subprocess.run(["sh", "-c", PROBE, "probe", str(path)], check=False).returncode


def test_a_worker_on_the_filesystem_broker_touches_its_heartbeat(tmp_path: Path,
                                                                  start_worker: StartWorker) -> None:
    heartbeat = tmp_path / "run" / "worker.heartbeat"
    worker = start_worker(worker_environment(tmp_path / "home", heartbeat))
    wait_for_file(heartbeat, worker, tmp_path / "worker-0.log")
    assert_keeps_touching(heartbeat)
    assert probe(heartbeat) == 0
    os.utime(heartbeat, (time.time() - 300, time.time() - 300))  # what a hung worker leaves
    assert probe(heartbeat) != 0
    assert_keeps_touching(heartbeat, rounds=1)  # and this live one puts it right
    assert probe(heartbeat) == 0


def test_the_heartbeat_goes_on_while_the_redis_broker_does_not_answer(tmp_path: Path,
                                                                       start_worker: StartWorker) -> None:
    heartbeat = tmp_path / "worker.heartbeat"
    # Nothing listens on this port: the worker sits in Celery's connection retry loop, which holds
    # its main thread, the whole time.
    broker = f"redis://127.0.0.1:{servers.free_port()}/0"
    worker = start_worker(worker_environment(tmp_path / "home", heartbeat, broker))
    log = tmp_path / "worker-0.log"
    wait_for_file(heartbeat, worker, log)
    deadline = time.monotonic() + 30
    while "Cannot connect to redis" not in log.read_text() and "Error" not in log.read_text():
        assert time.monotonic() < deadline, f"the worker did not try the broker:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    assert_keeps_touching(heartbeat, rounds=5)
    assert worker.poll() is None
    assert probe(heartbeat) == 0


def test_the_heartbeat_goes_on_through_a_redis_outage_of_a_running_worker(
        tmp_path: Path, start_worker: StartWorker) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server to run a Redis it can stop")
    redis = servers.ThrowawayRedis()
    redis.start()
    try:
        heartbeat = tmp_path / "worker.heartbeat"
        worker = start_worker(worker_environment(tmp_path / "home", heartbeat, redis.url))
        log = tmp_path / "worker-0.log"
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        redis.stop()
        deadline = time.monotonic() + 30
        while "Connection to broker lost" not in log.read_text():
            assert time.monotonic() < deadline, f"the broker was not lost:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        assert_keeps_touching(heartbeat, rounds=5)
        assert worker.poll() is None
    finally:
        redis.stop()
