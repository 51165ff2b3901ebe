"""Item pipelines, one concern each, in the order of ``ITEM_PIPELINES``:

1. :class:`DuplicateMoviePipeline` drops a movie listed twice in one crawl (TMDB's popularity
   order shifts while it is paged).
2. :class:`GenrePipeline` turns TMDB genre ids into the stored genre names; unknown ids are kept.
3. :class:`StoredPosterPipeline` skips the download of a poster stored by an earlier crawl
   (same TMDB path, object present with the recorded size).
4. :class:`PosterPipeline` (Scrapy's media pipeline) downloads, validates and stores the poster.
5. :class:`CatalogPipeline` upserts the movie in the database, or records the rejection.

Blocking work (database, object store, image decoding) runs in worker threads
(``asyncio.to_thread``) so the crawl keeps downloading meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from io import BytesIO
from typing import Any

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.exceptions import DropItem
from scrapy.http import Response
from scrapy.http.request import NO_CALLBACK
from scrapy.pipelines.files import FilesPipeline
from scrapy.pipelines.media import FileException, FileInfo, FileInfoOrError, MediaPipeline

from services.crawler.items import (
    FAILED,
    NO_POSTER,
    REJECTED,
    STORED,
    UNCHANGED,
    UPDATED,
    DownloadedPoster,
    MovieItem,
    StoredPoster,
)
from services.crawler.store import ObjectFilesStore
from services.crawler.vocabulary import load_tmdb_genres, map_genre_ids
from shared.catalog import (
    EXTENSIONS,
    MovieRecord,
    attach_poster,
    clear_rejection,
    find_movie,
    poster_key,
    record_rejection,
    upsert_movie,
    validate_poster,
)
from shared.db import Movie, session_scope
from shared.images import PosterImageError, PosterInfo
from shared.storage import ObjectNotFoundError, ObjectStore

logger = logging.getLogger(__name__)

SOURCE = "tmdb"
NO_POSTER_REASON = "TMDB lists no poster"


def _database_url() -> str:
    from shared.config import get_settings

    return get_settings().effective_database_url


def _object_store() -> ObjectStore:
    from shared.storage import object_store_from_settings

    return object_store_from_settings()


class DuplicateMoviePipeline:
    def __init__(self) -> None:
        self.seen: set[int] = set()

    def process_item(self, item: MovieItem) -> MovieItem:
        if item.tmdb_id in self.seen:
            raise DropItem(f"movie {item.tmdb_id} listed twice in this crawl", log_level="DEBUG")
        self.seen.add(item.tmdb_id)
        return item


class GenrePipeline:
    """Genre names from the vocabulary the spider stored from ``/genre/movie/list``."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.names: dict[int, str] | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> GenrePipeline:
        return cls(_database_url())

    async def process_item(self, item: MovieItem) -> MovieItem:
        if self.names is None:
            # The spider stores the genre list before it asks for the first discover page.
            self.names = await asyncio.to_thread(load_tmdb_genres, self.database_url)
        item.genres, item.unknown_genre_ids = map_genre_ids(item.genre_ids, self.names)
        if item.unknown_genre_ids:
            logger.warning("movie %d has genre id(s) %s that TMDB's genre list lacks: kept as unknown",
                           item.tmdb_id, item.unknown_genre_ids)
        return item


class StoredPosterPipeline:
    """No download when the poster path is the one stored and the object is there, whole."""

    def __init__(self, store: ObjectStore, database_url: str) -> None:
        self.store = store
        self.database_url = database_url

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> StoredPosterPipeline:
        return cls(_object_store(), _database_url())

    def stored_poster(self, item: MovieItem) -> StoredPoster | None:
        with session_scope(self.database_url) as session:
            movie = find_movie(session, SOURCE, item.source_id)
            if (movie is None or movie.poster_path != item.poster_path or not movie.poster_key
                    or not movie.poster_sha256):
                return None
            key, sha256, size = movie.poster_key, movie.poster_sha256, movie.poster_bytes
        try:
            stored_size = self.store.size(key)
        except ObjectNotFoundError:
            return None
        if size is not None and stored_size != size:
            return None
        return StoredPoster(key=key, sha256=sha256)

    async def process_item(self, item: MovieItem) -> MovieItem:
        if item.poster_path:
            item.stored_poster = await asyncio.to_thread(self.stored_poster, item)
            if item.stored_poster is not None:
                item.poster_urls = []
        return item


