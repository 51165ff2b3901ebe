"""Prometheus metrics of a Celery worker, served by the worker itself.

Why in the worker and not a separate exporter reading the broker: a broker-side exporter (Flower,
celery-exporter) only sees what the workers broadcast as Celery *events*, which the workers here do
not send (``worker_send_task_events`` is off: every task would publish five more messages on the
broker that also carries the trainings), and it is one more service to run and keep up. The worker
sees its own tasks start and end, and the queue lengths are one broker call at scrape time.

``POSTERGENRE_WORKER_METRICS_PORT`` (0: off, the default, so embedded-mode and test workers open no
port) turns it on: on ``worker_init``, in the worker's main process before the pool forks, it

* switches ``prometheus_client`` to its multiprocess mode with a fresh folder of its own
  (``PROMETHEUS_MULTIPROC_DIR`` when set, else ``<home>/celery/metrics/<pid>``): with the prefork
  pool the tasks run in child processes, whose counters the main process could not see otherwise;
  every metric created afterwards, in any process of the worker (the crawler's and the dataset
  builder's, :mod:`shared.metrics`), is written there;
* serves them, with the lengths of the worker's queues, at ``http://0.0.0.0:PORT/metrics``.

A metric that cannot be recorded is logged and skipped, a queue that cannot be measured is left out
of that scrape: metrics never fail a task.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from celery import Celery, signals
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.config import Settings, get_settings
from shared.metrics import DURATION_BUCKETS_S, guarded, use_multiprocess_folder

log = logging.getLogger(__name__)

# Task states as Celery names them; RECEIVED and REVOKED are counted by the main process, the others
# by the process that runs the task.
STATES = ("RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED")
QUEUE_LENGTH_FAMILY = "postergenre_celery_queue_length"  # a gauge, made at scrape time


class WorkerMetrics:
    """The task metrics (created once multiprocess mode is on, so the pool's children share them)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.tasks = Counter("postergenre_celery_tasks", "Celery tasks by name and state (RECEIVED, "
                             "STARTED, SUCCESS, FAILURE, RETRY, REVOKED)", ["task", "state"],
                             registry=registry)
        self.runtime = Histogram("postergenre_celery_task_duration_seconds",
                                 "Run time of finished tasks, by name and final state", ["task", "state"],
                                 buckets=DURATION_BUCKETS_S, registry=registry)
        self.running = Gauge("postergenre_celery_tasks_running", "Tasks running now, by name", ["task"],
                             multiprocess_mode="livesum", registry=registry)
        self._started: dict[str, float] = {}  # task id -> monotonic start, in the process running it
        self._lock = threading.Lock()

    def started(self, task_id: str, task: str) -> None:
        with self._lock:
            self._started[task_id] = time.monotonic()
        self.tasks.labels(task=task, state="STARTED").inc()
        self.running.labels(task=task).inc()

    def finished(self, task_id: str, task: str, state: str) -> None:
        with self._lock:
            started = self._started.pop(task_id, None)
        self.tasks.labels(task=task, state=state).inc()
        if started is not None:
            self.runtime.labels(task=task, state=state).observe(time.monotonic() - started)
            self.running.labels(task=task).dec()


class QueueLengthCollector(Collector):
    """``postergenre_celery_queue_length{queue}``: messages waiting in each queue, asked of the
    broker at scrape time through kombu (a passive declare), so it reads Redis lists and the
    filesystem transport alike. A queue the broker does not answer for is left out of the scrape."""

    def __init__(self, app: Celery, queues: Iterable[str], timeout_s: float = 2.0) -> None:
        self.app = app
        self.queues = sorted(set(queues))
        self.timeout_s = timeout_s

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(QUEUE_LENGTH_FAMILY,
                                   "Messages waiting in a Celery queue (not counting those a worker holds)",
                                   labels=["queue"])
        try:
            with self.app.connection_for_read() as connection:
                connection.ensure_connection(max_retries=1, timeout=self.timeout_s)
                channel = connection.default_channel
                for queue in self.queues:
                    try:
                        _, messages, _ = channel.queue_declare(queue=queue, passive=True)
                    except Exception as exc:  # a queue nobody declared yet: unknown, not zero
                        log.debug("queue %s not measured: %s", queue, exc)
                        continue
                    family.add_metric([queue], float(messages))
        except Exception as exc:
            log.warning("cannot read the queue lengths from the broker: %s", exc)
        yield family


class _State:
    metrics: WorkerMetrics | None = None
    server: Any = None
    port: int | None = None


STATE = _State()


def start_worker_exporter(app: Celery, settings: Settings, queues: Iterable[str]) -> int | None:
    """Multiprocess mode on, the task metrics created, the endpoint listening; returns its port."""
    if not settings.worker_metrics_port:
        return None
    folder = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.home_dir / "celery" / "metrics"
                  / str(os.getpid()))
    # Files of an earlier run of this worker would add their counts to this one's.
    shutil.rmtree(folder, ignore_errors=True)
    use_multiprocess_folder(folder)
    STATE.metrics = WorkerMetrics()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))
    registry.register(QueueLengthCollector(app, queues))
    server, _ = start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host,
                                  registry=registry)
    STATE.server = server
    STATE.port = int(server.server_address[1])
    log.info("worker metrics on http://%s:%d/metrics (queues %s)", settings.worker_metrics_host, STATE.port,
             ", ".join(sorted(queues)))
    return STATE.port


@signals.worker_init.connect
@guarded
def _on_worker_init(sender: Any = None, **_kwargs: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None:
        return
    queues = [queue.name for queue in app.amqp.queues.consume_from.values()] or list(app.amqp.queues)
    start_worker_exporter(app, get_settings(), queues)


def _task_name(sender: Any, request: Any = None) -> str:
    return str(getattr(sender, "name", None) or getattr(getattr(request, "task", None), "name", None)
               or getattr(request, "name", None) or "unknown")


@signals.task_received.connect
@guarded
def _on_received(request: Any = None, **_kwargs: Any) -> None:
    if STATE.metrics is not None:
        STATE.metrics.tasks.labels(task=_task_name(None, request), state="RECEIVED").inc()


@signals.task_prerun.connect
@guarded
def _on_prerun(sender: Any = None, task_id: str = "", **_kwargs: Any) -> None:
    if STATE.metrics is not None:
        STATE.metrics.started(task_id, _task_name(sender))


@signals.task_postrun.connect
@guarded
def _on_postrun(sender: Any = None, task_id: str = "", state: str | None = None, **_kwargs: Any) -> None:
    if STATE.metrics is not None:
        STATE.metrics.finished(task_id, _task_name(sender), str(state or "UNKNOWN"))


@signals.task_revoked.connect
@guarded
def _on_revoked(request: Any = None, **_kwargs: Any) -> None:
    if STATE.metrics is not None:
        STATE.metrics.tasks.labels(task=_task_name(None, request), state="REVOKED").inc()


@signals.worker_process_shutdown.connect
@guarded
def _on_child_exit(pid: int | None = None, **_kwargs: Any) -> None:
    # A pool child that exits takes its running-task gauge with it (a livesum gauge would otherwise
    # keep counting a task that died with its process).
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if STATE.metrics is not None and folder:
        multiprocess.mark_process_dead(pid or os.getpid(), folder)
