"""Explanations: where a year's model looked for a genre (Grad-CAM), as a small array and an overlay.

The model's ``explain`` signature (docs/contracts.md) does the work on the inference server; this
module picks the year's model and head, asks it once per request, and draws the heatmap over the
poster. Every request asks for every genre of the model at once — one backbone pass whatever the
count, and the same input shape for every request to a model, which TF Serving's batching needs to
merge them (it does not pad: ``pad_variable_length_inputs: false``) — then keeps the one asked
for, or the six best ranked as the prediction table ranks them.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from services.web.errors import ApiError
from services.web.year_table import DEFAULT_K, DecodedPoster
from shared.genres import rank_genres
from shared.images import resize_pixels
from shared.inference_client import (
    BaseInferenceClient,
    InferenceError,
    InferenceUnavailable,
    ModelNotFound,
    SignatureNotFound,
)
from shared.models import ServedModel, models_by_year

log = logging.getLogger(__name__)

HEATMAP_DECIMALS = 3
# The overlay's longer side: big enough to see where the model looked on the page, small enough to
# keep the answer a few tens of kilobytes.
OVERLAY_MAX_SIDE = 320
OVERLAY_OPACITY = 0.55


def year_model(models: list[ServedModel], year: int) -> ServedModel:
    """The blessed model that answers ``year``, or a 404 naming the year."""
    chosen = models_by_year(models, [year]).get(year)
    if chosen is None:
        raise ApiError(404, "no_model_for_year", f"no blessed model answers the year {year}")
    return chosen


def genre_index(model: ServedModel, genre: str) -> int:
    """The index of ``genre`` (case-insensitive) among the model's genres, or a 422 listing them."""
    by_name = {name.casefold(): index for index, name in enumerate(model.genres)}
    index = by_name.get(genre.strip().casefold())
    if index is None:
        raise ApiError(422, "unknown_genre",
                       f"unknown genre {genre!r}: {model.name} knows {', '.join(model.genres)}")
    return index


def heat_colours(heatmap: np.ndarray) -> np.ndarray:
    """0..1 ``[H, W]`` -> RGB uint8 ``[H, W, 3]``: dark blue through cyan, yellow to red (a "jet"
    ramp, readable over any poster)."""
    t = np.clip(heatmap, 0.0, 1.0)[..., None]
    stops = np.array([0.0, 0.35, 0.65, 1.0])
    colours = np.array([[0, 0, 140], [0, 200, 255], [255, 230, 0], [220, 0, 0]], dtype=np.float64)
    rgb = np.stack([np.interp(t[..., 0], stops, colours[:, channel]) for channel in range(3)], axis=-1)
    return rgb.astype(np.uint8)


def overlay_png(image: Image.Image, heatmap: np.ndarray) -> str:
    """The heatmap, smoothly upsampled over the whole poster, blended in; a ``data:image/png`` URL.

    The model sees the poster squashed to a square, so the map covers the full poster as it is.
    """
    scale = OVERLAY_MAX_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    poster = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    grid = Image.fromarray(np.asarray(heatmap, dtype=np.float32))
    smooth = np.asarray(grid.resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    heat = Image.fromarray(heat_colours(smooth))
    # Opacity follows the heat, so where the model did not look the poster stays visible.
    alpha = np.clip(smooth, 0.0, 1.0) * OVERLAY_OPACITY * 255.0
    blended = Image.composite(heat, poster, Image.fromarray(alpha.astype(np.uint8)))
    buffer = io.BytesIO()
    blended.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ExplanationService:
    def __init__(self, inference_client: Callable[[], BaseInferenceClient]) -> None:
        self._inference_client = inference_client

    def explain(self, poster: DecodedPoster, year: int, genre: str | None, models: list[ServedModel]
                ) -> dict[str, Any]:
        """The API's answer (docs/api.md); blocking: run it in a worker thread."""
        model = year_model(models, year)
        asked = genre_index(model, genre) if genre is not None else None
        wanted = list(range(len(model.genres)))
        head = model.head(year) or 0
        pixels = resize_pixels(poster.image, model.image_size).astype(np.float32)[None]
        try:
            answer = self._inference_client().explain(model.name, pixels, [head], [wanted])
        except SignatureNotFound:
            raise ApiError(409, "explanations_unsupported",
                           f"{model.name} (the model of {year}) has no explanations: it was exported before "
                           "they existed; retrain it, or export it again, to explain it") from None
        except ModelNotFound as exc:
            raise ApiError(404, "no_model_for_year", f"the inference server does not serve {model.name} "
                           f"for {year}: {exc}") from None
        except InferenceUnavailable as exc:
            raise ApiError(503, "inference_unavailable",
                           f"the inference service is unavailable, try again later ({exc})") from None
        except InferenceError as exc:
            log.error("explanation by %s failed: %s", model.name, exc)
            raise ApiError(502, "inference_error", f"model {model.name} failed: {exc}") from None
        scores = [float(value) for value in answer.scores[0]]
        heatmaps = {index: answer.heatmaps[0, position] for position, index in enumerate(wanted)}
        if asked is None:
            chosen = [model.genres.index(name) for name, _ in rank_genres(model.genres, scores, DEFAULT_K)]
        else:
            chosen = [asked]
        grid = heatmaps[chosen[0]].shape
        return {
            "poster_sha256": poster.sha256, "year": year, "model": model.name, "version": answer.version,
            "grid": {"height": int(grid[0]), "width": int(grid[1])},
            "explanations": [
                {"genre": model.genres[index], "score": round(scores[index], 6),
                 "heatmap": np.round(heatmaps[index].astype(np.float64), HEATMAP_DECIMALS).tolist(),
                 "overlay_png": overlay_png(poster.image, heatmaps[index])}
                for index in chosen
            ],
        }