class PosterRejected(FileException):
    """The poster was downloaded but is not usable; the message is the reason."""


def check_poster(data: bytes, min_width: int, min_height: int) -> tuple[PosterInfo, str]:
    """Validate poster bytes (``shared.catalog.validate_poster``); raise PosterRejected with the reason."""
    try:
        return validate_poster(data, min_width, min_height)
    except PosterImageError as exc:
        raise PosterRejected(str(exc)) from None


class PosterPipeline(FilesPipeline):
    """Scrapy's files pipeline, storing validated posters under ``shared.catalog.poster_key``.

    A poster that does not decode, is too small or is not an image is not stored: the item gets
    the reason (``rejection``). A download that fails after every retry sets ``failure`` instead,
    so that a later crawl tries again.
    """

    # Failures are logged here, once, with the movie; not again by MediaPipeline.
    LOG_FAILED_RESULTS = False

    def __init__(self, store_uri: str, *, crawler: Crawler, store: ObjectStore | None = None) -> None:
        self._object_store = store
        super().__init__(store_uri, crawler=crawler)
        self.min_width = crawler.settings.getint("POSTER_MIN_WIDTH", 1)
        self.min_height = crawler.settings.getint("POSTER_MIN_HEIGHT", 1)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> PosterPipeline:
        return cls(crawler.settings.get("FILES_STORE") or "objectstore:", crawler=crawler)

    def _get_store(self, uri: str) -> ObjectFilesStore:  # type: ignore[override]
        return ObjectFilesStore(self._object_store if self._object_store is not None else _object_store())

    def get_media_requests(self, item: MovieItem, info: MediaPipeline.SpiderInfo) -> list[Request]:
        return [Request(url, callback=NO_CALLBACK) for url in item.poster_urls]

    def media_to_download(self, request: Request, info: MediaPipeline.SpiderInfo, *,
                          item: Any = None) -> None:
        # StoredPosterPipeline already removed the URL of every poster that needs no download.
        return None

    async def media_downloaded(self, response: Response, request: Request, info: MediaPipeline.SpiderInfo,
                               *, item: Any = None) -> FileInfo:
        assert isinstance(item, MovieItem)
        if response.status in (404, 410):
            item.rejection = f"poster missing (HTTP {response.status})"
            return self._rejected(request)
        if response.status != 200:
            raise FileException(f"HTTP {response.status}")
        try:
            info_, phash = await asyncio.to_thread(check_poster, response.body, self.min_width,
                                                   self.min_height)
        except PosterRejected as exc:
            item.rejection = str(exc)
            logger.warning("poster of movie %d rejected (%s): %s", item.tmdb_id, exc, request.url)
            self.crawler.stats.inc_value("posters/rejected")  # type: ignore[union-attr]
            return self._rejected(request)
        key = poster_key(SOURCE, item.source_id, info_.sha256, EXTENSIONS[info_.format])
        assert isinstance(self.store, ObjectFilesStore)
        await self.store.persist_file(key, BytesIO(response.body), info,
                                      headers={"Content-Type": info_.content_type})
        item.downloaded_poster = DownloadedPoster(
            key=key, sha256=info_.sha256, phash=phash, format=info_.format, content_type=info_.content_type,
            width=info_.width, height=info_.height, size_bytes=info_.size_bytes)
        self.crawler.stats.inc_value("posters/stored")  # type: ignore[union-attr]
        return {"url": request.url, "path": key, "checksum": info_.sha256, "status": "downloaded"}

    @staticmethod
    def _rejected(request: Request) -> FileInfo:
        return {"url": request.url, "path": "", "checksum": None, "status": "rejected"}

    def media_failed(self, failure: Any, request: Request, info: MediaPipeline.SpiderInfo) -> Any:
        raise FileException(str(failure.value) or type(failure.value).__name__)

    def file_path(self, request: Request, response: Response | None = None,
                  info: MediaPipeline.SpiderInfo | None = None, *, item: Any = None) -> str:
        """The poster's content-addressed key (it needs the bytes, hence the response)."""
        if response is None or not isinstance(item, MovieItem):
            raise ValueError("a poster's key depends on its content: file_path needs the response")
        info_, _ = validate_poster(response.body)
        return poster_key(SOURCE, item.source_id, info_.sha256, EXTENSIONS[info_.format])

    def item_completed(self, results: list[FileInfoOrError], item: Any,
                       info: MediaPipeline.SpiderInfo) -> Any:
        assert isinstance(item, MovieItem)
        item.posters = [dict(result) for ok, result in results if ok]  # type: ignore[arg-type]
        for ok, result in results:
            if not ok and item.rejection is None:
                item.failure = str(result.value) or type(result.value).__name__  # type: ignore[union-attr]
                logger.error("poster of movie %d not downloaded: %s", item.tmdb_id, item.failure)
        # MediaPipeline caches every result for the whole crawl; each poster URL is fetched once per
        # crawl, so the cache only grows: forget this item's entries to keep memory flat.
        for url in item.poster_urls:
            info.downloaded.pop(self._fingerprinter.fingerprint(Request(url, callback=NO_CALLBACK)), None)
        return item


