"""``GET /api/v1/models`` and the model files (plots, metrics, TF.js exports) from the object store."""

from __future__ import annotations

import asyncio
import mimetypes
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from sqlalchemy import select

from services.web.deps import SessionDep, SettingsDep, StoreDep
from services.web.errors import ApiError
from services.web.schemas import ERROR_RESPONSES, ModelList
from shared.db import ModelVersion
from shared.models import blessed_models, genre_thresholds, models_by_year, version_prefix
from shared.storage import ObjectNotFoundError, ObjectStore, check_key

router = APIRouter(prefix="/api/v1", tags=["models"], responses=ERROR_RESPONSES)

# What the page may fetch from a model version: plots, metrics and the TF.js export; not the
# SavedModel itself (the inference service serves that).
SERVED_SUFFIXES = {".png": "image/png", ".svg": "image/svg+xml", ".json": "application/json",
                   ".bin": "application/octet-stream", ".csv": "text/csv"}

IMMUTABLE = "public, max-age=31536000, immutable"


def headline_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric top-level metrics (per-genre tables and curves stay in metrics.json)."""
    return {key: float(value) for key, value in (metrics or {}).items()
            if isinstance(value, int | float) and not isinstance(value, bool)}


def model_files(store: ObjectStore, row: ModelVersion) -> list[str]:
    prefix = version_prefix(row.name, row.version, row.exports) + "/"
    return [key[len(prefix):] for key in store.list(prefix)
            if PurePosixPath(key).suffix in SERVED_SUFFIXES and "/variables/" not in key]


TFJS_MODEL = "exports/tfjs/model.json"


def model_info(row: ModelVersion, files: list[str]) -> dict[str, Any]:
    thresholds = genre_thresholds(row.metrics, tuple(row.genres or ()))
    return {
        "name": row.name, "version": row.version, "status": row.status, "year": row.year,
        "years": list(row.years or []), "layout": row.layout, "architecture": row.architecture,
        "image_size": row.image_size, "dataset_version": row.dataset_version,
        "genres": list(row.genres or []), "metrics": headline_metrics(row.metrics), "files": files,
        "tfjs": TFJS_MODEL in files,
        "thresholds": (dict(zip(row.genres or [], thresholds, strict=True))
                       if thresholds is not None else None),
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }


def list_models(session: Any, store: ObjectStore, status: str) -> list[dict[str, Any]]:
    query = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)
    if status != "all":
        query = query.where(ModelVersion.status == status)
    return [model_info(row, model_files(store, row)) for row in session.scalars(query)]


def year_assignment(session: Any, prefix: str) -> dict[int, str]:
    """Which served model answers for each year (the in-browser mode picks the same ones)."""
    return {year: model.name for year, model in models_by_year(blessed_models(session, prefix)).items()}


@router.get("/models", response_model=ModelList, response_model_exclude_none=True,
            summary="The served models (or every version)")
async def get_models(session: SessionDep, store: StoreDep, settings: SettingsDep,
                     status: Annotated[Literal["blessed", "candidate", "retired", "all"],
                                       Query(description="registry rows (blessed: served)")] = "blessed",
                     ) -> dict[str, Any]:
    listing: dict[str, Any] = {"models": await asyncio.to_thread(list_models, session, store, status)}
    if status == "blessed":
        listing["by_year"] = await asyncio.to_thread(year_assignment, session, settings.model_prefix)
    return listing


@router.get("/models/{name}/{version}/files/{path:path}", summary="A plot, metrics file or TF.js export file",
            response_class=Response)
def get_model_file(store: StoreDep, session: SessionDep,
                   name: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]+$")],
                   version: int, path: str) -> Response:
    suffix = PurePosixPath(path).suffix
    if suffix not in SERVED_SUFFIXES:
        raise ApiError(404, "not_found", f"model files of type {suffix or '(none)'} are not served")
    try:
        exports = session.scalar(select(ModelVersion.exports).where(ModelVersion.name == name,
                                                                   ModelVersion.version == version))
        key = check_key(f"{version_prefix(name, version, exports)}/{path}")
    except ValueError:
        raise ApiError(404, "not_found", f"no such model file: {path}") from None
    try:
        data = store.get(key)
    except ObjectNotFoundError:
        raise ApiError(404, "not_found", f"model {name} version {version} has no file {path}") from None
    media_type = SERVED_SUFFIXES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"
    # Model versions are immutable, so browsers may keep their files.
    return Response(data, media_type=media_type, headers={"Cache-Control": IMMUTABLE})
