"""TMDB API v3 as pure typed functions: URLs, the JSON documents the crawler reads, and date windows.

Nothing here does I/O, so each step of the crawl can be tested on its own. The spider
(:mod:`services.crawler.spiders.tmdb`) strings them together.

TMDB serves at most :data:`MAX_PAGE` pages of :data:`PAGE_SIZE` results per query (it answers
HTTP 422 above), so a year with more results is split into release-date windows
(:func:`split_window`) until each window fits.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from services.crawler.items import MovieItem

PAGE_SIZE = 20
MAX_PAGE = 500
DEFAULT_API_URL = "https://api.themoviedb.org/3"
POSTER_PATH = re.compile(r"^/[A-Za-z0-9._-]{1,200}$")


class TmdbFormatError(ValueError):
    """A TMDB document does not have the shape the API documents; the message says what is wrong."""


@dataclass(frozen=True)
class ImageConfig:
    """The part of ``/configuration`` the crawler needs: where images live and which sizes exist."""

    secure_base_url: str
    poster_sizes: tuple[str, ...]

    def poster_url(self, size: str, poster_path: str) -> str:
        return f"{self.secure_base_url.rstrip('/')}/{size}{poster_path}"


@dataclass(frozen=True)
class DateWindow:
    """Release dates ``start``..``end`` (inclusive) inside one year; the whole year when not split."""

    year: int
    start: dt.date
    end: dt.date

    @classmethod
    def whole_year(cls, year: int) -> DateWindow:
        return cls(year, dt.date(year, 1, 1), dt.date(year, 12, 31))

    @property
    def is_whole_year(self) -> bool:
        return self == DateWindow.whole_year(self.year)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def label(self) -> str:
        return str(self.year) if self.is_whole_year else f"{self.start.isoformat()}..{self.end.isoformat()}"

    def to_meta(self) -> list[Any]:
        """A picklable form for request meta (Scrapy's JOBDIR queues pickle requests)."""
        return [self.year, self.start.isoformat(), self.end.isoformat()]

    @classmethod
    def from_meta(cls, value: list[Any]) -> DateWindow:
        year, start, end = value
        return cls(int(year), dt.date.fromisoformat(start), dt.date.fromisoformat(end))


@dataclass(frozen=True)
class DiscoverPage:
    page: int
    total_pages: int
    total_results: int
    results: list[dict[str, Any]]


def api_url(base_url: str, path: str, params: Mapping[str, Any] | None = None, api_key: str = "") -> str:
    """``base_url + path`` with the query; the API key goes in the query when one is used."""
    query = dict(params or {})
    if api_key:
        query["api_key"] = api_key
    url = base_url.rstrip("/") + "/" + path.lstrip("/")
    return f"{url}?{urlencode(query)}" if query else url


def discover_params(window: DateWindow, page: int) -> dict[str, str]:
    """Query of ``/discover/movie`` for one page of a window, most popular first."""
    params = {"sort_by": "popularity.desc", "include_adult": "false", "page": str(page)}
    if window.is_whole_year:
        params["primary_release_year"] = str(window.year)
    else:
        params["primary_release_date.gte"] = window.start.isoformat()
        params["primary_release_date.lte"] = window.end.isoformat()
    return params


def split_window(window: DateWindow) -> tuple[DateWindow, DateWindow] | None:
    """Halve a window by release date; ``None`` for a single day, which cannot be split."""
    if window.start >= window.end:
        return None
    middle = window.start + dt.timedelta(days=(window.end - window.start).days // 2)
    return (DateWindow(window.year, window.start, middle),
            DateWindow(window.year, middle + dt.timedelta(days=1), window.end))


def pages_needed(total_results: int, total_pages: int, limit: int | None, page_size: int = PAGE_SIZE) -> int:
    """How many pages hold the first ``limit`` results (every page when there is no limit)."""
    if limit is None:
        return total_pages
    wanted = min(total_results, limit)
    return min(total_pages, math.ceil(wanted / page_size)) if wanted > 0 else 0


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise TmdbFormatError(f"{where}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise TmdbFormatError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def parse_configuration(data: Any) -> ImageConfig:
    if not isinstance(data, dict):
        raise TmdbFormatError("/configuration: not a JSON object")
    images = _require(data, "images", dict, "/configuration")
    base = images.get("secure_base_url") or images.get("base_url")
    if not isinstance(base, str) or not base.startswith(("http://", "https://")):
        raise TmdbFormatError("/configuration: images.secure_base_url is not an http(s) URL")
    sizes = _require(images, "poster_sizes", list, "/configuration images")
    if not sizes or not all(isinstance(size, str) for size in sizes):
        raise TmdbFormatError("/configuration: images.poster_sizes is not a list of names")
    return ImageConfig(base, tuple(sizes))


def parse_genre_list(data: Any) -> dict[int, str]:
    """``/genre/movie/list`` as ``{tmdb id: name}``."""
    if not isinstance(data, dict):
        raise TmdbFormatError("/genre/movie/list: not a JSON object")
    genres: dict[int, str] = {}
    for entry in _require(data, "genres", list, "/genre/movie/list"):
        if not isinstance(entry, dict):
            raise TmdbFormatError("/genre/movie/list: an entry is not an object")
        genre_id = _require(entry, "id", int, "/genre/movie/list entry")
        name = _require(entry, "name", str, "/genre/movie/list entry").strip()
        if not name:
            raise TmdbFormatError(f"/genre/movie/list: genre {genre_id} has an empty name")
        genres[genre_id] = name
    return genres


def parse_discover_page(data: Any) -> DiscoverPage:
    if not isinstance(data, dict):
        raise TmdbFormatError("/discover/movie: not a JSON object")
    where = "/discover/movie"
    results = _require(data, "results", list, where)
    return DiscoverPage(page=_require(data, "page", int, where),
                        total_pages=_require(data, "total_pages", int, where),
                        total_results=_require(data, "total_results", int, where),
                        results=[r for r in results if isinstance(r, dict)])


def parse_release_date(value: Any) -> dt.date | None:
    """TMDB writes ``"2005-03-12"``, or ``""`` / ``null`` when unknown."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise TmdbFormatError(f"release_date has type {type(value).__name__}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise TmdbFormatError(f"bad release_date {value!r}") from None


def movie_from_result(result: Mapping[str, Any], window: DateWindow, rank: int,
                      image_config: ImageConfig, poster_size: str) -> MovieItem:
    """One ``/discover/movie`` result as a :class:`MovieItem`; raise TmdbFormatError when unusable.

    The year is the discover query's year: TMDB's ``primary_release_year`` filter is what put the
    movie in this year, and ``release_date`` may be blank.
    """
    movie_id = result.get("id")
    if not isinstance(movie_id, int) or isinstance(movie_id, bool) or movie_id <= 0:
        raise TmdbFormatError(f"movie id {movie_id!r} is not a positive integer")
    where = f"movie {movie_id}"
    title = result.get("title") or result.get("original_title") or ""
    if not isinstance(title, str):
        raise TmdbFormatError(f"{where}: title has type {type(title).__name__}")
    genre_ids = result.get("genre_ids") or []
    if not isinstance(genre_ids, list) or not all(
            isinstance(g, int) and not isinstance(g, bool) for g in genre_ids):
        raise TmdbFormatError(f"{where}: genre_ids is not a list of integers")
    try:
        release_date = parse_release_date(result.get("release_date"))
    except TmdbFormatError as exc:
        raise TmdbFormatError(f"{where}: {exc}") from None
    language = result.get("original_language")
    popularity = result.get("popularity")
    if popularity is not None and (not isinstance(popularity, int | float) or isinstance(popularity, bool)):
        raise TmdbFormatError(f"{where}: popularity has type {type(popularity).__name__}")
    poster_path = result.get("poster_path")
    if poster_path is not None and (not isinstance(poster_path, str)
                                    or not POSTER_PATH.fullmatch(poster_path)):
        raise TmdbFormatError(f"{where}: bad poster_path {poster_path!r}")
    return MovieItem(
        tmdb_id=movie_id,
        title=title.strip(),
        year=window.year,
        rank=rank,
        release_date=release_date,
        genre_ids=list(dict.fromkeys(genre_ids)),
        original_language=language if isinstance(language, str) and language else None,
        popularity=float(popularity) if popularity is not None else None,
        poster_path=poster_path,
        poster_urls=[image_config.poster_url(poster_size, poster_path)] if poster_path else [],
    )


def error_message(body: bytes) -> str:
    """TMDB's ``status_message`` from an error body, or the start of the body."""
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        message = data.get("status_message") or data.get("errors")
        if message:
            return str(message)
    return body[:200].decode("utf-8", "replace").strip()


_API_KEY_IN_TEXT = re.compile(r"(api_key=)[^&\s>'\"]+")


def redact(text: str) -> str:
    """Hide the API key in a URL or a log line."""
    return _API_KEY_IN_TEXT.sub(r"\1***", text)
