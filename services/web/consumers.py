"""Which task queues have a worker, so that a job nobody will run says so instead of staying ``PENDING``.

A job still ``PENDING`` :data:`PENDING_WARNING_S` seconds after it was created, whose queue no worker
consumes, gets a ``warning`` naming the queue and the command that starts a worker for it. Where the
answer comes from:

- stack mode (Redis): Celery's ``inspect().active_queues()`` broadcast, answered by every live worker
  within :data:`INSPECT_TIMEOUT_S`;
- embedded mode (the filesystem broker): the local workers' announcements
  (``shared.celery_app.local_workers``: a live pid and its queues), which cover the worker that
  ``serve web`` starts and one a user runs in another shell. No broadcast: on the filesystem transport
  a broadcast writes a message file for every worker that ever ran there (its binding is never
  removed), and nothing reads the ones of dead workers.

The answer is cached for :data:`CACHE_S` seconds, so the admin page's polling does not broadcast on
every request, and it is only asked for when a job has waited long enough. When the workers cannot be
asked (the broker does not answer), no warning is given: nothing is known.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from services.web.admin import TASKS
from shared.config import Settings
from shared.queues import TASK_QUEUES

log = logging.getLogger(__name__)

PENDING_WARNING_S = 15.0  # a job PENDING longer than this, on a queue without a worker, is warned about
INSPECT_TIMEOUT_S = 1.0
CACHE_S = 5.0
KIND_QUEUES = {kind: TASK_QUEUES[task] for kind, task in TASKS.items()}  # job kind -> its queue


class QueueConsumers:
    """The queues some live worker consumes, asked at most once every :data:`CACHE_S` seconds."""

    def __init__(self, settings: Settings, celery: Callable[[], Celery],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._celery = celery
        self._clock = clock
        self._lock = threading.Lock()
        self._answer: set[str] | None = None
        self._asked_at: float | None = None

    def consumed(self) -> set[str] | None:
        """Queue names with at least one consumer; None when the workers could not be asked."""
        with self._lock:  # one question at a time: concurrent polls wait for it and share it
            now = self._clock()
            if self._asked_at is None or now - self._asked_at >= CACHE_S:
                self._answer = self._ask()
                self._asked_at = self._clock()
            return self._answer

    def _ask(self) -> set[str] | None:
        if self.settings.effective_broker_url.startswith("filesystem"):
            from shared.celery_app import local_workers

            return {queue for queue in set(KIND_QUEUES.values()) if local_workers(self.settings, queue)}
        try:
            replies = self._celery().control.inspect(timeout=INSPECT_TIMEOUT_S).active_queues()
        except Exception as exc:  # the broker does not answer: unknown, not "no worker"
            log.warning("could not ask the workers which queues they consume: %s", exc)
            return None
        return {str(queue["name"]) for queues in (replies or {}).values() for queue in queues or []}


def waited_s(job: dict[str, Any], now: dt.datetime) -> float:
    created = job.get("created_at")
    if not created:
        return 0.0
    moment = dt.datetime.fromisoformat(created)
    if moment.tzinfo is None:  # SQLite gives naive UTC
        moment = moment.replace(tzinfo=dt.UTC)
    return (now - moment).total_seconds()


def needs_a_worker(job: dict[str, Any], now: dt.datetime) -> bool:
    return job.get("state") == "PENDING" and job.get("kind") in KIND_QUEUES \
        and waited_s(job, now) > PENDING_WARNING_S


def worker_warning(queue: str, settings: Settings) -> str:
    text = (f"no worker consumes the {queue!r} queue, so this job waits: start one with "
            f"`postergenre worker --queues {queue}`")
    if settings.effective_broker_url.startswith("filesystem"):
        text += " (or run `postergenre serve web` without --no-worker)"
    return text


def add_warnings(jobs: list[dict[str, Any]], consumers: QueueConsumers) -> list[dict[str, Any]]:
    """Give each job waiting on a queue without a worker a ``warning`` (the others get None)."""
    now = dt.datetime.now(dt.UTC)
    waiting = [job for job in jobs if needs_a_worker(job, now)]
    consumed = consumers.consumed() if waiting else None
    for job in jobs:
        job["warning"] = None
    if consumed is None:
        return jobs
    for job in waiting:
        queue = KIND_QUEUES[job["kind"]]
        if queue not in consumed:
            job["warning"] = worker_warning(queue, consumers.settings)
    return jobs
