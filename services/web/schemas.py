"""Response shapes of the API (they document the OpenAPI schema; the JSON is built by the services)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(examples=["not_an_image"])
    message: str = Field(examples=["not an image: upload a JPEG, PNG, WebP or GIF poster"])


class ErrorBody(BaseModel):
    error: ErrorDetail


class GenreScore(BaseModel):
    genre: str
    score: float = Field(ge=0.0, le=1.0)


class YearPrediction(BaseModel):
    year: int
    model: str = Field(examples=["genre-2000"])
    version: int
    top: list[GenreScore]
    scores: dict[str, float] | None = Field(None, description="every genre's score (with scores=true)")


class Prediction(BaseModel):
    poster_sha256: str
    k: int
    years: list[YearPrediction]
    unavailable_years: list[int] = Field(description="requested years without a served model")


class BatchItem(BaseModel):
    filename: str
    prediction: Prediction | None = None
    error: ErrorDetail | None = None


class BatchPrediction(BaseModel):
    results: list[BatchItem]


class HeatmapGrid(BaseModel):
    height: int = Field(description="rows of every heatmap (the feature map's resolution)")
    width: int


class GenreExplanation(BaseModel):
    genre: str
    score: float = Field(ge=0.0, le=1.0, description="the genre's score under this year's model")
    heatmap: list[list[float]] = Field(
        description="Grad-CAM [height][width], 0..1 (3 decimals): where the model looked for this genre; "
                    "row 0 is the top of the poster, which the model sees squashed to a square")
    overlay_png: str = Field(description="the heatmap drawn over the poster: a data:image/png;base64 URL",
                             examples=["data:image/png;base64,iVBORw0KGgo..."])


class Explanation(BaseModel):
    poster_sha256: str
    year: int
    model: str = Field(examples=["genre-shared"])
    version: int
    grid: HeatmapGrid
    explanations: list[GenreExplanation] = Field(
        description="the asked genre, or the year's six best genres, best first (as the prediction table)")


class ModelInfo(BaseModel):
    name: str
    version: int
    status: str
    year: int | None
    years: list[int]
    layout: str
    architecture: str
    image_size: int
    dataset_version: str | None
    genres: list[str]
    metrics: dict[str, float] = Field(description="the model's numeric headline metrics")
    files: list[str] = Field(description="plots and exports under /api/v1/models/{name}/{version}/files/")
    created_at: str | None


class ModelList(BaseModel):
    models: list[ModelInfo]
    by_year: dict[int, str] | None = Field(
        None, description="the model answering for each year (blessed listing only), as the server picks it")


class JobStarted(BaseModel):
    job_id: str
    job_ids: list[str] = Field(description="every job started (a training starts one per model)")


class JobInfo(BaseModel):
    id: str
    kind: str
    state: str
    progress: float
    params: dict[str, Any]
    counts: dict[str, Any]
    errors: list[Any]
    result: dict[str, Any]
    created_at: str | None
    updated_at: str | None
    warning: str | None = Field(
        None, description="set while the job waits on a queue that no worker consumes: which queue, "
                          "and the command that starts a worker for it")


class JobList(BaseModel):
    jobs: list[JobInfo]


class DatasetInfo(BaseModel):
    id: str
    window: str
    params: dict[str, Any]
    counts: dict[str, Any]
    report: dict[str, Any]
    has_report_plot: bool
    created_at: str | None


class DatasetList(BaseModel):
    datasets: list[DatasetInfo]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (401, 403, 404, 413, 415, 422, 502, 503)
}
