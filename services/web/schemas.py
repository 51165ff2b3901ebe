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
    likely: bool | None = Field(
        None, description="the score is at or above the genre's threshold tuned on the version's validation "
                          "split (the F1 rule); absent when the version has no thresholds (has_thresholds "
                          "false): then nothing says which of the best genres are likely")


class YearPrediction(BaseModel):
    year: int
    model: str = Field(examples=["genre-2000"])
    version: int
    has_thresholds: bool = Field(
        description="whether the version records per-genre thresholds (metrics.thresholds), so that its "
                    "genres carry likely marks")
    top: list[GenreScore]
    scores: dict[str, float] | None = Field(None, description="every genre's score (with scores=true)")
    departs: dict[str, float] = Field(
        description="the genres whose score this year lies further than departures.margin from the genre's "
                    "mean over the answered years: genre -> score minus that mean (empty when none do)")


class Departures(BaseModel):
    margin: float = Field(description="how far from a genre's mean a year's score must lie to depart from it")
    margin_source: str = Field(
        examples=["fixed"], description="where the margin comes from: `fixed` (a documented constant, "
                                        "the versions' metrics hold no measure of score noise)")
    means: dict[str, float] = Field(description="each genre's mean score over the answered years")


class PosterWarning(BaseModel):
    code: str = Field(examples=["not_a_poster"])
    message: str
    aspect_ratio: float | None = Field(None, description="width / height of the upload (not_a_poster)")
    poster_score: float | None = Field(
        None, description="the learned poster-likeness, 0..1 (not_a_poster; shared/posterness.py)")


class Prediction(BaseModel):
    poster_sha256: str
    k: int
    years: list[YearPrediction]
    unavailable_years: list[int] = Field(description="requested years without a served model")
    departures: Departures
    warnings: list[PosterWarning] = Field(
        description="what to know about the upload before reading the genres, e.g. `not_a_poster`; a "
                    "warning never refuses the request (empty when there is none)")


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
    thresholds: dict[str, float] | None = Field(
        None, description="per-genre thresholds tuned on validation (the likely marks); absent when the "
                          "version has none")
    files: list[str] = Field(description="plots and exports under /api/v1/models/{name}/{version}/files/")
    tfjs: bool = Field(description="whether the version has a TF.js export (files/exports/tfjs/model.json), "
                                   "so the page can run it in the browser")
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
