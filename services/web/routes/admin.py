"""The admin API (bearer token): start crawls, dataset builds and trainings, roll a model back, and
follow jobs. Mounted only when the token is safe (see ``services.web.admin.admin_token_problem``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from sqlalchemy import select

from services.web.admin import (
    CrawlRequest,
    DatasetRequest,
    RollbackRequest,
    TrainingRequest,
    start_dataset_build,
    start_job,
    start_trainings,
)
from services.web.consumers import add_warnings
from services.web.deps import AdminDep, CeleryDep, SessionDep, SettingsDep, StateDep, StoreDep
from services.web.errors import ApiError
from services.web.rollback import roll_back
from services.web.schemas import ERROR_RESPONSES, DatasetList, JobInfo, JobList, JobStarted, ModelList
from shared.db import DatasetVersion, Job
from shared.jobs import job_as_dict
from shared.storage import ObjectNotFoundError, check_key

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[AdminDep], responses=ERROR_RESPONSES)


@router.post("/crawls", status_code=202, response_model=JobStarted, summary="Start a TMDB crawl")
def start_crawl(body: CrawlRequest, celery: CeleryDep, settings: SettingsDep) -> dict[str, Any]:
    job_id = start_job(celery, settings, "crawl", body.model_dump(exclude_none=True))
    return {"job_id": job_id, "job_ids": [job_id]}


@router.post("/datasets", status_code=202, response_model=JobStarted, summary="Start a dataset build")
def start_dataset(body: DatasetRequest, celery: CeleryDep, settings: SettingsDep) -> dict[str, Any]:
    job_id = start_dataset_build(celery, settings, body)
    return {"job_id": job_id, "job_ids": [job_id]}


@router.post("/trainings", status_code=202, response_model=JobStarted,
             summary="Start a (re)training: one job per model, the first id is job_id")
def start_training(body: TrainingRequest, celery: CeleryDep, settings: SettingsDep,
                   store: StoreDep) -> dict[str, Any]:
    job_ids = start_trainings(celery, settings, store, body)
    return {"job_id": job_ids[0], "job_ids": job_ids}


@router.post("/models/{name}/rollback", response_model=ModelList,
             summary="Serve the previous (or a given) version of a model again")
def rollback(name: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]+$")], settings: SettingsDep,
             session: SessionDep, body: RollbackRequest | None = None) -> dict[str, Any]:
    request = body or RollbackRequest.model_validate({})
    return {"models": roll_back(settings, session, name, request.version)}


@router.get("/jobs/{job_id}", response_model=JobInfo, summary="A job: state, progress, counts, errors")
def get_job(job_id: Annotated[str, Path(max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")],
            session: SessionDep, state: StateDep) -> dict[str, Any]:
    # Ids are at most 64 characters (the column); PostgreSQL refuses NUL in a string parameter.
    job = session.get(Job, job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    return add_warnings([job_as_dict(job)], state.consumers)[0]


@router.get("/jobs", response_model=JobList, summary="The latest jobs, newest first")
def list_jobs(session: SessionDep, state: StateDep, kind: Annotated[str | None, Query(max_length=16)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    query = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
    if kind:
        query = query.where(Job.kind == kind)
    return {"jobs": add_warnings([job_as_dict(job) for job in session.scalars(query)], state.consumers)}


@router.get("/datasets", response_model=DatasetList, summary="Dataset versions with their reports")
def list_datasets(session: SessionDep, store: StoreDep,
                  limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
    rows = session.scalars(select(DatasetVersion).order_by(DatasetVersion.created_at.desc()).limit(limit))
    return {"datasets": [{
        "id": row.id, "window": row.window, "params": row.params or {},
        "counts": {target: (info or {}).get("counts", {}) for target, info in (row.targets or {}).items()},
        "report": row.report or {}, "has_report_plot": store.exists(f"datasets/{row.id}/report.png"),
        "created_at": row.created_at.isoformat() if row.created_at else None,
    } for row in rows]}


@router.get("/datasets/{dataset_id}/report.png", response_class=Response, summary="A dataset's report plot")
def dataset_report_plot(dataset_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]+$")],
                        store: StoreDep) -> Response:
    try:
        key = check_key(f"datasets/{dataset_id}/report.png")  # ".." passes the pattern
    except ValueError:
        raise ApiError(404, "not_found", f"no dataset {dataset_id!r}") from None
    try:
        return Response(store.get(key), media_type="image/png")
    except ObjectNotFoundError:
        raise ApiError(404, "not_found", f"dataset {dataset_id} has no report plot") from None
