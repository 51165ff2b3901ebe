"""The crawl's bookkeeping: job folders, options, progress counts, the genre vocabulary."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from services.crawler.items import MALFORMED, NO_POSTER, REJECTED, STORED, UNCHANGED
from services.crawler.progress import progress_line, record_outcome, summarize, summary_table
from services.crawler.runner import (
    CLEAN_MARKER,
    CrawlError,
    CrawlOptions,
    RedactApiKey,
    check_credentials,
    check_options,
    job_lock,
    prepare_job_dir,
)
from services.crawler.settings import CrawlSettings
from services.crawler.vocabulary import load_tmdb_genres, map_genre_ids, sync_tmdb_genres
from shared.config import Settings
from shared.db import Genre, session_scope, upgrade_database


def scrapy_state(folder: Path) -> None:
    (folder / "requests.queue").mkdir(parents=True)
    (folder / "requests.queue" / "p0").write_text("queued")
    (folder / "requests.seen").write_text("fingerprints")
    (folder / "spider.state").write_bytes(b"pickle")


def test_state_of_a_clean_stop_is_kept_and_of_a_crash_discarded(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    scrapy_state(clean)
    (clean / CLEAN_MARKER).write_text("shutdown\n")
    assert prepare_job_dir(clean) is False
    assert (clean / "requests.seen").exists() and not (clean / CLEAN_MARKER).exists()
    # The marker is gone while the crawl runs: if it dies now, the next run discards the state.
    assert prepare_job_dir(clean) is True
    assert not any((clean / name).exists() for name in ("requests.seen", "requests.queue", "spider.state"))
    assert prepare_job_dir(tmp_path / "new") is False


def test_one_crawl_per_job_id_at_a_time(tmp_path: Path) -> None:
    with job_lock(tmp_path / "job"):
        with pytest.raises(CrawlError, match="already running"):
            with job_lock(tmp_path / "job"):
                pass
    with job_lock(tmp_path / "job"):
        pass


def test_options_and_credentials_are_checked_before_any_request(settings: Settings) -> None:
    crawl = CrawlSettings()
    check_options(CrawlOptions([2000], "ok-1", max_movies_per_year=10_000), crawl)
    with pytest.raises(CrawlError, match=r"must be 1..10000"):
        check_options(CrawlOptions([2000], "ok", max_movies_per_year=10_001), crawl)
    with pytest.raises(CrawlError, match="between 1874 and 2100, not 1066"):
        check_options(CrawlOptions([1066, 2000], "ok"), crawl)
    with pytest.raises(CrawlError, match="bad job id"):
        check_options(CrawlOptions([2000], "../escape"), crawl)
    with pytest.raises(CrawlError, match="TMDB_API_KEY"):
        check_credentials(settings.model_copy(update={"tmdb_api_key": "", "tmdb_bearer_token": ""}))
    check_credentials(settings.model_copy(update={"tmdb_bearer_token": "token"}))


def test_log_lines_never_show_the_api_key() -> None:
    record = logging.LogRecord("scrapy", logging.DEBUG, __file__, 1, "Crawled %s", ("http://x/3/a?api_key=k1",),
                               None)
    assert RedactApiKey().filter(record)
    assert record.getMessage() == "Crawled http://x/3/a?api_key=***"


def test_counts_per_year_summary_and_progress() -> None:
    state: dict = {"counts": {}, "expected": {2000: 4, 2001: 10}, "unknown_genre_ids": {99999: 2},
                   "failed_pages": []}
    for outcome in (STORED, STORED, UNCHANGED, REJECTED):
        record_outcome(state, 2000, outcome)
    for outcome in (NO_POSTER, MALFORMED):
        record_outcome(state, 2001, outcome)
    summary = summarize("job", state, [2000, 2001, 2002], "finished")
    assert (summary.years[2000].seen, summary.years[2000].stored, summary.years[2000].rejected) == (4, 3, 1)
    assert summary.total.seen == 6 and summary.total.expected is None
    assert summary.progress == pytest.approx(100 * (1.0 + 0.2 + 0.0) / 3)
    assert summary.complete
    assert "2000: 4/4" in progress_line(summary) and "2002" not in progress_line(summary)
    table = summary_table(summary)
    assert "unknown TMDB genre ids (movies): 99999 (2)" in table
    assert table.splitlines()[-2].split()[:4] == ["total", "6", "3", "2"]
    state["failed_pages"].append("http://x/3/discover/movie?page=9")
    assert not summarize("job", state, [2000], "finished").complete


def test_tmdb_genres_join_the_vocabulary(settings: Settings) -> None:
    upgrade_database()
    with session_scope() as session:
        session.add(Genre(name="Sci-Fi"))  # from an IMDb import, without a TMDB id
    sync = sync_tmdb_genres({878: "Science Fiction", 28: "Action", 4242: "Solarpunk"})
    assert sync.names == {28: "Action", 878: "Sci-Fi", 4242: "Solarpunk"}
    assert sync.unrecognized_names == ["Solarpunk"]
    assert sync_tmdb_genres({878: "Science Fiction"}).names == {878: "Sci-Fi"}  # idempotent
    with session_scope() as session:
        assert session.scalar(select(Genre.tmdb_id).where(Genre.name == "Sci-Fi")) == 878
        assert len(session.scalars(select(Genre)).all()) == 3
    assert load_tmdb_genres() == {28: "Action", 878: "Sci-Fi", 4242: "Solarpunk"}
    assert map_genre_ids([878, 5, 28, 878, 5], load_tmdb_genres()) == (["Sci-Fi", "Action"], [5])
