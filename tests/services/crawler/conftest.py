"""Fixtures of the crawler tests: the TMDB-compatible site, crawl subprocesses, catalogue snapshots."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from benchmarks.fakes.tmdb_site import TmdbSite, serve

REPO = Path(__file__).resolve().parents[3]

# Fast: no delay between requests and AutoThrottle off (tests that need it turn it on), retries
# pause briefly, and a request slower than 2 s counts as timed out.
FAST_CRAWL_ENV = {
    "POSTERGENRE_CRAWL_DELAY": "0",
    "POSTERGENRE_CRAWL_AUTOTHROTTLE": "false",
    "POSTERGENRE_CRAWL_AUTOTHROTTLE_START_DELAY": "0",
    "POSTERGENRE_CRAWL_BACKOFF_BASE": "0.1",
    "POSTERGENRE_CRAWL_TIMEOUT": "2",
    "POSTERGENRE_CRAWL_MIN_POSTER_WIDTH": "20",
    "POSTERGENRE_CRAWL_PROGRESS_INTERVAL": "1",
}


@dataclass
class RunningSite:
    site: TmdbSite
    api_url: str


@pytest.fixture
def make_site(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RunningSite]]:
    """Start a site; point TMDB_API_URL/TMDB_API_KEY and the fast crawl settings at it."""
    started: list[Any] = []

    def start(site: TmdbSite) -> RunningSite:
        context = serve(site)
        api_url = context.__enter__()
        started.append(context)
        monkeypatch.setenv("TMDB_API_URL", api_url)
        monkeypatch.setenv("TMDB_API_KEY", site.api_key)
        monkeypatch.delenv("TMDB_BEARER_TOKEN", raising=False)
        for name, value in FAST_CRAWL_ENV.items():
            monkeypatch.setenv(name, value)
        from shared.config import get_settings
        from shared.db import upgrade_database

        get_settings.cache_clear()
        # What a deployment's `postergenre db upgrade` does first: crawls only check the schema.
        upgrade_database(get_settings().effective_database_url)
        return RunningSite(site, api_url)

    yield start
    for context in reversed(started):
        context.__exit__(None, None, None)


def crawl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", "crawl", *args]


def run_crawl_process(*args: str, env: dict[str, str] | None = None,
                      timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``postergenre crawl ARGS`` in a subprocess (Twisted's reactor runs once per process)."""
    return subprocess.run(crawl_command(*args), cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def start_crawl_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(crawl_command(*args), cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@dataclass(frozen=True)
class CatalogSnapshot:
    movies: list[tuple[Any, ...]]
    rejections: list[tuple[str, str]]
    objects: list[str]


def catalog_snapshot(database_url: str, store: Any) -> CatalogSnapshot:
    """Every movie row (without timestamps and surrogate ids), rejection and poster object."""
    from shared.db import Movie, RejectedPoster, session_scope

    with session_scope(database_url) as session:
        movies = [(m.source, m.source_id, m.title, m.year, m.release_date, m.original_language, m.popularity,
                   m.poster_path, m.poster_key, m.poster_sha256, m.poster_width, m.poster_height,
                   m.poster_bytes, tuple(m.genre_names))
                  for m in session.scalars(select(Movie).order_by(Movie.source, Movie.source_id))]
        rejections = [(r.source_id, r.reason) for r in
                      session.scalars(select(RejectedPoster).order_by(RejectedPoster.source_id))]
    return CatalogSnapshot(movies, rejections, sorted(store.list("posters/")))
