"""``postergenre evaluate``: the blessed models on any labelled folder (the import layout).

Each poster is scored by the model that answers its year on the page (``shared.models.models_by_year``:
the year's own model, else the rolling window centred on it, else its decade, else the shared model's
head for that year). Posters with no such model are counted and skipped. F1 uses each model's
thresholds tuned on its validation split; the year-prior baseline uses the genre frequencies of the
model's training split, as during training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.trainer import metrics as metric_fns
from shared.images import PosterImageError, poster_pixels
from shared.models import models_by_year, newest_served, version_prefix
from shared.storage import ObjectStore, download_prefix

logger = logging.getLogger(__name__)


@dataclass
class LabelledPoster:
    movie_id: str
    year: int
    genres: list[str]
    data: bytes


@dataclass
class ServedYear:
    """How one year is answered: a model version and, for the shared model, the head index."""

    row: dict[str, Any]
    head: int | None


def read_folder(folder: Path) -> tuple[list[LabelledPoster], list[str]]:
    """Good rows of ``labels.csv`` (import layout) and the reasons of the rows left out."""
    from shared.poster_folder import parse_row, read_labels

    posters, problems = [], []
    for row in read_labels(folder):
        try:
            record, data = parse_row(folder, row)
        except ValueError as exc:
            problems.append(f"row {row.row} ({row.movie_id or '?'}): {exc}")
            continue
        posters.append(LabelledPoster(record.source_id, record.year, list(record.genres), data))
    return posters, problems


def year_routing(blessed: list[dict[str, Any]], prefix: str) -> dict[int, ServedYear]:
    """For every year some blessed model answers, which one: the rule the page and ``predict`` follow
    (:func:`shared.models.models_by_year`: year, rolling window, decade, shared)."""
    ordered = sorted(blessed, key=lambda row: int(row["version"]))
    row_of = {str(row["name"]): row for row in ordered}  # the newest version of each name
    return {year: ServedYear(row_of[model.name], model.head(year))
            for year, model in models_by_year(newest_served(ordered, prefix)).items()}


class LocalModels:
    """Blessed SavedModels, fetched from the object store once, called through their ``pixels`` signature."""

    def __init__(self, store: ObjectStore, cache: Path) -> None:
        self.store = store
        self.cache = cache
        self.loaded: dict[tuple[str, int], Any] = {}

    def scores(self, row: dict[str, Any], pixels: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        key = (row["name"], int(row["version"]))
        if key not in self.loaded:
            folder = self.cache / row["name"] / str(row["version"])
            if not (folder / "saved_model.pb").is_file():
                download_prefix(self.store, version_prefix(row["name"], int(row["version"]),
                                                           row.get("exports")) + "/", folder)
            self.loaded[key] = tf.saved_model.load(str(folder)).signatures["pixels"]
        signature = self.loaded[key]
        outputs = [signature(pixels=tf.constant(pixels[i:i + 64], tf.float32))["scores"].numpy()
                   for i in range(0, len(pixels), 64)]
        return np.concatenate(outputs)


def train_priors(store: ObjectStore, row: dict[str, Any]) -> list[np.ndarray] | None:
    """Genre frequencies of each target's train split (one per head), or ``None`` if the dataset is gone."""
    from shared.dataset_manifest import DatasetNotFoundError, load_manifest
    from shared.dataset_reader import load_arrays

    try:
        manifest = load_manifest(store, str(row["dataset_version"]))
        targets = (row.get("metrics") or {}).get("targets") or \
            ([str(y) for y in row["years"]] if row["layout"] == "shared" else
             [row["name"].rsplit("-", 1)[-1]])
        return [metric_fns.genre_frequencies(load_arrays(store, manifest, target, "train")[1])
                for target in targets]
    except (DatasetNotFoundError, KeyError) as exc:
        logger.warning("no year prior for %s: %s", row["name"], exc)
        return None


