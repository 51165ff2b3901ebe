"""The one Celery application. Redis in stack mode; kombu's filesystem transport in embedded mode,
so tasks always run through Celery, with or without servers.

Queues: ``gpu`` (training), ``crawl``, ``dataset``. Tasks are acknowledged late and rejected on
worker loss, so a killed worker's task goes to another worker.

Time limits. ``postergenre.train`` gets ``POSTERGENRE_TRAIN_TIME_LIMIT_S`` as its hard limit and 5
minutes less (a tenth less for a limit under 50 minutes) as its soft limit
(``SoftTimeLimitExceeded`` is raised in the task, which marks the job failed; checkpoints are
replaced file by file with the state written last, so nothing half-written is ever loaded);
``postergenre.crawl`` and ``postergenre.dataset`` get their own hard limits. A task
past its hard limit is killed and acknowledged, not redelivered: a training that cannot finish in
its limit would not finish on the next worker either. Time limits need the prefork pool (the
default of ``postergenre worker``); the solo pool ignores them.

Redelivery. On Redis a task that is never acknowledged (its worker died) is redelivered after the
visibility timeout, ``Settings.broker_visibility_timeout``: the longest of the three time limits
plus ``POSTERGENRE_BROKER_VISIBILITY_MARGIN_S`` (600 s), so that a live task is never handed to a
second worker.

Stopping a worker (Celery 5.5+ soft shutdown). The deployments run workers with
``REMAP_SIGTERM=SIGQUIT`` and give trainer containers a grace period of
``POSTERGENRE_WORKER_SOFT_SHUTDOWN_S`` + 60 s. On SIGTERM the worker's main process then starts a
*cold* shutdown instead of a warm one (which would wait for the running training, for hours, until
the kubelet's SIGKILL):

1. it stops taking tasks and, for ``worker_soft_shutdown_timeout`` (the setting), lets the running
   task go on; a task that ends within that time is acknowledged normally. An idle worker exits at
   once (``worker_enable_soft_shutdown_on_idle`` is off: nothing to wait for, and a rollout or a
   ``compose down`` should not wait five minutes per idle worker);
2. then it cancels the running task (the pool child gets SIGTERM) without acknowledging it; the
   unacknowledged message goes back to the queue (kombu restores a channel's unacknowledged messages
   when it closes; if the worker dies before that, Redis redelivers it after the visibility
   timeout);
3. the next worker takes the task and resumes the training from the checkpoint uploaded after its
   last complete epoch (``services.trainer.training``), so at most one epoch is lost.

A second SIGTERM during the soft shutdown cancels the running task at once; a third kills the worker.
With the solo pool the task runs in the main process, which sleeps through the soft shutdown in its
signal handler, so the training does not progress during it: trainers use the prefork pool.

Liveness. :func:`start_heartbeat` (on ``worker_init``, in the worker's main process) touches
``POSTERGENRE_WORKER_HEARTBEAT_FILE`` every ``POSTERGENRE_WORKER_HEARTBEAT_SECONDS`` from a daemon
thread, so the probe ``test $(( $(date +%s) - $(stat -c %Y FILE) )) -lt 120`` costs no Python start
and does not depend on the broker: during a Redis outage the consumer's reconnect loop holds the
main thread (a timer on the worker's event loop would stop too), the thread goes on.

Local workers (embedded mode). A worker that imports the trainer's tasks announces itself in
``<home>/celery/workers/<pid>.json`` with the queues it consumes while it runs
(``services.trainer.tasks``); :func:`local_workers` reads those announcements, dropping the ones
whose process is gone. ``postergenre train`` and the web service use them to know whether a queue of
the filesystem broker has a consumer on this machine.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from celery import Celery, signals

from shared.config import Settings, get_settings
from shared.logs import install_celery_hooks
from shared.queues import CRAWL_TASK, DATASET_TASK, GPU_QUEUE, TASK_QUEUES, TRAIN_TASK

TASK_MODULES = ["services.trainer.tasks", "services.dataset.tasks", "services.crawler.tasks"]

log = logging.getLogger(__name__)


def task_time_limits(settings: Settings) -> dict[str, dict[str, int]]:
    """Celery ``task_annotations``: the hard (and for training, soft) time limit of each task."""
    return {
        TRAIN_TASK: {"time_limit": settings.train_time_limit_s,
                     "soft_time_limit": settings.train_soft_time_limit_s},
        CRAWL_TASK: {"time_limit": settings.crawl_time_limit_s},
        DATASET_TASK: {"time_limit": settings.dataset_time_limit_s},
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.effective_broker_url,
        "result_backend": settings.effective_result_backend,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "task_routes": {task: {"queue": queue} for task, queue in TASK_QUEUES.items()},
        "task_default_queue": "default",
        "task_annotations": task_time_limits(settings),
        # See the module docstring: on SIGTERM (remapped to SIGQUIT) the running task gets this long.
        "worker_soft_shutdown_timeout": settings.worker_soft_shutdown_s,
        "worker_enable_soft_shutdown_on_idle": False,
    }
    if config["broker_url"].startswith("filesystem://"):
        folder = settings.broker_folder
        for sub in ("in", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "in"),
            "data_folder_out": str(folder / "in"),
            "processed_folder": str(folder / "processed"),
            # Exchange tables (broadcast, pidbox); kombu's default is ./control in the working dir.
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
        results = settings.home_dir / "celery" / "results"
        results.mkdir(parents=True, exist_ok=True)
    elif config["broker_url"].startswith("redis"):
        # A task not acknowledged within this time is redelivered (a killed worker's task).
        config["broker_transport_options"] = {"visibility_timeout": settings.broker_visibility_timeout}
    return config


def workers_dir(settings: Settings) -> Path:
    """Where local workers announce themselves (``<pid>.json``: pid and queues)."""
    return settings.home_dir / "celery" / "workers"


def local_workers(settings: Settings, queue: str = GPU_QUEUE) -> list[int]:
    """Pids of live workers on this machine consuming ``queue`` (stale announcements are removed)."""
    pids = []
    folder = workers_dir(settings)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            info = json.loads(path.read_text())
            os.kill(int(info["pid"]), 0)
        except (ProcessLookupError, ValueError, KeyError, json.JSONDecodeError):
            path.unlink(missing_ok=True)
            continue
        except PermissionError:
            pass  # alive, owned by another user
        if not info.get("queues") or queue in info["queues"]:
            pids.append(int(info["pid"]))
    return pids


def touch(path: Path) -> None:
    """Create ``path`` or set its modification time to now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()  # on an existing file, os.utime to now


