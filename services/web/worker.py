"""The embedded worker: ``postergenre serve web`` in embedded mode runs one Celery worker as its child.

In embedded mode (no ``POSTERGENRE_BROKER_URL``: kombu's filesystem transport) nothing else consumes
the ``gpu``, ``crawl`` and ``dataset`` queues, so a crawl, a dataset build or a training started from
the admin API would stay ``PENDING``. The web service therefore starts ``postergenre worker --queues
gpu,crawl,dataset --concurrency 1`` (the command a user would run: one task at a time, the prefork
pool so time limits hold) and stops it with itself:

- on a normal stop (Ctrl-C, SIGTERM) it sends the worker SIGTERM, which the child's
  ``REMAP_SIGTERM=SIGQUIT`` makes Celery's cold shutdown: an idle worker exits at once; a running task
  gets ``POSTERGENRE_WORKER_SOFT_SHUTDOWN_S`` (10 s here unless set) to go on, then is cancelled and
  its message goes back to the queue (a training resumes from its last checkpoint on the next start);
- if the web process dies without stopping it (SIGKILL, a crash), Linux sends the worker SIGTERM
  (``prctl(PR_SET_PDEATHSIG)``), with the same cold shutdown;
- the worker runs in a session of its own, so a Ctrl-C in the terminal reaches only the web process,
  which then stops the worker as above.

The worker touches its heartbeat file under ``POSTERGENRE_HOME`` (not the default in ``/tmp``, which
two instances would share) and logs to ``<home>/logs/embedded-worker.log``. In stack mode nothing is
started: the deployment runs the workers. ``--no-worker`` turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from shared.config import Settings
from shared.queues import CRAWL_QUEUE, DATASET_QUEUE, GPU_QUEUE

log = logging.getLogger(__name__)

EMBEDDED_QUEUES = (GPU_QUEUE, CRAWL_QUEUE, DATASET_QUEUE)
EMBEDDED_SOFT_SHUTDOWN_S = 10  # the grace a running task gets when the web service stops
STOP_MARGIN_S = 30.0  # after the grace, how long the cold shutdown may take before a SIGKILL
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def worker_command(hostname: str) -> list[str]:
    """The command a user would run for the embedded queues, one task at a time."""
    return [sys.executable, "-m", "services.cli", "worker", "--queues", ",".join(EMBEDDED_QUEUES),
            "--concurrency", "1", "--loglevel", "INFO", "--hostname", hostname]


def heartbeat_file(settings: Settings) -> Path:
    return settings.home_dir / "celery" / "embedded-worker.heartbeat"


def log_file(settings: Settings) -> Path:
    return settings.home_dir / "logs" / "embedded-worker.log"


def worker_environment(settings: Settings) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "REMAP_SIGTERM": "SIGQUIT",
           "POSTERGENRE_HOME": str(settings.home_dir),
           "POSTERGENRE_WORKER_HEARTBEAT_FILE": str(heartbeat_file(settings))}
    env.setdefault("POSTERGENRE_WORKER_SOFT_SHUTDOWN_S", str(EMBEDDED_SOFT_SHUTDOWN_S))
    return env


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send the child SIGTERM when its parent dies (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class EmbeddedWorker:
    """One ``postergenre worker`` child process; :meth:`stop` ends it (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        path = log_file(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as output:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                worker_command(f"embedded-{os.getpid()}@%h"), stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, env=worker_environment(self.settings), start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()))  # noqa: PLW1509 - no thread runs yet
        log.info("started the embedded worker for queues %s (pid %d, log %s); --no-worker turns it off",
                 ",".join(EMBEDDED_QUEUES), self.process.pid, path)
        threading.Thread(target=self._watch, name="embedded-worker-watch", daemon=True).start()

    def _watch(self) -> None:
        # Reaps the child as soon as it exits (a zombie would still look alive to `kill -0`).
        assert self.process is not None
        code = self.process.wait()
        if not self._stopping.is_set():
            log.error("the embedded worker exited with code %s (log %s): admin jobs stay PENDING; "
                      "restart `postergenre serve web` or run `postergenre worker`", code,
                      log_file(self.settings))

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        self._stopping.set()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # a cold shutdown (REMAP_SIGTERM=SIGQUIT)
            grace = float(worker_environment(self.settings)["POSTERGENRE_WORKER_SOFT_SHUTDOWN_S"])
            try:
                process.wait(timeout=grace + STOP_MARGIN_S)
            except subprocess.TimeoutExpired:
                log.warning("the embedded worker did not stop in time: killing it")
                process.kill()
                process.wait()
        log.info("the embedded worker stopped (exit code %s)", process.returncode)


@contextlib.contextmanager
def embedded_worker(settings: Settings, enabled: bool = True) -> Iterator[EmbeddedWorker | None]:
    """Run the embedded worker for the block in embedded mode when ``enabled``; else yield None."""
    if not enabled or not settings.effective_broker_url.startswith("filesystem"):
        yield None
        return
    worker = EmbeddedWorker(settings)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
