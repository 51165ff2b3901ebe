"""Child processes of the benchmarks (servers, crawls) that do not outlive the benchmark.

A benchmark killed without a chance to clean up (an out-of-memory kill is a SIGKILL) used to leave
its servers running: once, ``postergenre bench inference`` left its inference server (9 GB resident)
and its web server behind. On Linux every child is therefore started through this module's
launcher (``python -P benchmarks/children.py PARENT_PID -- ARGV``: stdlib only, so it needs no
package path in the child's environment), which asks the kernel for SIGTERM
when its parent dies (``prctl(PR_SET_PDEATHSIG)``) and then execs ARGV, which keeps that request
(except for set-user-ID binaries and changes of user, e.g. ``runuser``). The launcher is a process of
its own rather than a ``preexec_fn``, which is unsafe in a process that runs threads (the benchmarks
run client and server threads). The kernel sends the signal when the *thread* that started the child
ends, not the process, so every child is started from one thread kept for that until the process
ends: a server (re)started from a short-lived thread (a ``threading.Timer``) would otherwise get
SIGTERM as soon as that thread returned.

:func:`stop_on_sigterm` turns a SIGTERM of the benchmark itself into the normal way out (the ``with``
blocks stop their servers), as Ctrl-C (SIGINT, ``KeyboardInterrupt``) already is.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_starter: ThreadPoolExecutor | None = None
_starter_lock = threading.Lock()


def child_command(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped in the launcher on Linux (unchanged elsewhere, where no such signal exists)."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    # -P: this file's folder (benchmarks/) is not put first on the module path.
    return [sys.executable, "-P", os.path.abspath(__file__), str(os.getpid()), "--", *argv]


def start_child(argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, **popen)``, the child getting SIGTERM when this process dies.

    The returned process is ARGV itself (the launcher execs it), so its pid, signals and exit status
    are ARGV's."""
    global _starter
    if not argv:
        raise ValueError("start_child needs a command")
    with _starter_lock:
        if _starter is None:  # one idle thread, alive until the interpreter exits
            _starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="benchmark-children")
    command = child_command(argv)

    def start() -> subprocess.Popen[Any]:
        return subprocess.Popen(command, **popen)

    return _starter.submit(start).result()


def child_pids() -> set[int]:
    """This process's children (Linux ``/proc``)."""
    pids: set[int] = set()
    for children in Path("/proc/self/task").glob("*/children"):
        pids.update(int(pid) for pid in children.read_text().split())
    return pids


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU time of these processes so far. On a machine shared with other work, CPU
    time per table says what a service costs more steadily than latency does."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def _threads(pids: set[int]) -> list[int]:
    """The thread ids of these processes (Linux ``/proc/PID/task``)."""
    return [int(task.name) for pid in pids for task in Path(f"/proc/{pid}/task").iterdir()]


def pin(pids: set[int], cpus: set[int]) -> None:
    """Every thread of these processes onto ``cpus`` (Linux); the threads they start later inherit it.

    Affinity belongs to a thread, not a process, so each task of ``/proc/PID/task`` is moved."""
    for thread in _threads(pids):
        try:
            os.sched_setaffinity(thread, cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue


def cpus_of(pids: set[int]) -> set[int]:
    """The CPUs any thread of these processes may run on (Linux)."""
    cpus: set[int] = set()
    for thread in _threads(pids):
        try:
            cpus |= os.sched_getaffinity(thread)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    return cpus


def stop_on_sigterm() -> None:
    """Raise ``SystemExit(143)`` on SIGTERM, so that ``finally`` and ``with`` blocks stop the children
    (Python's default for SIGTERM is to die on the spot). Main thread only, as any signal handler."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


def die_with_parent(parent_pid: int) -> None:
    """Called first in a child that Python itself started (a ``multiprocessing`` worker, whose start
    this module does not own): SIGTERM to it when ``parent_pid`` dies; exits at once if it has already."""
    if not sys.platform.startswith("linux"):
        return
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(128 + signal.SIGTERM)


def _set_parent_death_signal(signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")


def main(args: Sequence[str]) -> int:
    """The launcher: ``PARENT_PID -- ARGV``."""
    if len(args) < 3 or args[1] != "--" or not args[0].isdigit():
        print(f"usage: python -P {__file__} PARENT_PID -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    parent, argv = int(args[0]), list(args[2:])
    _set_parent_death_signal(signal.SIGTERM)
    # The parent may have died before the request was made: then no signal will ever come.
    if os.getppid() != parent:
        return 128 + signal.SIGTERM
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached: execvp replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
