"""``POST /api/v1/explanations``: where a year's model looked for a genre (Grad-CAM)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from services.web.deps import BlessedDep, ExplanationsDep, SettingsDep
from services.web.schemas import ERROR_RESPONSES, ErrorBody, Explanation
from services.web.uploads import read_upload
from services.web.year_table import decode_poster

router = APIRouter(prefix="/api/v1", tags=["explanations"],
                   responses={**ERROR_RESPONSES, 409: {"model": ErrorBody}})


@router.post("/explanations", response_model=Explanation,
             summary="Where one year's model looked for a genre (Grad-CAM heatmap and overlay)",
             description="One genre, or with `genre` left out the year's six best genres. Costs one pass of "
                         "the model's backbone whatever the number of genres. 404 `no_model_for_year`, 422 "
                         "`unknown_genre`, 409 `explanations_unsupported` (a model version exported before "
                         "explanations existed), and the upload errors of the predictions.")
async def create_explanation(
        file: Annotated[UploadFile, File(description="JPEG, PNG, WebP or GIF")],
        year: Annotated[int, Form(ge=1800, le=2200, description="the release year whose model explains")],
        blessed: BlessedDep, settings: SettingsDep, explanations: ExplanationsDep,
        genre: Annotated[str | None,
                         Form(description="a genre of the model; omitted: the year's six best")] = None,
) -> dict[str, Any]:
    data = await read_upload(file, settings.max_upload_bytes)
    poster = await asyncio.to_thread(decode_poster, data, file.filename or "")
    models = await asyncio.to_thread(blessed.get)
    return await asyncio.to_thread(explanations.explain, poster, year, genre or None, models)
