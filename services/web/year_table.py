"""From uploaded poster bytes to the table of each year's best genres (:class:`YearTableService`,
the web's orchestrator of ``POST /api/v1/predictions``; not to be confused with the inference
server's gRPC ``PredictionService``, whose servicer is ``services.inference.server.PredictionServicer``).

Each poster is decoded once (``shared.images.open_poster``: type by content, bomb guard, EXIF, first
frame, RGB) and resized once per model input size (``shared.images.resize_pixels``, the second half
of ``poster_pixels``), then every year's model is asked concurrently, one batched call per model.
Scores are cached per (poster, model, version), so a repeated poster costs no inference.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from services.web.cache import ScoreCache, cache_key
from services.web.errors import ApiError
from services.web.metrics import WebMetrics
from shared.genres import rank_genres
from shared.images import PosterImageError, open_poster, resize_pixels
from shared.inference_client import BaseInferenceClient, InferenceUnavailable, ModelNotFound
from shared.models import ServedModel, models_by_year
from shared.posterness import check_image
from shared.years import parse_years

log = logging.getLogger(__name__)

DEFAULT_YEARS = "2000-2019"
DEFAULT_K = 6
MAX_K = 50
MAX_YEARS_PER_REQUEST = 200
MAX_BATCH_FILES = 32
# How far a year's score must lie from the genre's mean over the answered years to count as departing
# from it. The versions' metrics hold no measure of score noise (ranking metrics, F1 and thresholds,
# nothing about how much a score moves between comparable models), so this is a fixed margin: a tenth
# of the score range (docs/api.md says so to the API's users).
DEPARTURE_MARGIN = 0.10


def parse_request_years(spec: str) -> list[int]:
    """The years of one prediction request (:func:`shared.years.parse_years`, bounded per request)."""
    return parse_years(spec, max_years=MAX_YEARS_PER_REQUEST)


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise ValueError(f"bad k {k}: between 1 and {MAX_K}")
    return k


def image_error(exc: PosterImageError) -> ApiError:
    """The HTTP error for a poster that does not decode, by what is wrong with it."""
    message = str(exc)
    if message == "empty file":
        return ApiError(422, "empty_file", "the uploaded file is empty")
    if message.startswith(("not an image", "unsupported image type")):
        return ApiError(415, "not_an_image", f"{message}: upload a JPEG, PNG, WebP or GIF poster")
    if message.startswith("image too large"):
        return ApiError(413, "image_too_large", message)
    return ApiError(422, "bad_image", message)


@dataclass
class DecodedPoster:
    sha256: str
    image: Image.Image
    filename: str = ""
    # What the answer should say about the image (e.g. not a poster); never a reason to refuse it.
    warnings: list[dict[str, Any]] = field(default_factory=list)


def decode_poster(data: bytes, filename: str = "") -> DecodedPoster:
    try:
        image, info = open_poster(data)
    except PosterImageError as exc:
        raise image_error(exc) from None
    warning = check_image(image).warning()
    return DecodedPoster(info.sha256, image, filename, [warning] if warning else [])


def top_genres(genres: tuple[str, ...], scores: list[float], k: int,
               likely: list[bool] | None = None) -> list[dict[str, Any]]:
    """The ``k`` best genres as the API shows them (see :func:`rank_genres`), each marked ``likely``
    when the version has thresholds (``likely``, per genre, from :meth:`ServedModel.likely`)."""
    likely_of = dict(zip(genres, likely, strict=True)) if likely is not None else None
    return [{"genre": genre, "score": round(score, 6)}
            | ({"likely": likely_of[genre]} if likely_of is not None else {})
            for genre, score in rank_genres(genres, scores, k)]


def departures(rows: list[tuple[dict[str, Any], dict[str, float]]], margin: float = DEPARTURE_MARGIN
               ) -> dict[str, float]:
    """Set each row's ``departs`` (genre -> score minus the genre's mean over the rows that score it,
    for the genres further than ``margin`` from it) and return the means. ``rows`` pairs an answer row
    with every genre's score of that year."""
    by_genre: dict[str, list[float]] = {}
    for _, scores in rows:
        for genre, score in scores.items():
            by_genre.setdefault(genre, []).append(score)
    means = {genre: sum(values) / len(values) for genre, values in by_genre.items()}
    for row, scores in rows:
        row["departs"] = {genre: round(score - means[genre], 6) for genre, score in sorted(scores.items())
                          if len(by_genre[genre]) > 1 and abs(score - means[genre]) > margin}
    return {genre: round(mean, 6) for genre, mean in sorted(means.items())}


@dataclass
class ModelAnswer:
    """One model's scores for one poster, as cached: ``scores`` is [genres] or [years][genres]."""

    scores: list[Any]
    version: int


Answers = dict[tuple[int, str], ModelAnswer]


