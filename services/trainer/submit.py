"""Sending planned training tasks and following them (``postergenre train``); the plan itself is
``shared.training_plan``. In embedded mode (filesystem broker) nothing runs the ``gpu`` queue
unless a worker was started, so :func:`local_worker` starts one for the duration of the command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shared.config import Settings
from shared.queues import GPU_QUEUE, TRAIN_TASK
from shared.training_plan import PlannedTask

if TYPE_CHECKING:
    from celery import Celery

FINAL_STATES = ("SUCCESS", "FAILURE")


def send_tasks(tasks: list[PlannedTask], database_url: str | None = None, app: Celery | None = None) -> None:
    """Record each job (so progress can be followed at once) and queue its task on ``gpu``.

    ``app`` defaults to the process' Celery app (configured from the settings at import time).
    """
    from shared.celery_app import celery_app
    from shared.jobs import create_job

    for task in tasks:
        create_job(task.task_id, "train", task.params, url=database_url)
        (app or celery_app).send_task(TRAIN_TASK, args=[task.params], task_id=task.task_id)


@contextlib.contextmanager
def local_worker(settings: Settings, log_path: Any = None) -> Iterator[subprocess.Popen[bytes] | None]:
    """With the filesystem broker and no live local worker on ``gpu``, run one (solo pool) for the block."""
    from shared.celery_app import local_workers

    if not settings.effective_broker_url.startswith("filesystem") or local_workers(settings):
        yield None
        return
    log: Any = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker", "--queues", GPU_QUEUE, "--pool", "solo",
         "--loglevel", "WARNING", "--hostname", f"train-{os.getpid()}@%h"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # warm shutdown: the queue is empty by now
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if log is not subprocess.DEVNULL:
            log.close()


def job_rows(task_ids: list[str], database_url: str | None = None) -> dict[str, dict[str, Any]]:
    from shared.db import Job, session_scope
    from shared.jobs import job_as_dict

    with session_scope(database_url) as session:
        return {job.id: job_as_dict(job) for job in session.query(Job).filter(Job.id.in_(task_ids))}


def describe(job: dict[str, Any]) -> str:
    counts = job.get("counts") or {}
    if counts.get("stage") == "features":
        return f"features {counts.get('done', 0)}/{counts.get('total', '?')} cache entries"
    if "epoch" in counts:
        text = f"{'head epoch' if counts.get('stage') == 'heads' else 'epoch'} " \
               f"{counts['epoch']}/{counts.get('epochs', '?')}"
        if counts.get("batch") and counts.get("batches"):
            text += f" batch {counts['batch']}/{counts['batches']}"
        logs = counts.get("metrics") or {}
        for key in ("loss", "val_loss", "val_auc"):
            if key in logs:
                text += f" {key} {logs[key]:.4f}"
        return text
    return str(job.get("state", "")).lower()


def follow(tasks: list[PlannedTask], worker: subprocess.Popen[bytes] | None = None,
           database_url: str | None = None, poll_s: float = 1.0, show: bool = True
           ) -> dict[str, dict[str, Any]]:
    """Wait for every task's job to finish, with a tqdm bar fed from the job rows; returns the rows."""
    from tqdm import tqdm

    ids = [task.task_id for task in tasks]
    names = {task.task_id: task.model_name for task in tasks}
    bar = tqdm(total=100.0 * len(ids), unit="%", disable=not show, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}<{remaining}] {postfix}")
    rows: dict[str, dict[str, Any]] = {}
    try:
        while True:
            rows = job_rows(ids, database_url)
            total = sum(float(rows[i]["progress"]) if i in rows else 0.0 for i in ids)
            bar.update(total - bar.n)
            running = [i for i in ids if rows.get(i, {}).get("state") not in FINAL_STATES]
            if running:
                bar.set_postfix_str(f"{names[running[0]]}: {describe(rows.get(running[0], {}))}")
            if not running:
                return rows
            if worker is not None and worker.poll() is not None:
                raise RuntimeError(f"the local worker exited with code {worker.returncode} "
                                   f"while {len(running)} task(s) were unfinished")
            time.sleep(poll_s)
    finally:
        bar.close()