def evaluate_folder(folder: Path, blessed: list[dict[str, Any]], store: ObjectStore, cache: Path,
                    prefix: str = "genre",
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The metrics of the blessed models on ``folder``: overall, baselines and per year.

    ``progress(done, total)`` is called as the posters a model answers for are scored, year by year.
    """
    posters, problems = read_folder(folder)
    routing = year_routing(blessed, prefix)
    vocabulary = sorted({str(g) for row in blessed for g in row["genres"]})
    if not vocabulary:
        raise ValueError("no blessed model: train one first (postergenre train)")
    column = {genre: index for index, genre in enumerate(vocabulary)}
    models = LocalModels(store, cache)
    priors_of: dict[str, list[np.ndarray] | None] = {}

    labels, scores, prior_scores, years, thresholds, skipped = [], [], [], [], [], 0
    by_year: dict[int, list[LabelledPoster]] = {}
    for poster in posters:
        if poster.year in routing:
            by_year.setdefault(poster.year, []).append(poster)
        else:
            skipped += 1
    total, done = sum(len(group) for group in by_year.values()), 0
    if progress is not None:
        progress(done, total)
    for year, group in sorted(by_year.items()):
        if progress is not None and done:
            progress(done, total)
        done += len(group)
        served = routing[year]
        row = served.row
        pixels, kept = [], []
        for poster in group:
            try:
                pixels.append(poster_pixels(poster.data, int(row["image_size"])))
                kept.append(poster)
            except PosterImageError as exc:
                problems.append(f"{poster.movie_id}: {exc}")
        if not kept:
            continue
        raw = models.scores(row, np.stack(pixels).astype(np.float32))
        if raw.ndim == 3:
            raw = raw[:, served.head]
        model_columns = [column[g] for g in row["genres"]]
        year_scores = np.zeros((len(kept), len(vocabulary)))
        year_scores[:, model_columns] = raw
        year_labels = np.zeros((len(kept), len(vocabulary)))
        for i, poster in enumerate(kept):
            for genre in poster.genres:
                if genre in column:
                    year_labels[i, column[genre]] = 1.0
        model_thresholds = np.full(len(vocabulary), 1.0 + 1e-9)  # a genre the model lacks is never predicted
        for genre, value in ((row.get("metrics") or {}).get("thresholds") or {}).items():
            if genre in column:
                model_thresholds[column[genre]] = float(value)
        if row["name"] not in priors_of:
            priors_of[row["name"]] = train_priors(store, row)
        priors = priors_of[row["name"]]
        prior = np.zeros(len(vocabulary))
        if priors is not None:
            prior[model_columns] = priors[served.head or 0]
        labels.append(year_labels)
        scores.append(year_scores)
        prior_scores.append(np.repeat(prior[None, :], len(kept), axis=0))
        years.append(np.full(len(kept), year))
        thresholds.append(np.repeat(model_thresholds[None, :], len(kept), axis=0))
    if progress is not None:
        progress(done, total)
    if not labels:
        raise ValueError(f"no poster of {folder} has a year answered by a blessed model "
                         f"(years with models: {sorted(routing) or 'none'})")
    all_labels, all_scores = np.concatenate(labels), np.concatenate(scores)
    all_years, all_thresholds = np.concatenate(years), np.concatenate(thresholds)
    all_prior = np.concatenate(prior_scores)

    def block(mask: np.ndarray, which: np.ndarray, row_thresholds: np.ndarray = all_thresholds
              ) -> dict[str, Any]:
        return _evaluate_rows(all_labels[mask], which[mask], row_thresholds[mask], vocabulary)

    # The baselines were never tuned: they predict a genre above 0.5 (no genre predicts none).
    half = np.full_like(all_thresholds, metric_fns.DEFAULT_THRESHOLD)
    everything = np.ones(len(all_labels), bool)
    result: dict[str, Any] = {
        "overall": block(everything, all_scores),
        "baselines": {"year_prior": block(everything, all_prior, half),
                      "no_genre": block(everything, np.zeros_like(all_scores), half)},
        "per_year": {str(year): metric_fns.summary(block(all_years == year, all_scores))
                     for year in sorted(set(all_years.tolist()))},
        "posters": int(len(all_labels)), "skipped_no_model": skipped, "problems": problems[:50],
        "models": sorted({f"{r.row['name']}:{r.row['version']}" for r in routing.values()}),
        "genres": vocabulary,
    }
    return result


def _evaluate_rows(labels: np.ndarray, scores: np.ndarray, thresholds: np.ndarray,
                   genres: list[str]) -> dict[str, Any]:
    """:func:`metrics.evaluate_scores`, with per-row thresholds (each poster's model has its own)."""
    result = metric_fns.evaluate_scores(labels, scores, genres)
    # F1 with each row's own thresholds: shift scores so that a common threshold of 0 applies.
    micro, macro = metric_fns.f1_scores(labels, scores - thresholds, np.zeros(len(genres)))
    result["micro_f1"], result["macro_f1"] = micro, macro
    result.pop("per_genre", None)
    return result
