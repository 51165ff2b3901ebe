"""Each item pipeline on its own, through ``process_item`` (embedded mode: SQLite and a local folder)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from scrapy import Request
from scrapy.exceptions import DropItem
from scrapy.http import Response
from scrapy.utils.test import get_crawler
from sqlalchemy import select

from benchmarks.fakes.tmdb_site import TMDB_GENRE_LIST
from services.crawler.items import FAILED, NO_POSTER, REJECTED, STORED, UNCHANGED, UPDATED, MovieItem
from services.crawler.pipelines import (
    CatalogPipeline,
    DuplicateMoviePipeline,
    GenrePipeline,
    PosterPipeline,
    StoredPosterPipeline,
)
from services.crawler.spiders.tmdb import TmdbSpider
from services.crawler.vocabulary import sync_tmdb_genres
from shared.config import Settings
from shared.db import Movie, RejectedPoster, session_scope, upgrade_database
from shared.storage import ObjectStore, object_store_from_settings
from tests.conftest import make_poster

POSTER_URL = "http://images.test/t/p/w342/p603.jpg"


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    upgrade_database()
    sync_tmdb_genres(TMDB_GENRE_LIST)
    return object_store_from_settings()


def movie(tmdb_id: int = 603, **changes: Any) -> MovieItem:
    values: dict[str, Any] = dict(
        tmdb_id=tmdb_id, title="The Matrix", year=1999, rank=0, release_date=dt.date(1999, 3, 30),
        genre_ids=[28, 878], original_language="en", popularity=83.5, poster_path="/p603.jpg",
        poster_urls=[POSTER_URL])
    values.update(changes)
    return MovieItem(**values)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def poster_pipeline(store: ObjectStore) -> PosterPipeline:
    crawler = get_crawler(TmdbSpider, {"POSTER_MIN_WIDTH": 30, "POSTER_MIN_HEIGHT": 30})
    crawler.spider = crawler._create_spider(years=[1999])
    pipeline = PosterPipeline("objectstore:", crawler=crawler, store=store)
    pipeline.open_spider()
    return pipeline


def downloaded(pipeline: PosterPipeline, item: MovieItem, body: bytes, status: int = 200) -> dict[str, Any]:
    request = Request(item.poster_urls[0])
    response = Response(request.url, status=status, body=body, request=request)
    return dict(run(pipeline.media_downloaded(response, request, pipeline.spiderinfo, item=item)))


def test_duplicate_listings_are_dropped() -> None:
    pipeline = DuplicateMoviePipeline()
    assert pipeline.process_item(movie()).tmdb_id == 603
    with pytest.raises(DropItem, match="listed twice"):
        pipeline.process_item(movie())
    assert pipeline.process_item(movie(604)).tmdb_id == 604


def test_genre_ids_become_stored_names_and_unknown_ids_are_kept(store: ObjectStore,
                                                                settings: Settings) -> None:
    pipeline = GenrePipeline(settings.effective_database_url)
    item = run(pipeline.process_item(movie(genre_ids=[878, 28, 424242])))
    assert item.genres == ["Sci-Fi", "Action"]
    assert item.unknown_genre_ids == [424242]


def test_a_stored_poster_with_the_same_path_is_not_downloaded_again(store: ObjectStore,
                                                                    settings: Settings) -> None:
    url = settings.effective_database_url
    pipeline = StoredPosterPipeline(store, url)
    first = run(pipeline.process_item(movie()))
    assert first.stored_poster is None and first.poster_urls == [POSTER_URL]

    poster = poster_pipeline(store)
    item = movie()
    downloaded(poster, item, make_poster(1, (40, 60)))
    CatalogPipeline(store, url).save(item)
    again = run(pipeline.process_item(movie()))
    assert again.stored_poster is not None and again.poster_urls == []
    assert again.stored_poster.key == item.downloaded_poster.key  # type: ignore[union-attr]
    # A new path on TMDB means a new poster; a missing object means it must be fetched again.
    assert run(pipeline.process_item(movie(poster_path="/new.jpg"))).stored_poster is None
    store.delete(item.downloaded_poster.key)  # type: ignore[union-attr]
    assert run(pipeline.process_item(movie())).stored_poster is None


def test_poster_pipeline_stores_good_posters_and_rejects_bad_ones(store: ObjectStore) -> None:
    pipeline = poster_pipeline(store)
    good = movie()
    data = make_poster(3, (40, 60))
    result = downloaded(pipeline, good, data)
    poster = good.downloaded_poster
    assert poster is not None and result["path"] == poster.key and result["status"] == "downloaded"
    assert poster.key.startswith("posters/tmdb/603/") and poster.key.endswith(".jpg")
    assert (poster.width, poster.height, poster.size_bytes, poster.content_type) == (
        40, 60, len(data), "image/jpeg")
    assert store.get(poster.key) == data and good.rejection is None

    cases = {
        "not an image": (b"<html>oops</html>", 200),
        "poster too small: 20x30 (minimum 30x30)": (make_poster(4, (20, 30)), 200),
        "poster missing (HTTP 404)": (b"", 404),
    }
    for reason, (body, status) in cases.items():
        bad = movie(700)
        downloaded(pipeline, bad, body, status)
        assert (bad.rejection, bad.downloaded_poster) == (reason, None)
    assert list(store.list("posters/tmdb/700/")) == []


def test_poster_pipeline_process_item_without_a_download(store: ObjectStore) -> None:
    pipeline = poster_pipeline(store)
    item = run(pipeline.process_item(movie(poster_urls=[])))
    assert item.posters == [] and item.failure is None and item.downloaded_poster is None


def test_catalog_pipeline_records_each_outcome(store: ObjectStore, settings: Settings) -> None:
    url = settings.effective_database_url
    catalog = CatalogPipeline(store, url)
    poster = poster_pipeline(store)
    genres = GenrePipeline(url)

    def prepared(item: MovieItem, body: bytes | None = None) -> MovieItem:
        item = run(genres.process_item(item))
        if body is not None:
            downloaded(poster, item, body)
        return item

    # A rejected poster first: the rejection is recorded and no movie is stored.
    rejected = prepared(movie(), b"not a poster")
    assert run(catalog.process_item(rejected)).outcome == REJECTED
    with session_scope(url) as session:
        assert session.scalar(select(RejectedPoster.reason)) == "not an image"
        assert session.scalar(select(Movie)) is None

    # Then a good one: stored, and the old rejection forgotten.
    assert run(catalog.process_item(prepared(movie(), make_poster(5, (40, 60))))).outcome == STORED
    with session_scope(url) as session:
        row = session.scalar(select(Movie))
        assert row is not None and session.scalar(select(RejectedPoster)) is None
        assert (row.source, row.source_id, row.title, row.year, row.genre_names, row.poster_width) == (
            "tmdb", "603", "The Matrix", 1999, ["Action", "Sci-Fi"], 40)
        assert row.extra == {"tmdb_genre_ids": [28, 878], "unknown_genre_ids": []}
        key = row.poster_key

    # A recrawl: same metadata and poster -> unchanged; a new title -> updated.
    stored = StoredPosterPipeline(store, url)
    same = run(stored.process_item(prepared(movie())))
    assert run(catalog.process_item(same)).outcome == UNCHANGED
    renamed = run(stored.process_item(prepared(movie(title="The Matrix (1999)"))))
    assert run(catalog.process_item(renamed)).outcome == UPDATED
    with session_scope(url) as session:
        row = session.scalar(select(Movie))
        assert row is not None and row.title == "The Matrix (1999)" and row.poster_key == key

    no_poster = prepared(movie(42, poster_path=None, poster_urls=[]))
    assert run(catalog.process_item(no_poster)).outcome == NO_POSTER
    assert run(catalog.process_item(prepared(movie(43, failure="HTTP 503")))).outcome == FAILED
    with session_scope(url) as session:
        assert session.scalar(select(RejectedPoster.reason).where(RejectedPoster.source_id == "42")) == (
            "TMDB lists no poster")
        assert session.scalar(select(Movie).where(Movie.source_id == "43")) is None
