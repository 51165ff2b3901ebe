"""``postergenre predict POSTER``: one poster's best genres under each year's model, as a table.

The poster is preprocessed with :func:`shared.images.poster_pixels` once per model input size, and
every model is asked at once through the inference client (``predict_many``). Which model answers
for which year comes from the model registry, by the rule the web service and ``postergenre evaluate``
follow (``shared.models.models_by_year``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from shared.config import Settings
from shared.images import poster_pixels
from shared.inference_client import BaseInferenceClient, InferenceError, ModelNotFound, connect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class YearRow:
    year: int
    model: str
    version: int
    top: list[tuple[str, float]]


@dataclass(frozen=True)
class PosterTable:
    rows: list[YearRow]
    unavailable_years: list[int]


@contextmanager
def inference_client(settings: Settings, url: str = "") -> Iterator[BaseInferenceClient]:
    """A client of ``url`` or ``settings.inference_url``; without either, of an embedded server
    started here over the registry's served versions (as the web service does)."""
    url = url or settings.inference_url
    if url:
        client = connect(url, settings.inference_timeout_s)
        try:
            yield client
        finally:
            client.close()
        return
    from services.inference.server import start_embedded

    server = start_embedded(settings, watch_registry=True)
    client = connect(server.url, settings.inference_timeout_s)
    try:
        yield client
    finally:
        client.close()
        server.stop(grace=0)


def predict_poster(
    data: bytes, years: list[int], k: int, settings: Settings, client: BaseInferenceClient
) -> PosterTable:
    """Ask every served model covering ``years`` about the poster ``data``."""
    from shared.db import session_scope
    from shared.genres import rank_genres
    from shared.models import blessed_models, models_by_year

    with session_scope(settings.effective_database_url) as session:
        models = blessed_models(session, settings.model_prefix)
    by_year = models_by_year(models, years)
    by_name = {model.name: model for model in by_year.values()}
    sizes = sorted({model.image_size for model in by_name.values()})
    pixels = {size: poster_pixels(data, size)[np.newaxis].astype(np.float32) for size in sizes}
    results = {}
    for size in sizes:
        names = [name for name, model in by_name.items() if model.image_size == size]
        results.update(client.predict_many(names, pixels[size]))
    rows, unavailable = [], []
    for year in years:
        model = by_year.get(year)
        result = results.get(model.name) if model else None
        if model is None or isinstance(result, ModelNotFound) or result is None:
            unavailable.append(year)
            continue
        if isinstance(result, InferenceError):
            raise result
        scores, version = result
        year_scores = model.scores_for_year(scores[0].tolist(), year)
        rows.append(YearRow(year, model.name, version, rank_genres(model.genres, year_scores, k)))
    return PosterTable(rows, unavailable)


def format_table(table: PosterTable) -> str:
    lines = [f"{'year':<6}{'model':<20}{'version':<9}top genres"]
    for row in table.rows:
        genres = ", ".join(f"{genre} {score:.2f}" for genre, score in row.top)
        lines.append(f"{row.year:<6}{row.model:<20}{row.version:<9}{genres}")
    if table.unavailable_years:
        lines.append("no model for: " + ", ".join(str(year) for year in table.unavailable_years))
    return "\n".join(lines)