def movie_record(item: MovieItem) -> MovieRecord:
    return MovieRecord(
        source=SOURCE, source_id=item.source_id, title=item.title, year=item.year, genres=item.genres,
        release_date=item.release_date, original_language=item.original_language,
        popularity=item.popularity, poster_path=item.poster_path,
        extra={"tmdb_genre_ids": item.genre_ids, "unknown_genre_ids": item.unknown_genre_ids})


def movie_snapshot(movie: Movie | None) -> tuple[Any, ...] | None:
    """What a recrawl may change; equal snapshots mean the movie is unchanged."""
    if movie is None:
        return None
    return (movie.title, movie.year, movie.release_date, movie.original_language, movie.popularity,
            movie.poster_path, movie.poster_key, tuple(movie.genre_names), dict(movie.extra or {}))


class CatalogPipeline:
    """The movie's row (``shared.catalog``), with its poster; or the rejection and its reason."""

    def __init__(self, store: ObjectStore, database_url: str) -> None:
        self.store = store
        self.database_url = database_url

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CatalogPipeline:
        return cls(_object_store(), _database_url())

    def save(self, item: MovieItem) -> str:
        """Store the item; return its outcome (``items.STORED``, ``UPDATED``, ...)."""
        with session_scope(self.database_url) as session:
            if item.downloaded_poster is not None or item.stored_poster is not None:
                before = movie_snapshot(find_movie(session, SOURCE, item.source_id))
                movie, _ = upsert_movie(session, self.store, movie_record(item), None)
                poster = item.downloaded_poster
                if poster is not None:
                    attach_poster(movie, poster.key, PosterInfo(
                        poster.format, poster.content_type, poster.width, poster.height, poster.sha256,
                        poster.size_bytes), poster.phash)
                    clear_rejection(session, SOURCE, item.source_id)
                session.flush()
                after = movie_snapshot(movie)
                if before is None:
                    return STORED
                return UNCHANGED if before == after else UPDATED
            if item.rejection is not None:
                record_rejection(session, SOURCE, item.source_id, item.rejection,
                                 item.poster_urls[0] if item.poster_urls else None)
                return REJECTED
            if not item.poster_path:
                record_rejection(session, SOURCE, item.source_id, NO_POSTER_REASON)
                return NO_POSTER
        return FAILED

    async def process_item(self, item: MovieItem) -> MovieItem:
        item.outcome = await asyncio.to_thread(self.save, item)
        return item