class YearTableService:
    """The web's orchestrator of a prediction: posters in, one table of each year's best genres out
    (cached scores, one fan-out per model input size, each year under the model that answers it)."""

    def __init__(self, inference_client: Callable[[], BaseInferenceClient], cache: ScoreCache,
                 metrics: WebMetrics, cache_namespace: str) -> None:
        self._inference_client = inference_client
        self.cache_namespace = cache_namespace
        self.cache = cache
        self.metrics = metrics

    def _ask_group(self, names: list[str], images: list[Image.Image], size: int) -> dict[str, Any]:
        """Resize the posters to this input size, then one concurrent fan-out (gRPC futures) to every
        model taking it. Runs in a worker thread: resizing is CPU work the event loop must not do."""
        pixels = np.stack([resize_pixels(image, size) for image in images]).astype(np.float32)
        started = time.perf_counter()
        results = dict(self._inference_client().predict_many(names, pixels))
        elapsed = time.perf_counter() - started
        for name in names:
            self.metrics.inference_latency.labels(model=name).observe(elapsed)
        return results

    async def _ask_models(self, posters: list[DecodedPoster], wanted: dict[str, list[int]],
                          models: dict[str, ServedModel]) -> tuple[Answers, set[str]]:
        """Ask the models for the posters they have no cached answer for.

        Models are grouped by input size: each poster is resized once per size and each group is one
        concurrent fan-out; the groups run concurrently too. Returns the answers by (poster index,
        model name) and the names the server does not serve.
        """
        groups: dict[int, list[str]] = {}
        for name in wanted:
            groups.setdefault(models[name].image_size, []).append(name)
        plans = []
        for size, names in groups.items():
            indices = sorted({index for name in names for index in wanted[name]})
            plans.append((names, indices, size))
        outcomes = await asyncio.gather(
            *(asyncio.to_thread(self._ask_group, names, [posters[index].image for index in indices], size)
              for names, indices, size in plans),
            return_exceptions=True)

        answers: Answers = {}
        missing: set[str] = set()
        for (names, indices, _), outcome in zip(plans, outcomes, strict=True):
            if isinstance(outcome, BaseException):  # the client itself failed (e.g. no server started)
                per_model: dict[str, Any] = dict.fromkeys(names, outcome)
            else:
                per_model = outcome
            for name in names:
                result = per_model[name]
                if isinstance(result, ModelNotFound):
                    log.warning("the inference server does not serve %s: %s", name, result)
                    missing.add(name)
                elif isinstance(result, InferenceUnavailable):
                    raise ApiError(503, "inference_unavailable",
                                   f"the inference service is unavailable, try again later ({result})")
                elif isinstance(result, BaseException):
                    log.error("inference call to %s failed: %s", name, result)
                    raise ApiError(502, "inference_error", f"model {name} failed: {result}")
                else:
                    scores, version = result
                    for row, index in enumerate(indices):
                        answers[index, name] = ModelAnswer(np.asarray(scores)[row].tolist(), int(version))
        return answers, missing

    async def predict(self, posters: list[DecodedPoster], years: list[int], k: int,
                      models: list[ServedModel], all_scores: bool = False) -> list[dict[str, Any]]:
        """The prediction of each poster (the API's JSON shape), years in ascending order."""
        year_models = models_by_year(models, years)
        by_name = {model.name: model for model in year_models.values()}

        keys = {(i, name): cache_key(self.cache_namespace, p.sha256, name, by_name[name].version)
                for i, p in enumerate(posters) for name in by_name}
        cached = self.cache.get_many(list(keys.values()))
        answers = {pair: ModelAnswer(**cached[key]) for pair, key in keys.items() if key in cached}
        self.metrics.cache.labels(result="hit").inc(len(answers))
        self.metrics.cache.labels(result="miss").inc(len(keys) - len(answers))

        wanted: dict[str, list[int]] = {}
        for (index, name) in keys:
            if (index, name) not in answers:
                wanted.setdefault(name, []).append(index)
        missing: set[str] = set()
        if wanted:
            fresh, missing = await self._ask_models(posters, wanted, by_name)
            answers.update(fresh)
            # Only what the registry's version answered is cached under that version's key.
            self.cache.set_many({keys[pair]: {"scores": answer.scores, "version": answer.version}
                                 for pair, answer in fresh.items()
                                 if answer.version == by_name[pair[1]].version})

        return [self._result(index, poster, years, k, year_models, answers, missing, all_scores)
                for index, poster in enumerate(posters)]

    def _result(self, index: int, poster: DecodedPoster, years: list[int], k: int,
                year_models: dict[int, ServedModel], answers: dict[tuple[int, str], ModelAnswer],
                missing: set[str], all_scores: bool) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        every_score: list[tuple[dict[str, Any], dict[str, float]]] = []
        unavailable: list[int] = []
        for year in years:
            model = year_models.get(year)
            if model is None or model.name in missing:
                unavailable.append(year)
                self.metrics.unavailable.labels(year=str(year)).inc()
                continue
            answer = answers[index, model.name]
            scores = model.scores_for_year(answer.scores, year)
            row: dict[str, Any] = {"year": year, "model": model.name, "version": answer.version,
                                   "has_thresholds": model.thresholds is not None,
                                   "top": top_genres(model.genres, scores, k, model.likely(scores))}
            genre_scores = dict(zip(model.genres, scores, strict=True))
            if all_scores:
                row["scores"] = {genre: round(score, 6) for genre, score in genre_scores.items()}
            rows.append(row)
            every_score.append((row, genre_scores))
            self.metrics.predictions.labels(year=str(year)).inc()
        means = departures(every_score)
        return {"poster_sha256": poster.sha256, "k": k, "years": rows, "unavailable_years": unavailable,
                "departures": {"margin": DEPARTURE_MARGIN, "margin_source": "fixed", "means": means},
                "warnings": list(poster.warnings)}
