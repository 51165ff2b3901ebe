"""Selecting the movies of a build from the database, and the genre vocabulary.

Only movies with a stored poster take part. A movie with no genre at all is an error in the data
(the importer refuses them; a crawler bug or a hand edit could store one): the build stops and
names it rather than silently training on an all-zero label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.dataset_params import DatasetInputError
from shared.db import Genre, Movie, movie_genres


@dataclass
class MovieTable:
    """The selected movies as columns (row ``i`` is one movie), sorted by movie id."""

    movie_ids: np.ndarray  # int64
    years: np.ndarray  # int64
    sha256s: list[str]
    phashes: list[str | None]
    poster_keys: list[str]
    genres: list[list[str]]  # sorted genre names of each movie

    def __len__(self) -> int:
        return len(self.movie_ids)

    def take(self, rows: np.ndarray) -> MovieTable:
        index = [int(r) for r in rows]
        return MovieTable(
            self.movie_ids[rows],
            self.years[rows],
            [self.sha256s[i] for i in index],
            [self.phashes[i] for i in index],
            [self.poster_keys[i] for i in index],
            [self.genres[i] for i in index],
        )


def movie_table(rows: Iterable[tuple[int, int, str, str | None, str, Sequence[str]]]) -> MovieTable:
    """Build a table from ``(movie_id, year, sha256, phash, poster_key, genres)`` tuples."""
    ordered = sorted(rows, key=lambda row: row[0])
    return MovieTable(
        movie_ids=np.array([r[0] for r in ordered], dtype=np.int64),
        years=np.array([r[1] for r in ordered], dtype=np.int64),
        sha256s=[r[2] for r in ordered],
        phashes=[r[3] for r in ordered],
        poster_keys=[r[4] for r in ordered],
        genres=[sorted(set(r[5])) for r in ordered],
    )


def load_movies(session: Session, years: Iterable[int]) -> MovieTable:
    """Every movie with a poster released in ``years``, with its genres (two queries, no ORM objects)."""
    wanted = sorted(set(years))
    if not wanted:
        return movie_table([])
    rows = session.execute(
        select(Movie.id, Movie.year, Movie.poster_sha256, Movie.poster_phash, Movie.poster_key).where(
            Movie.year >= wanted[0],
            Movie.year <= wanted[-1],
            Movie.poster_key.is_not(None),
            Movie.poster_sha256.is_not(None),
        )
    ).all()
    wanted_set = set(wanted)
    rows = [r for r in rows if r.year in wanted_set]
    genres: dict[int, list[str]] = {r.id: [] for r in rows}
    links = session.execute(
        select(movie_genres.c.movie_id, Genre.name)
        .join(Genre, Genre.id == movie_genres.c.genre_id)
        .join(Movie, Movie.id == movie_genres.c.movie_id)
        .where(Movie.year >= wanted[0], Movie.year <= wanted[-1])
    ).all()
    for movie_id, name in links:
        if movie_id in genres:
            genres[movie_id].append(name)
    return movie_table(
        (r.id, r.year, r.poster_sha256, r.poster_phash, r.poster_key, genres[r.id]) for r in rows
    )


def check_genres(table: MovieTable) -> None:
    """Raise :class:`DatasetInputError` naming the movies that have no genre."""
    missing = [
        int(movie_id) for movie_id, names in zip(table.movie_ids, table.genres, strict=True) if not names
    ]
    if missing:
        shown = ", ".join(str(m) for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DatasetInputError(
            f"{len(missing)} movie(s) have no genre (inconsistent labels): movie id(s) "
            f"{shown}. Fix or delete them, then build again."
        )


@dataclass(frozen=True)
class Vocabulary:
    genres: list[str]  # sorted names kept
    dropped: dict[str, int]  # genre -> posters, for genres under the minimum
    poster_counts: dict[str, int]  # every genre present -> posters


def genre_vocabulary(genres: Sequence[Sequence[str]], min_genre_posters: int) -> Vocabulary:
    """Sorted genre names present in the selection, without those on fewer than ``min_genre_posters``."""
    counts = Counter(name for names in genres for name in names)
    kept = sorted(name for name, n in counts.items() if n >= min_genre_posters)
    dropped = {name: n for name, n in sorted(counts.items()) if n < min_genre_posters}
    return Vocabulary(kept, dropped, dict(sorted(counts.items())))


def label_matrix(genres: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> np.ndarray:
    """Multi-hot ``uint8 [N, G]`` over the vocabulary (genres outside it are ignored)."""
    column = {name: j for j, name in enumerate(vocabulary)}
    labels = np.zeros((len(genres), len(vocabulary)), dtype=np.uint8)
    for i, names in enumerate(genres):
        for name in names:
            j = column.get(name)
            if j is not None:
                labels[i, j] = 1
    return labels