def heartbeat_loop(path: Path, interval: float, stop: threading.Event) -> None:
    """Touch ``path`` every ``interval`` seconds until ``stop`` is set; errors are logged, not raised.

    A full disk or a read-only folder must not kill the worker: the probe then fails and restarts it.
    """
    failing = False
    while True:
        try:
            touch(path)
            failing = False
        except OSError as exc:
            if not failing:  # once per outage, not every round
                log.warning("cannot touch the worker heartbeat file %s: %s", path, exc)
            failing = True
        if stop.wait(interval):
            return


def start_heartbeat(settings: Settings) -> threading.Thread:
    """Start the daemon thread that touches the worker's heartbeat file; returns it."""
    stop = threading.Event()
    thread = threading.Thread(
        target=heartbeat_loop, args=(settings.worker_heartbeat_file, settings.worker_heartbeat_seconds, stop),
        name="postergenre-heartbeat", daemon=True)
    thread.start()
    log.info("touching %s every %g s (worker liveness)", settings.worker_heartbeat_file,
             settings.worker_heartbeat_seconds)
    return thread


@signals.worker_init.connect
def _start_worker_heartbeat(**_kwargs: Any) -> None:
    # worker_init runs in the main process before the broker connection and the pool's fork: the
    # file is touched even while the broker is unreachable at start, and children (which a fork
    # leaves without the thread) never touch it, so it says the main process lives.
    start_heartbeat(get_settings())


def _connect_worker_metrics() -> None:
    # Importing the module connects its signal handlers (task counts, the /metrics endpoint).
    import shared.worker_metrics  # noqa: F401


# Request ids travel in task headers and are bound while a task runs; the worker logs like the services.
install_celery_hooks()


def make_celery(settings: Settings | None = None) -> Celery:
    # Every image holds every service's task module; a worker imports them when it starts (the web
    # process only sends tasks by name and never imports them).
    app = Celery("postergenre", include=TASK_MODULES)
    app.conf.update(celery_config(settings or get_settings()))
    return app


_connect_worker_metrics()
celery_app = make_celery()
