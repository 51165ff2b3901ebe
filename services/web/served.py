"""Which model answers for which year: read from the model registry (blessed ``ModelVersion`` rows).

Names follow the contract: ``<prefix>-<year>`` answers for one year, ``<prefix>-<decade>s`` (a
decade window) for the ten years it lists, ``<prefix>-shared`` for every year in its ``years`` with a
year axis in its scores. The most specific model wins: year, then decade, then shared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import ModelVersion

YEAR_NAME = re.compile(r"^(\d{4})$")
DECADE_NAME = re.compile(r"^(\d{3}0)s$")


@dataclass(frozen=True)
class ServedModel:
    """A blessed model version and how to read its scores."""

    name: str
    version: int
    image_size: int
    genres: tuple[str, ...]
    # The year axis of a shared model's ``[batch, years, genres]`` scores; empty for ``[batch, genres]``.
    year_axis: tuple[int, ...]
    covered_years: tuple[int, ...]
    specificity: int  # 0 = one year, 1 = a decade, 2 = shared; lower wins

    def scores_for_year(self, scores: list[list[float]] | list[float], year: int) -> list[float]:
        """The genre scores of ``year`` out of one poster's scores (a row, or a years x genres matrix)."""
        if self.year_axis:
            matrix = scores
            return [float(value) for value in matrix[self.year_axis.index(year)]]  # type: ignore[union-attr]
        return [float(value) for value in scores]  # type: ignore[arg-type]


def served_model(row: ModelVersion, prefix: str) -> ServedModel | None:
    """How a registry row answers, or ``None`` when its name is not one of ``prefix``'s models."""
    if not row.name.startswith(prefix + "-"):
        return None
    suffix = row.name[len(prefix) + 1:]
    listed_years = tuple(int(year) for year in (row.years or []))
    genres = tuple(str(genre) for genre in (row.genres or []))
    covered: tuple[int, ...]
    axis: tuple[int, ...]
    if match := YEAR_NAME.match(suffix):
        covered, axis, specificity = (int(match.group(1)),), (), 0
    elif match := DECADE_NAME.match(suffix):
        start = int(match.group(1))
        covered, axis, specificity = listed_years or tuple(range(start, start + 10)), (), 1
    elif suffix == "shared" or row.layout == "shared":
        covered, axis, specificity = listed_years, listed_years, 2
    else:
        return None
    return ServedModel(row.name, row.version, row.image_size, genres, axis, covered, specificity)


def blessed_models(session: Session, prefix: str) -> list[ServedModel]:
    """Every blessed model of ``prefix``; a name with several blessed rows keeps its newest version."""
    rows = session.scalars(
        select(ModelVersion).where(ModelVersion.status == "blessed").order_by(ModelVersion.version)
    ).all()
    newest: dict[str, ServedModel] = {}
    for row in rows:
        model = served_model(row, prefix)
        if model is not None:
            newest[model.name] = model
    return sorted(newest.values(), key=lambda model: model.name)


def models_by_year(models: list[ServedModel], years: list[int]) -> dict[int, ServedModel]:
    """The model answering for each requested year that has one (the most specific)."""
    chosen: dict[int, ServedModel] = {}
    for model in sorted(models, key=lambda m: (m.specificity, m.name)):
        for year in model.covered_years:
            if year in years and year not in chosen:
                chosen[year] = model
    return chosen


def rank_genres(genres: tuple[str, ...], scores: list[float], k: int) -> list[tuple[str, float]]:
    """The ``k`` best genres with their scores, best first; ties broken by name so tables are stable."""
    ranked = sorted(zip([-float(score) for score in scores], genres, strict=True))  # no key function:
    return [(genre, -negated) for negated, genre in ranked[:k]]  # tuples compare in C, 20 years a table
