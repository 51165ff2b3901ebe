"""Crawls of the TMDB-compatible test site into real PostgreSQL and an S3-protocol server.

Each crawl runs as ``postergenre crawl`` in a subprocess, as users and the Celery task run it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from benchmarks.fakes.tmdb_site import Fault, TmdbSite
from services.cli import main
from shared.config import Settings, get_settings
from shared.db import Genre, Job, Movie, session_scope, upgrade_database
from shared.storage import object_store_from_settings, open_object_store
from tests import servers
from tests.services.crawler.conftest import (
    RunningSite,
    catalog_snapshot,
    run_crawl_process,
    start_crawl_process,
)


def movie_row(tmdb_id: int) -> Movie:
    with session_scope() as session:
        movie = session.scalar(select(Movie).where(Movie.source == "tmdb", Movie.source_id == str(tmdb_id)))
        assert movie is not None, f"movie {tmdb_id} not stored"
        return movie


def test_crawl_stores_movies_posters_rejections_and_recrawls_only_changes(
        stack_settings: Settings, make_site: Callable[..., RunningSite]) -> None:
    site = TmdbSite.generated(
        {2000: 30, 2001: 25},
        corrupt_posters={20000003}, tiny_posters={20000004}, missing_posters={20000005},
        malformed_movies={20010007}, extra_genre_ids={20000006: [99999]})
    site.by_id[20000008].has_poster = False
    make_site(site)

    done = run_crawl_process("--years", "2000-2001", "--job-id", "first")
    assert done.returncode == 0, done.stdout + done.stderr

    store = object_store_from_settings()
    snapshot = catalog_snapshot(stack_settings.effective_database_url, store)
    stored_ids = {int(row[1]) for row in snapshot.movies}
    expected = {m.id for m in site.movies} - {20000003, 20000004, 20000005, 20000008, 20010007}
    assert stored_ids == expected
    assert dict(snapshot.rejections) == {
        "20000003": "not an image",
        "20000004": "poster too small: 10x15 (minimum 20x1)",
        "20000005": "poster missing (HTTP 404)",
        "20000008": "TMDB lists no poster",
    }
    # Every stored movie has its poster object, under its content-addressed key, and nothing else.
    assert snapshot.objects == sorted(row[8] for row in snapshot.movies)
    movie = movie_row(20000001)
    source = site.by_id[20000001]
    assert (movie.title, movie.year, movie.release_date, movie.original_language, movie.popularity,
            movie.poster_path) == (source.title, 2000, source.release_date, source.original_language,
                                   source.popularity, source.poster_path)
    assert movie.poster_key == f"posters/tmdb/20000001/{movie.poster_sha256[:16]}.jpg"  # type: ignore[index]
    assert (movie.poster_width, movie.poster_height) == site.poster_size_px
    assert store.get(movie.poster_key or "") == site.poster_bytes(source)
    names = {18: "Drama", 878: "Sci-Fi", 10770: "TV Movie"}
    with session_scope() as session:
        genres = {g.tmdb_id: g.name for g in session.scalars(select(Genre))}
    assert {k: genres[k] for k in names} == names and len(genres) == 19
    # The unknown genre id is kept with the movie and reported, the known ones are stored.
    unknown = movie_row(20000006)
    assert unknown.extra["unknown_genre_ids"] == [99999]
    assert 99999 in unknown.extra["tmdb_genre_ids"]
    assert "unknown TMDB genre ids (movies): 99999 (1)" in done.stdout
    assert "20010007" in done.stderr and "genre_ids is not a list" in done.stderr
    with session_scope() as session:
        job = session.get(Job, "first")
        assert job is not None and job.state == "SUCCESS" and job.progress == 100.0
        assert job.counts["years"]["2000"]["stored"] == 26 and job.counts["years"]["2001"]["malformed"] == 1

    # A recrawl updates changed metadata and downloads only the poster that changed.
    site.by_id[20000001].title = "Renamed"
    site.change_poster(20000002)
    old_key = movie_row(20000002).poster_key
    posters_before = len(site.requests_to("/t/p/"))
    again = run_crawl_process("--years", "2000-2001", "--job-id", "second")
    assert again.returncode == 0, again.stdout + again.stderr
    poster_requests = site.requests_to("/t/p/")[posters_before:]
    # The changed poster, and the four rejected ones (a rejection is retried: settings may change).
    assert sorted(r.path for r in poster_requests) == sorted(
        ["/t/p/w342/p20000002v1.jpg", "/t/p/w342/p20000003.jpg", "/t/p/w342/p20000004.jpg",
         "/t/p/w342/p20000005.jpg"])
    assert movie_row(20000001).title == "Renamed"
    changed = movie_row(20000002)
    assert changed.poster_key != old_key and changed.poster_path == "/p20000002v1.jpg"
    assert store.exists(changed.poster_key or "")
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Movie)) == len(expected)
        job = session.get(Job, "second")
        assert job is not None
        assert job.counts["total"]["updated"] == 2 and job.counts["total"]["new"] == 0


def test_bad_key_stops_after_one_request_with_a_clear_error(
        settings: Settings, make_site: Callable[..., RunningSite], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    running = make_site(TmdbSite.generated({2000: 40}))
    monkeypatch.setenv("TMDB_API_KEY", "wrong")
    done = run_crawl_process("--years", "2000-2019", "--job-id", "badkey")
    assert done.returncode == 2
    assert "TMDB refused the credentials (HTTP 401: Invalid API key" in done.stderr
    assert "TMDB_API_KEY" in done.stderr and "wrong" not in done.stderr
    assert [r.path for r in running.site.log] == ["/3/configuration"]

    # No key at all: refused before the reactor starts, so it can run in this process.
    monkeypatch.delenv("TMDB_API_KEY")
    get_settings.cache_clear()
    assert main(["crawl", "--years", "2000", "--job-id", "nokey"]) == 2
    err = capsys.readouterr().err
    assert "set TMDB_API_KEY" in err and "TMDB_BEARER_TOKEN" in err
    assert len(running.site.log) == 1


def test_faults_are_retried_and_the_crawl_completes_politely(
        stack_settings: Settings, make_site: Callable[..., RunningSite],
        monkeypatch: pytest.MonkeyPatch) -> None:
    site = TmdbSite.generated({2002: 80}, faults=[
        Fault("429", "/3/discover/movie", count=1, retry_after="1", page=2),
        Fault("500", "/3/discover/movie", count=2, page=3),
        Fault("truncated", "/3/discover/movie", count=1, page=4),
        Fault("slow", "/3/discover/movie", count=1, delay=3.0, page=1),
        Fault("500", "/t/p/", count=2),
    ])
    make_site(site)
    monkeypatch.setenv("POSTERGENRE_CRAWL_AUTOTHROTTLE", "true")
    done = run_crawl_process("--years", "2002", "--max-movies-per-year", "70", "--job-id", "faults")
    assert done.returncode == 0, done.stdout + done.stderr
    # The 70 most popular movies of the 80, and not one page more than they need.
    with session_scope() as session:
        ids = set(session.scalars(select(Movie.source_id)))
    assert ids == {str(m.id) for m in sorted(site.movies, key=lambda m: -m.popularity)[:70]}
    pages = [(r.query.get("page"), r.status, r.fault, r.time) for r in site.requests_to("/3/discover/movie")]
    assert {p[0] for p in pages} == {"1", "2", "3", "4"}
    # 429: asked again, no sooner than Retry-After says.
    page2 = [p for p in pages if p[0] == "2"]
    assert [p[1] for p in page2] == [429, 200]
    assert page2[1][3] - page2[0][3] >= 0.9
    # Two 500s, then the page; the truncated page fetched again; the slow page timed out and retried.
    assert [p[1] for p in pages if p[0] == "3"] == [500, 500, 200]
    assert [p[2] for p in pages if p[0] == "4"] == ["truncated", ""]
    assert [p[2] for p in pages if p[0] == "1"] == ["slow", ""]
    assert "malformed JSON" in done.stderr and "fetching it again" in done.stderr
    assert len([r for r in site.requests_to("/t/p/") if r.status == 500]) == 2


def test_a_year_over_the_page_limit_is_split_by_release_date(
        stack_settings: Settings, make_site: Callable[..., RunningSite],
        monkeypatch: pytest.MonkeyPatch) -> None:
    site = TmdbSite.generated({2004: 130, 2005: 10}, max_page=2)
    make_site(site)
    monkeypatch.setenv("POSTERGENRE_CRAWL_MAX_PAGE", "2")
    # With the read access token instead of the API key: sent as a header, never in the query.
    monkeypatch.delenv("TMDB_API_KEY")
    monkeypatch.setenv("TMDB_BEARER_TOKEN", site.bearer_token)
    done = run_crawl_process("--years", "2004-2005", "--job-id", "split")
    assert done.returncode == 0, done.stdout + done.stderr
    with session_scope() as session:
        ids = set(session.scalars(select(Movie.source_id)))
    assert ids == {str(m.id) for m in site.movies}
    discover = site.requests_to("/3/discover/movie")
    assert all(r.status == 200 for r in discover), "no page beyond the limit was asked for"
    assert all("api_key" not in r.query for r in site.log)
    windows = {(r.query.get("primary_release_date.gte"), r.query.get("primary_release_date.lte"))
               for r in discover if "primary_release_date.gte" in r.query}
    assert ("2004-01-01", "2004-07-01") in windows and ("2004-07-02", "2004-12-31") in windows
    assert "split into" in done.stderr


def wait_for_movies(database_url: str, count: int, process: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the crawl ended before it could be interrupted"
        try:
            with session_scope(database_url) as session:
                if (session.scalar(select(func.count()).select_from(Movie)) or 0) >= count:
                    return
        except Exception:  # the schema is being created
            pass
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {count} movies after {timeout}s")


@pytest.mark.slow
def test_interrupted_crawls_resume_to_the_same_rows_and_objects(
        stack_settings: Settings, make_site: Callable[..., RunningSite], monkeypatch: pytest.MonkeyPatch,
        postgres_admin_url: str, s3_endpoint: str, tmp_path: Path) -> None:
    site = TmdbSite.generated({2007: 40, 2008: 40}, corrupt_posters={20070009})
    make_site(site)

    # The reference: one uninterrupted crawl.
    reference = run_crawl_process("--years", "2007-2008", "--job-id", "whole")
    assert reference.returncode == 0, reference.stdout + reference.stderr
    expected = catalog_snapshot(stack_settings.effective_database_url, object_store_from_settings())
    assert len(expected.movies) == 79 and expected.rejections == [("20070009", "not an image")]

    # Slower now, two requests at a time and about one discover page in progress, so that the
    # stops land mid-crawl.
    site.poster_delay = 0.03
    monkeypatch.setenv("POSTERGENRE_CRAWL_CONCURRENCY", "2")
    monkeypatch.setenv("POSTERGENRE_CRAWL_BUFFER_BYTES", "4000")

    # Another database, bucket and home: stopped with Ctrl-C, resumed, killed with -9, resumed.
    other_db = servers.create_database(postgres_admin_url)
    upgrade_database(other_db)
    try:
        env = {"POSTERGENRE_DATABASE_URL": other_db, "POSTERGENRE_OBJECT_STORE": "s3://resumed",
               "POSTERGENRE_HOME": str(tmp_path / "other-home")}
        process = start_crawl_process("--years", "2007-2008", "--job-id", "stop-go", env=env)
        wait_for_movies(other_db, 10, process)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
        assert process.returncode == 130, output
        assert (tmp_path / "other-home" / "crawls" / "stop-go" / "stopped-cleanly").exists()

        with session_scope(other_db) as session:
            after_stop = session.scalar(select(func.count()).select_from(Movie)) or 0
        assert after_stop + 10 < 79, "the clean stop should leave movies to resume"
        process = start_crawl_process("--years", "2007-2008", "--job-id", "stop-go", env=env)
        wait_for_movies(other_db, after_stop + 10, process)
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)

        resumed = run_crawl_process("--years", "2007-2008", "--job-id", "stop-go", env=env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "did not stop cleanly" in resumed.stderr
        settings = get_settings()
        store = open_object_store("s3://resumed", settings.s3_endpoint, settings.s3_access_key,
                                  settings.s3_secret_key)
        assert catalog_snapshot(other_db, store) == expected
        with session_scope(other_db) as session:
            job = session.get(Job, "stop-go")
            assert job is not None and job.state == "SUCCESS"
            assert job.counts["total"]["seen"] == 80
    finally:
        servers.drop_database(postgres_admin_url, other_db)
