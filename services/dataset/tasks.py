"""Celery task ``postergenre.dataset`` (queue ``dataset``): a dataset build started from the admin API.

The admin API calls :func:`check_request` before queueing (a :class:`DatasetInputError` means 422),
then sends the task with the same keyword arguments; the task id is the job id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Task

from services.dataset.params import BuildParams, DatasetInputError
from shared.celery_app import celery_app
from shared.jobs import update_job
from shared.queues import DATASET_TASK

__all__ = ["DatasetInputError", "build_dataset_task", "check_request"]


def check_request(values: Mapping[str, Any], database_url: str | None = None) -> BuildParams:
    """Parameters of a build request, or :class:`DatasetInputError` (unknown years, empty selection...).

    ``image_size`` defaults to ``settings.image_size``. Checks that the database has movies in the
    requested windows; the rest (genres, --min-posters) is checked by the build itself.
    """
    from services.dataset.params import window_targets
    from services.dataset.pipeline import empty_selection
    from services.dataset.selection import count_movies, database_years
    from shared.config import get_settings
    from shared.db import session_scope

    values = dict(values)
    if values.get("image_size") is None:
        values["image_size"] = get_settings().image_size
    params = BuildParams.from_mapping(values)
    years = sorted({y for ys in window_targets(params.window, params.years).values() for y in ys})
    with session_scope(database_url) as session:
        if count_movies(session, years) == 0:
            raise empty_selection(params, years, database_years(session))
    return params


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
        params = check_request(request)
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
