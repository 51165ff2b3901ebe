"""``POST /api/v1/predictions`` and ``POST /api/v1/predictions:batch``."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile

from services.web.deps import BlessedDep, SettingsDep, YearTablesDep
from services.web.errors import ApiError
from services.web.schemas import ERROR_RESPONSES, BatchPrediction, Prediction
from services.web.uploads import read_upload
from services.web.year_table import (
    DEFAULT_K,
    DEFAULT_YEARS,
    MAX_BATCH_FILES,
    MAX_K,
    DecodedPoster,
    YearTableService,
    decode_poster,
    parse_request_years,
)
from shared.models import BlessedModels

router = APIRouter(prefix="/api/v1", tags=["predictions"], responses=ERROR_RESPONSES)

YEARS_HELP = "years to answer for: a year, a range or a list, e.g. 2000-2019 or 2000,2005-2007"
YearsQuery = Annotated[str | None, Query(alias="years", description=YEARS_HELP)]
YearsForm = Annotated[str | None, Form(alias="years", description=YEARS_HELP + " (form field)")]
KQuery = Annotated[int | None, Query(alias="k", ge=1, le=MAX_K, description="genres per year")]
KForm = Annotated[int | None, Form(alias="k", ge=1, le=MAX_K, description="genres per year (form field)")]
ScoresQuery = Annotated[bool, Query(description="also return every genre's score per year (heatmap)")]


def requested_years(query: str | None, form: str | None) -> list[int]:
    try:
        return parse_request_years(form or query or DEFAULT_YEARS)
    except ValueError as exc:
        raise ApiError(422, "invalid_years", str(exc)) from None


async def predict_posters(posters: list[DecodedPoster], years: list[int], k: int, blessed: BlessedModels,
                          year_tables: YearTableService, all_scores: bool) -> list[dict[str, Any]]:
    # The served models as of this request (no session per request: BlessedModels asks the registry's
    # fingerprint and reads the rows only when it changed).
    models = await asyncio.to_thread(blessed.get)
    return list(await year_tables.predict(posters, years, k, models, all_scores))


@router.post("/predictions", response_model=Prediction, response_model_exclude_none=True,
             summary="The best genres of one poster under each year's model")
async def create_prediction(file: Annotated[UploadFile, File(description="JPEG, PNG, WebP or GIF")],
                            blessed: BlessedDep, settings: SettingsDep, year_tables: YearTablesDep,
                            years_query: YearsQuery = None, years_form: YearsForm = None,
                            k_query: KQuery = None, k_form: KForm = None,
                            scores: ScoresQuery = False) -> dict[str, Any]:
    years = requested_years(years_query, years_form)
    k = k_form or k_query or DEFAULT_K
    data = await read_upload(file, settings.max_upload_bytes)
    poster = await asyncio.to_thread(decode_poster, data, file.filename or "")
    [result] = await predict_posters([poster], years, k, blessed, year_tables, scores)
    return result


@router.post("/predictions:batch", response_model=BatchPrediction, response_model_exclude_none=True,
             summary=f"Predictions for up to {MAX_BATCH_FILES} posters; a bad poster gets its own error")
async def create_predictions(files: Annotated[list[UploadFile], File(description="the posters")],
                             blessed: BlessedDep, settings: SettingsDep, year_tables: YearTablesDep,
                             years_query: YearsQuery = None, years_form: YearsForm = None,
                             k_query: KQuery = None, k_form: KForm = None,
                             scores: ScoresQuery = False) -> dict[str, Any]:
    if len(files) > MAX_BATCH_FILES:
        raise ApiError(422, "too_many_files", f"{len(files)} files: at most {MAX_BATCH_FILES} per batch")
    years = requested_years(years_query, years_form)
    k = k_form or k_query or DEFAULT_K
    items: list[dict[str, Any]] = []
    posters: list[DecodedPoster] = []
    for upload in files:
        name = upload.filename or ""
        try:
            data = await read_upload(upload, settings.max_upload_bytes)
            posters.append(await asyncio.to_thread(decode_poster, data, name))
            items.append({"filename": name})
        except ApiError as exc:  # one bad poster does not cost the others their answer
            items.append({"filename": name, "error": {"code": exc.code, "message": exc.message}})
    results = iter(await predict_posters(posters, years, k, blessed, year_tables, scores))
    for item in items:
        if "error" not in item:
            item["prediction"] = next(results)
    return {"results": items}
