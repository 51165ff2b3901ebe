"""Celery task ``postergenre.dataset`` (queue ``dataset``): a dataset build started from the admin API.

The admin API calls :func:`shared.dataset_params.check_build_request` before queueing (a
:class:`DatasetInputError` means 422), then sends the task with the same keyword arguments; the task
id is the job id.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from shared.celery_app import celery_app
from shared.dataset_params import DatasetInputError, check_build_request
from shared.jobs import update_job
from shared.queues import DATASET_TASK

__all__ = ["build_dataset_task"]


@celery_app.task(bind=True, name=DATASET_TASK)
def build_dataset_task(self: Task, **request: Any) -> str:
    """Build the dataset version of ``request`` (``years="2000-2019"``, ``window``, ...); return its id."""
    from services.dataset.pipeline import build_dataset
    from shared.storage import object_store_from_settings

    job_id = str(self.request.id)
    update_job(job_id, state="STARTED", progress=0)
    last = [-1.0]

    def progress(percent: float, message: str) -> None:
        # One database write per whole percent, not per poster.
        if int(percent) > last[0]:
            last[0] = int(percent)
            update_job(job_id, progress=percent, counts={"stage": message})

    try:
        params = check_build_request(request)
        result = build_dataset(params, object_store_from_settings(), progress=progress)
    except DatasetInputError as exc:
        update_job(job_id, state="FAILURE", error=str(exc))
        raise
    except Exception as exc:
        update_job(job_id, state="FAILURE", error=f"{type(exc).__name__}: {exc}")
        raise
    update_job(
        job_id,
        state="SUCCESS",
        progress=100,
        result={
            "dataset_id": result.dataset_id,
            "reused": result.reused,
            "targets": sorted(result.manifest["targets"]),
        },
    )
    return result.dataset_id
