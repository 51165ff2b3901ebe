"""A crawl worker's Prometheus endpoint, scraped from a real worker (prefork pool, Redis broker)
after a crawl of the TMDB test site: the crawl subprocess's counters reach the worker's endpoint."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.fakes.tmdb_site import Fault, TmdbSite
from shared.config import Settings, get_settings
from shared.jobs import create_job
from tests import servers
from tests.prometheus import metered_worker, scrape, value
from tests.services.crawler.conftest import RunningSite

# Celery messages of this test go to their own Redis database, so no other test's worker takes them.
BROKER_DB = 14
FAMILIES = {"postergenre_crawler_movies_seen", "postergenre_crawler_movies_stored",
            "postergenre_crawler_movies_refused", "postergenre_crawler_retries",
            "postergenre_crawler_responses", "postergenre_celery_tasks", "postergenre_celery_queue_length"}


def test_a_crawl_worker_exports_movies_seen_stored_refused_retries_and_429s(
        stack_settings: Settings, make_site: Callable[..., RunningSite], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    from shared.celery_app import make_celery

    make_site(TmdbSite.generated({2010: 12}, missing_posters={20100003}, corrupt_posters={20100004},
                                 faults=[Fault("429", "/3/discover/movie", count=1, retry_after="1"),
                                         Fault("500", "/t/p/", count=1)]))
    broker = (stack_settings.redis_url or "").rsplit("/", 1)[0] + f"/{servers.redis_db(BROKER_DB)}"
    monkeypatch.setenv("POSTERGENRE_BROKER_URL", broker)
    monkeypatch.setenv("POSTERGENRE_RESULT_BACKEND", broker)
    get_settings.cache_clear()
    app = make_celery(get_settings())
    app.control.purge()
    job = f"job-{uuid.uuid4().hex}"
    create_job(job, "crawl", {"years": "2010"})
    try:
        with metered_worker("crawl", tmp_path / "worker.log") as url:
            result = app.send_task("postergenre.crawl", kwargs={"years": "2010"},
                                   task_id=job).get(timeout=180)
            families = scrape(url)
    finally:
        app.control.purge()
    assert result["total"]["stored"] == 10
    assert FAMILIES <= set(families), FAMILIES - set(families)
    assert value(families, "postergenre_crawler_movies_seen_total") == 12
    assert value(families, "postergenre_crawler_movies_stored_total", outcome="stored") == 10
    assert value(families, "postergenre_crawler_movies_refused_total", reason="poster_missing") == 1
    assert value(families, "postergenre_crawler_movies_refused_total", reason="poster_invalid") == 1
    assert value(families, "postergenre_crawler_responses_total", status="429") == 1
    assert value(families, "postergenre_crawler_retries_total") >= 1
    assert value(families, "postergenre_celery_tasks_total", task="postergenre.crawl", state="SUCCESS") == 1
