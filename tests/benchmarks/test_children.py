"""A benchmark's servers die with it: killed (SIGKILL, as by the out-of-memory killer) or terminated.

Each test runs a benchmark's own child-starting code in a subprocess (the "benchmark"), reads the
pids of the children it started, kills or terminates it, and waits for those children to be gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.children import child_command, cpus_of, pin, start_child

REPO = Path(__file__).resolve().parents[2]
GONE_WITHIN_S = 5.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")

# Prints the pids of this process's children, then waits to be killed.
PRINT_CHILDREN = """
def children_of(pid):
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        if entry.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found

print(" ".join(map(str, children_of(os.getpid()))), flush=True)
time.sleep(120)
"""

# The crawl benchmark's TMDB site (its own process) and the S3 server of its non-embedded storage.
STARTERS = {
    "tmdb-site": """
from benchmarks.crawler import test_site
stack.enter_context(test_site({2000: 5}, None))
""",
    "s3-server": """
from benchmarks.fakes import servers
stack.enter_context(servers.s3_server())
""",
}


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie no parent has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], timeout: float = GONE_WITHIN_S) -> list[int]:
    """The pids still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def benchmark_script(starter: str, sigterm_cleanup: bool) -> str:
    return "\n".join([
        "import contextlib, os, time",
        "from benchmarks.children import stop_on_sigterm",
        "stop_on_sigterm()" if sigterm_cleanup else "",
        "with contextlib.ExitStack() as stack:",
        textwrap.indent(starter.strip() + "\n" + PRINT_CHILDREN.strip(), "    "),
    ])


def start_benchmark(starter: str, sigterm_cleanup: bool = False) -> tuple[subprocess.Popen[str], list[int]]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    process = subprocess.Popen([sys.executable, "-c", benchmark_script(starter, sigterm_cleanup)], env=env,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip():
        process.kill()
        raise AssertionError(f"the benchmark exited ({process.wait()}) before it printed its children")
    return process, [int(pid) for pid in line.split()]


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    """Pids to SIGKILL after the test whatever happened, so a failure leaves no server behind."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("server", sorted(STARTERS))
def test_a_killed_benchmark_takes_its_servers_with_it(server: str, cleanup: list[int]) -> None:
    benchmark, children = start_benchmark(STARTERS[server])
    cleanup.extend(children)
    assert len(children) == 1 and all(alive(pid) for pid in children)

    benchmark.kill()  # SIGKILL: no handler, no finally, as the out-of-memory killer does it
    assert benchmark.wait(timeout=10) == -signal.SIGKILL
    assert wait_gone(children) == [], f"{server} still runs {GONE_WITHIN_S:g} s after the benchmark died"


def test_a_killed_benchmark_takes_its_busy_pool_worker_with_it(cleanup: list[int]) -> None:
    """The memory benchmark's spawn pool: an idle worker would see its pipe close, a busy one not."""
    starter = """
import multiprocessing, time
from benchmarks.children import die_with_parent
pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
    1, initializer=die_with_parent, initargs=(os.getpid(),)))
pool.apply(time.sleep, (0,))
pool.apply_async(time.sleep, (120,))
"""
    benchmark, children = start_benchmark(starter)
    cleanup.extend(children)
    assert children and all(alive(pid) for pid in children)  # the worker (and the resource tracker)

    benchmark.kill()
    assert benchmark.wait(timeout=10) == -signal.SIGKILL
    assert wait_gone(children) == []


def test_a_terminated_benchmark_stops_its_servers_on_its_way_out(cleanup: list[int]) -> None:
    benchmark, children = start_benchmark(STARTERS["tmdb-site"], sigterm_cleanup=True)
    cleanup.extend(children)

    benchmark.terminate()
    # 143 = 128 + SIGTERM, returned through the `with` blocks (a default SIGTERM death reads -15).
    assert benchmark.wait(timeout=30) == 128 + signal.SIGTERM
    assert wait_gone(children) == []


def test_a_child_started_from_a_thread_that_ends_lives_on() -> None:
    """The parent-death signal follows the thread that started the child: a server restarted from a
    timer thread (tests/shared/test_storage.py) must not die when that thread returns."""
    started: list[subprocess.Popen[bytes]] = []
    thread = threading.Thread(target=lambda: started.append(start_child(["sleep", "30"])))
    thread.start()
    thread.join()
    try:
        time.sleep(1.0)  # the signal, were it sent, arrives at once
        assert started[0].poll() is None
    finally:
        started[0].kill()
        started[0].wait()


def test_the_child_is_the_command_itself() -> None:
    """The launcher execs the command: the pid, the output and the exit status are the command's."""
    process = start_child([sys.executable, "-c", "import os, sys; print(os.getpid()); sys.exit(7)"],
                          stdout=subprocess.PIPE, text=True)
    output, _ = process.communicate(timeout=30)
    assert int(output) == process.pid
    assert process.returncode == 7


def test_a_missing_command_exits_127_with_its_name() -> None:
    process = start_child(["no-such-command-postergenre"], stderr=subprocess.PIPE, text=True)
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 127
    assert "no-such-command-postergenre" in errors


def test_the_launcher_refuses_a_command_line_without_its_parent() -> None:
    launcher = child_command(["true"])[:3]  # python -P children.py
    result = subprocess.run([*launcher, "--", "true"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_a_child_whose_parent_is_already_gone_does_not_start() -> None:
    """The parent may die before the child asks for the signal; then the command must not run."""
    launcher = child_command(["true"])[:3]
    not_the_parent = os.getpid()  # the launcher's parent is the shell below, not this process
    result = subprocess.run(["sh", "-c", '"$@"; echo ran', "sh", *launcher, str(not_the_parent), "--",
                             "echo", "started"], capture_output=True, text=True, timeout=30)
    assert "started" not in result.stdout
    assert result.stdout.strip() == "ran"


# A thread that runs before pinning, and one started after it: each prints the CPUs it may use.
THREAD_BEFORE_AND_AFTER = """
import os, sys, threading
stop = threading.Event()
threading.Thread(target=stop.wait, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
later = []
threading.Thread(target=lambda: later.append(sorted(os.sched_getaffinity(0)))).start()
while not later:
    pass
print(",".join(map(str, later[0])), flush=True)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning to one CPU of two needs two")
def test_pin_moves_every_thread_and_the_threads_started_later() -> None:
    """Affinity is per thread: every running thread moves, and a thread started afterwards inherits it."""
    first = min(os.sched_getaffinity(0))
    process = subprocess.Popen([sys.executable, "-c", THREAD_BEFORE_AND_AFTER], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().strip() == "ready"
        tasks = list(Path(f"/proc/{process.pid}/task").iterdir())
        assert len(tasks) >= 2  # the main thread and the waiting one
        pin({process.pid}, {first})
        assert all(os.sched_getaffinity(int(task.name)) == {first} for task in tasks)
        assert cpus_of({process.pid}) == {first}
        process.stdin.write("go\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == str(first)
    finally:
        process.kill()
        process.wait()
