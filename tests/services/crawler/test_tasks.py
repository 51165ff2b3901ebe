"""The ``postergenre.crawl`` Celery task through a real worker (Redis broker, PostgreSQL, S3 server)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from benchmarks.fakes.tmdb_site import TmdbSite
from services.crawler.tasks import CrawlFailed, crawl_arguments
from shared.config import Settings, get_settings
from shared.db import Job, Movie, session_scope, upgrade_database
from shared.jobs import create_job
from tests import servers
from tests.services.crawler.conftest import RunningSite

# Celery messages of this test go to their own Redis database, so no other test's worker takes them.
BROKER_DB = 13


def test_task_arguments_are_the_crawl_command_line() -> None:
    assert crawl_arguments("job-1", [2000, 2001, 2005], 50, "w185", 80)[3:] == [
        "crawl", "--years", "2000,2001,2005", "--job-id", "job-1", "--max-movies-per-year", "50",
        "--poster-size", "w185", "--min-poster-width", "80"]
    assert crawl_arguments("job-2", "2000-2004, 2010")[4:7] == ["--years", "2000-2004,2010", "--job-id"]


def test_crawl_task_through_a_real_worker_reports_progress_in_the_job(
        stack_settings: Settings, make_site: Callable[..., RunningSite],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.contrib.testing.worker import start_worker

    from shared.celery_app import make_celery

    make_site(TmdbSite.generated({2010: 12, 2012: 8}))
    broker = (stack_settings.redis_url or "").rsplit("/", 1)[0] + f"/{servers.redis_db(BROKER_DB)}"
    monkeypatch.setenv("POSTERGENRE_BROKER_URL", broker)
    monkeypatch.setenv("POSTERGENRE_RESULT_BACKEND", broker)
    get_settings.cache_clear()
    app = make_celery(get_settings())
    app.control.purge()
    good, bad = f"job-{uuid.uuid4().hex}", f"job-{uuid.uuid4().hex}"
    # The admin API records the job (in an upgraded database) before it queues the task.
    upgrade_database()
    create_job(good, "crawl", {"years": "2010,2012"})
    try:
        with start_worker(app, pool="solo", queues=["crawl"], perform_ping_check=False):
            request = {"years": "2010,2012", "max_movies_per_year": 10}
            result = app.send_task("postergenre.crawl", kwargs=request, task_id=good).get(timeout=120)
            failing = app.send_task("postergenre.crawl", kwargs={"years": "2010", "poster_size": "w9999"},
                                    task_id=bad)
            with pytest.raises(CrawlFailed, match="poster size 'w9999' is not one TMDB serves"):
                failing.get(timeout=120)
    finally:
        app.control.purge()
    assert result["total"]["stored"] == 18 and sorted(result["years"]) == ["2010", "2012"]
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Movie)) == 18
        job = session.get(Job, good)
        assert job is not None and (job.state, job.progress, job.kind) == ("SUCCESS", 100.0, "crawl")
        assert job.counts["years"]["2010"]["stored"] == 10
        failed = session.get(Job, bad)
        assert failed is not None and failed.state == "FAILURE"
        assert any("w342" in error for error in failed.errors)
