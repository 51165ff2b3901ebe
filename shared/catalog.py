"""Storing movies and their posters: the validation and storage shared by ``import`` and the crawler."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import Genre, Movie, RejectedPoster
from shared.images import PosterInfo, open_poster, perceptual_hash
from shared.storage import ObjectStore

MIN_YEAR, MAX_YEAR = 1874, 2100


@dataclass
class MovieRecord:
    """What a source says about one movie, before it is stored."""

    source: str
    source_id: str
    title: str
    year: int
    genres: list[str]
    release_date: dt.date | None = None
    original_language: str | None = None
    popularity: float | None = None
    poster_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def poster_key(source: str, source_id: str, sha256: str, extension: str) -> str:
    """Deterministic, content-addressed key: a changed poster gets a new key, never overwrites one."""
    return f"posters/{source}/{source_id}/{sha256[:16]}.{extension}"


EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}


def check_year(value: Any) -> int:
    try:
        year = int(str(value).strip())
    except ValueError:
        raise ValueError(f"bad year {value!r}") from None
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise ValueError(f"bad year {year} (outside {MIN_YEAR}-{MAX_YEAR})")
    return year


def validate_poster(data: bytes, min_width: int = 1, min_height: int = 1) -> tuple[PosterInfo, str]:
    """Decode the poster; return its info and perceptual hash, or raise PosterImageError."""
    from shared.images import PosterImageError

    image, info = open_poster(data)
    if info.width < min_width or info.height < min_height:
        raise PosterImageError(
            f"poster too small: {info.width}x{info.height} (minimum {min_width}x{min_height})")
    return info, perceptual_hash(image)


def genre_rows(session: Session, names: list[str]) -> list[Genre]:
    rows = []
    for name in names:
        genre = session.scalar(select(Genre).where(Genre.name == name))
        if genre is None:
            genre = Genre(name=name)
            session.add(genre)
            session.flush()
        rows.append(genre)
    return rows


def find_movie(session: Session, source: str, source_id: str) -> Movie | None:
    return session.scalar(select(Movie).where(Movie.source == source, Movie.source_id == source_id))


def upsert_movie(session: Session, store: ObjectStore, record: MovieRecord, poster: bytes | None,
                 info: PosterInfo | None = None, phash: str | None = None) -> tuple[Movie, bool]:
    """Insert or update a movie and store its poster; returns (movie, poster_written).

    An unchanged poster (same checksum) is not written again.
    """
    movie = find_movie(session, record.source, record.source_id)
    if movie is None:
        movie = Movie(source=record.source, source_id=record.source_id, year=record.year, extra={})
        session.add(movie)
    movie.title = record.title
    movie.year = record.year
    movie.release_date = record.release_date
    movie.original_language = record.original_language
    movie.popularity = record.popularity
    movie.poster_path = record.poster_path
    movie.extra = {**(movie.extra or {}), **record.extra}
    movie.genres = genre_rows(session, record.genres)
    written = False
    if poster is not None:
        if info is None or phash is None:
            info, phash = validate_poster(poster)
        key = poster_key(record.source, record.source_id, info.sha256, EXTENSIONS[info.format])
        if movie.poster_sha256 != info.sha256 or not store.exists(key):
            store.put(key, poster, content_type=info.content_type)
            written = True
        attach_poster(movie, key, info, phash)
    session.flush()
    return movie, written


def attach_poster(movie: Movie, key: str, info: PosterInfo, phash: str) -> None:
    """Point a movie at its poster, already stored under ``key`` (the crawler stores it itself)."""
    movie.poster_key = key
    movie.poster_sha256 = info.sha256
    movie.poster_phash = phash
    movie.poster_width = info.width
    movie.poster_height = info.height
    movie.poster_bytes = info.size_bytes


def record_rejection(session: Session, source: str, source_id: str, reason: str,
                     url: str | None = None) -> None:
    row = session.scalar(select(RejectedPoster).where(RejectedPoster.source == source,
                                                      RejectedPoster.source_id == source_id))
    if row is None:
        session.add(RejectedPoster(source=source, source_id=source_id, reason=reason, url=url))
    else:
        row.reason, row.url = reason, url


def clear_rejection(session: Session, source: str, source_id: str) -> None:
    """Forget an earlier rejection once a good poster of the movie is stored."""
    row = session.scalar(select(RejectedPoster).where(RejectedPoster.source == source,
                                                      RejectedPoster.source_id == source_id))
    if row is not None:
        session.delete(row)
