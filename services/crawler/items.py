"""What the crawler carries from the spider through the pipelines.

A :class:`MovieItem` starts as one ``/discover/movie`` result; each pipeline fills in its part
(genre names, the stored poster, the downloaded poster, the outcome), in the order of
``ITEM_PIPELINES`` in :mod:`services.crawler.settings`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

# What became of a movie; the per-year counts are kept by these names.
STORED = "stored"  # new movie with its poster
UPDATED = "updated"  # known movie whose metadata or poster changed
UNCHANGED = "unchanged"  # known movie, same metadata, poster not downloaded again
REJECTED = "rejected"  # poster does not decode, is too small, is not an image, or is missing
NO_POSTER = "no_poster"  # TMDB lists no poster for the movie
FAILED = "failed"  # poster download failed after every retry; a rerun tries again
MALFORMED = "malformed"  # the discover result could not be read
OUTCOMES = (STORED, UPDATED, UNCHANGED, REJECTED, NO_POSTER, FAILED, MALFORMED)
# Outcomes after which the movie has a stored poster.
HAS_POSTER = (STORED, UPDATED, UNCHANGED)


@dataclass(frozen=True)
class StoredPoster:
    """A poster already in the object store (from an earlier crawl) for the same TMDB path."""

    key: str
    sha256: str


@dataclass(frozen=True)
class DownloadedPoster:
    """A poster that decoded and passed validation, written to the object store under ``key``."""

    key: str
    sha256: str
    phash: str
    format: str
    content_type: str
    width: int
    height: int
    size_bytes: int


@dataclass
class MovieItem:
    tmdb_id: int
    title: str
    year: int
    rank: int
    release_date: dt.date | None = None
    genre_ids: list[int] = field(default_factory=list)
    original_language: str | None = None
    popularity: float | None = None
    poster_path: str | None = None
    # Filled by GenrePipeline.
    genres: list[str] = field(default_factory=list)
    unknown_genre_ids: list[int] = field(default_factory=list)
    # Scrapy's media pipeline reads poster_urls and writes posters (FILES_*_FIELD settings).
    poster_urls: list[str] = field(default_factory=list)
    posters: list[dict[str, Any]] = field(default_factory=list)
    # Filled by StoredPosterPipeline / PosterPipeline.
    stored_poster: StoredPoster | None = None
    downloaded_poster: DownloadedPoster | None = None
    rejection: str | None = None
    failure: str | None = None
    # Filled by CatalogPipeline.
    outcome: str = ""

    @property
    def source_id(self) -> str:
        return str(self.tmdb_id)
