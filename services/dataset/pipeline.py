"""The dataset build, wired in one place.

Pure steps (no I/O), each a typed function in its own module::

    load_movies ─► check_genres ─► content_hash ─► genre_vocabulary ─► label_matrix
        ─► group_duplicates ─► assign_splits ─► per target: select window, skip small, balance_copies
        ─► manifest

then the I/O steps of :func:`build_dataset`: decode every poster once, write TFRecord shards, the report,
the manifest (written last: a version exists once its manifest does) and the ``DatasetVersion`` row.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.dataset.balance import (
    Bounds,
    balance_copies,
    bound_violations,
    composite_bounds,
    composite_codes,
)
from services.dataset.duplicates import group_duplicates
from services.dataset.metrics import record_posters, timed_build
from services.dataset.selection import (
    MovieTable,
    Vocabulary,
    check_genres,
    genre_vocabulary,
    label_matrix,
)
from services.dataset.split import assign_splits
from shared.dataset_params import SPLITS, BuildParams, DatasetInputError, window_targets
from shared.storage import ObjectStore

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]


@dataclass
class TargetPlan:
    name: str
    years: list[int]
    rows: dict[str, np.ndarray]  # split -> rows of the table, by movie id
    copies: np.ndarray  # balanced copies of each train row
    bounds: Bounds


@dataclass
class DatasetPlan:
    params: BuildParams
    dataset_id: str
    content_hash: str
    table: MovieTable
    vocabulary: Vocabulary
    labels: np.ndarray  # uint8 [N, G]
    groups: np.ndarray  # duplicate group of each row
    splits: np.ndarray  # split index of each row
    targets: dict[str, TargetPlan]
    skipped: dict[str, str]
    excluded: list[int] = field(default_factory=list)  # movie ids left without a vocabulary genre


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def content_hash(params: BuildParams, table: MovieTable) -> str:
    """SHA-256 over the parameters and, per movie, its id, year, poster SHA-256 and genres."""
    digest = hashlib.sha256(canonical_json(params.as_dict()))
    movies = [
        [int(m), int(y), s, g]
        for m, y, s, g in zip(table.movie_ids, table.years, table.sha256s, table.genres, strict=True)
    ]
    digest.update(canonical_json(movies))
    return digest.hexdigest()


def dataset_id_for(params: BuildParams, digest: str) -> str:
    """Readable and derived from the content: ``year-2000-2019-<12 hex>``."""
    return f"{params.window}-{params.first_year}-{params.last_year}-{digest[:12]}"


def plan_dataset(params: BuildParams, table: MovieTable) -> DatasetPlan:
    """Everything a build decides, without reading or writing anything."""
    if len(table) == 0:
        raise DatasetInputError(
            f"no movie with a poster in {params.first_year}-{params.last_year} ({params.window} windows)"
        )
    check_genres(table)
    digest = content_hash(params, table)
    vocabulary = genre_vocabulary(table.genres, params.min_genre_posters)
    if len(vocabulary.genres) < 2:
        raise DatasetInputError(
            f"only {len(vocabulary.genres)} genre(s) with at least {params.min_genre_posters} posters "
            f"({vocabulary.poster_counts}); a genre model needs two or more"
        )
    labels = label_matrix(table.genres, vocabulary.genres)
    has_label = labels.any(axis=1)
    excluded = [int(m) for m in table.movie_ids[~has_label]]
    if excluded:
        keep = np.flatnonzero(has_label)
        table, labels = table.take(keep), labels[keep]
    groups = group_duplicates(table.sha256s, table.phashes, params.max_phash_distance)
    splits = assign_splits(
        groups, table.years, labels, params.val_fraction, params.test_fraction, params.seed
    )
    codes = composite_codes(labels)
    targets: dict[str, TargetPlan] = {}
    skipped: dict[str, str] = {}
    for name, years in window_targets(params.window, params.years).items():
        in_window = np.isin(table.years, years)
        size = int(in_window.sum())
        if size < params.min_posters:
            skipped[name] = (
                f"{size} posters in {years[0]}-{years[-1]}, fewer than --min-posters {params.min_posters}"
            )
            continue
        present = int(labels[in_window].any(axis=0).sum())
        if present < 2:
            skipped[name] = f"only {present} genre present in {years[0]}-{years[-1]}"
            continue
        rows = {split: np.flatnonzero(in_window & (splits == index)) for index, split in enumerate(SPLITS)}
        train_codes = codes[rows["train"]]
        bounds = composite_bounds(
            len(train_codes), params.min_composite_fraction, params.max_composite_fraction
        )
        # One seed per target, so the balance of one target does not depend on which others are built.
        copies = balance_copies(
            train_codes,
            bounds,
            params.singleton_max_copies,
            seed=params.seed * 100_003 + int(years[0]) * 31 + len(years),
        )
        problems = bound_violations(train_codes, copies, bounds, params.singleton_max_copies)
        if problems:  # a bug, not bad input: never store a version that breaks its own rules
            raise RuntimeError(f"balancing of target {name} broke its bounds: {problems[:5]}")
        targets[name] = TargetPlan(name, list(years), rows, copies, bounds)
    if not targets:
        details = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise DatasetInputError(f"nothing to build: every target was skipped ({details})")
    return DatasetPlan(
        params,
        dataset_id_for(params, digest),
        digest,
        table,
        vocabulary,
        labels,
        groups,
        splits,
        targets,
        skipped,
        excluded,
    )


def genre_counts(labels: np.ndarray, genres: list[str], weights: np.ndarray | None = None) -> dict[str, int]:
    totals = (labels.astype(np.int64) * (1 if weights is None else weights[:, None])).sum(axis=0)
    return {name: int(n) for name, n in zip(genres, totals, strict=True)}


def target_manifest(plan: DatasetPlan, target: TargetPlan) -> dict[str, Any]:
    """The manifest entry of one target (shards are added when written)."""
    ids = plan.table.movie_ids
    train = target.rows["train"]
    balanced_ids = np.repeat(ids[train], target.copies)
    genres = plan.vocabulary.genres
    codes = composite_codes(plan.labels[train])
    composite_sizes = np.unique(codes, return_counts=True)[1]
    return {
        "years": target.years,
        # ndarray.tolist() gives Python ints, far faster than a comprehension over millions of ids.
        "splits": {split: ids[rows].tolist() for split, rows in target.rows.items()},
        "train_balanced": balanced_ids.tolist(),
        "augment": ids[train][target.copies > 1].tolist(),
        "shards": {},
        "counts": {
            "movies": {
                **{split: int(len(rows)) for split, rows in target.rows.items()},
                "train_balanced": int(target.copies.sum()),
            },
            "genres": {
                **{split: genre_counts(plan.labels[rows], genres) for split, rows in target.rows.items()},
                "train_balanced": genre_counts(plan.labels[train], genres, target.copies),
            },
            "bounds": {"lower": target.bounds.lower, "upper": target.bounds.upper},
            "composites": {
                "train": int(len(composite_sizes)),
                "singletons": int((composite_sizes == 1).sum()),
            },
        },
    }


def manifest_of(plan: DatasetPlan) -> dict[str, Any]:
    grouped = np.bincount(plan.groups) if len(plan.groups) else np.zeros(0, np.int64)
    return {
        "id": plan.dataset_id,
        "content_hash": plan.content_hash,
        "window": plan.params.window,
        "params": plan.params.as_dict(),
        "image_size": plan.params.image_size,
        "genres": plan.vocabulary.genres,
        "dropped_genres": plan.vocabulary.dropped,
        "excluded_movies": plan.excluded,
        "skipped": plan.skipped,
        "duplicates": {"groups": int((grouped > 1).sum()), "movies": int(grouped[grouped > 1].sum())},
        "targets": {name: target_manifest(plan, target) for name, target in plan.targets.items()},
    }


@dataclass
class BuildResult:
    dataset_id: str
    manifest: dict[str, Any]
    reused: bool

    def summary_lines(self) -> list[str]:
        """One line per target (and per skipped target), then ``dataset <id>``."""
        lines = []
        for name, info in self.manifest["targets"].items():
            movies = info["counts"]["movies"]
            years = info["years"]
            lines.append(
                f"target {name} ({years[0]}-{years[-1]}): train {movies['train']} "
                f"(balanced {movies['train_balanced']}), validation {movies['validation']}, "
                f"test {movies['test']}"
            )
        for name, reason in self.manifest.get("skipped", {}).items():
            lines.append(f"skipped {name}: {reason}")
        if self.reused:
            lines.append(f"same inputs and seed as an existing version: reused {self.dataset_id}")
        lines.append(f"dataset {self.dataset_id}")
        return lines


def _no_progress(_fraction: float, _message: str) -> None:
    return None


@timed_build
def build_dataset(
    params: BuildParams,
    store: ObjectStore,
    database_url: str | None = None,
    progress: Progress | None = None,
    decode_workers: int = 4,
) -> BuildResult:
    """Build (or find) the dataset version of ``params`` over the movies in the database."""
    from services.dataset.report import build_report, store_report
    from services.dataset.selection import load_movies
    from services.dataset.shards import decode_posters, put_immutable, write_split_shards
    from shared.dataset_manifest import manifest_key
    from shared.dataset_params import database_years, empty_selection
    from shared.db import session_scope

    report_progress = progress or _no_progress
    report_progress(1, "selecting movies")
    all_years = sorted({y for years in window_targets(params.window, params.years).values() for y in years})
    with session_scope(database_url) as session:
        table = load_movies(session, all_years)
        known = database_years(session)
    if len(table) == 0:
        raise empty_selection(params, all_years, known)
    check_genres(table)
    digest = content_hash(params, table)
    existing = _existing_version(store, database_url, digest)
    if existing is not None:
        report_progress(100, "reused")
        return BuildResult(str(existing["id"]), existing, reused=True)

    report_progress(5, "splitting and balancing")
    plan = plan_dataset(params, table)
    manifest = manifest_of(plan)
    needed = np.unique(np.concatenate([rows for t in plan.targets.values() for rows in t.rows.values()]))
    report_progress(10, f"decoding {len(needed)} posters")
    pixels_needed = decode_posters(
        store,
        [plan.table.poster_keys[int(i)] for i in needed],
        params.image_size,
        workers=decode_workers,
        progress=lambda done: report_progress(10 + 50 * done / max(1, len(needed)), "decoding posters"),
    )
    # Shard writers index by table row; map rows to their place in the decoded array.
    place = np.full(len(plan.table), -1, np.int64)
    place[needed] = np.arange(len(needed))
    total = len(plan.targets) * len(SPLITS)
    written = 0
    for name, target in plan.targets.items():
        for split, rows in target.rows.items():
            manifest["targets"][name]["shards"][split] = write_split_shards(
                store,
                plan.dataset_id,
                name,
                split,
                pixels_needed,
                place[rows],
                plan.labels[rows],
                plan.table.movie_ids[rows],
                plan.table.years[rows],
                params.shard_size,
            )
            written += 1
            report_progress(60 + 30 * written / total, f"writing shards of {name}")
    refused = {"no_kept_genre": len(plan.excluded), "outside_targets": len(plan.table) - len(needed)}
    record_posters(len(table), len(needed), refused)
    report_progress(92, "writing the report")
    report = build_report(plan, manifest)
    store_report(store, plan.dataset_id, report)
    put_immutable(store, manifest_key(plan.dataset_id), canonical_json(manifest), "application/json")
    _record_version(database_url, plan, manifest, report)
    report_progress(100, "done")
    return BuildResult(plan.dataset_id, manifest, reused=False)


def _existing_version(store: ObjectStore, database_url: str | None, digest: str) -> dict[str, Any] | None:
    """The manifest of the version with this content hash, if one was built (and completed)."""
    from sqlalchemy import select

    from shared.dataset_manifest import DatasetNotFoundError, load_manifest
    from shared.db import DatasetVersion, session_scope

    with session_scope(database_url) as session:
        row = session.scalar(select(DatasetVersion).where(DatasetVersion.content_hash == digest))
        dataset_id = None if row is None else row.id
    if dataset_id is None:
        return None
    try:
        return load_manifest(store, dataset_id)
    except DatasetNotFoundError:
        return None


def _record_version(
    database_url: str | None, plan: DatasetPlan, manifest: dict[str, Any], report: dict[str, Any]
) -> None:
    from sqlalchemy.exc import IntegrityError

    from shared.dataset_manifest import manifest_key
    from shared.db import DatasetVersion, session_scope

    summary = {
        name: {"years": info["years"], "counts": info["counts"]["movies"]}
        for name, info in manifest["targets"].items()
    }
    try:
        with session_scope(database_url) as session:
            if session.get(DatasetVersion, plan.dataset_id) is None:
                session.add(
                    DatasetVersion(
                        id=plan.dataset_id,
                        window=plan.params.window,
                        params=plan.params.as_dict(),
                        content_hash=plan.content_hash,
                        manifest_key=manifest_key(plan.dataset_id),
                        targets=summary,
                        report=report.get("summary", {}),
                    )
                )
    except IntegrityError:
        log.info("dataset %s was recorded by a concurrent build", plan.dataset_id)
