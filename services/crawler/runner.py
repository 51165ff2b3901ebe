"""Run one crawl in this process (Scrapy's ``CrawlerProcess``), resumable by job id.

Resuming has two layers:

* Scrapy's ``JOBDIR`` (``<home>/crawls/<job id>``) keeps the request queue, the requests already
  made and the counts when a crawl stops cleanly (Ctrl-C once, SIGTERM): the next run with the same
  job id continues from the queue.
* A crawl that did not stop cleanly (kill -9, a second Ctrl-C, a power cut) leaves a JOBDIR that
  cannot be trusted: the queue on disk is older than the requests marked as seen. The next run
  notices the missing ``stopped-cleanly`` marker, discards that state and lists every page again.
  Nothing is lost or doubled because the database is the real state: movies are upserted by TMDB
  id, poster keys are content-addressed, and a poster already stored for the same TMDB path is not
  downloaded again.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.crawler.progress import CrawlSummary, summarize
from services.crawler.settings import CrawlSettings, job_dir, scrapy_settings
from services.crawler.tmdb import PAGE_SIZE, redact
from shared.catalog import MAX_YEAR, MIN_YEAR
from shared.config import Settings, get_settings

logger = logging.getLogger(__name__)

CLEAN_MARKER = "stopped-cleanly"
SCRAPY_STATE = ("requests.seen", "requests.queue", "spider.state")


class CrawlError(RuntimeError):
    """The crawl cannot start or was stopped by a fatal error; the message says what to fix."""


@dataclass
class CrawlOptions:
    years: list[int]
    job_id: str
    max_movies_per_year: int | None = None
    poster_size: str | None = None
    min_poster_width: int | None = None


def new_job_id() -> str:
    return f"crawl-{uuid.uuid4().hex[:12]}"


def check_credentials(settings: Settings) -> None:
    if not settings.tmdb_api_key and not settings.tmdb_bearer_token:
        raise CrawlError("no TMDB credentials: set TMDB_API_KEY (the v3 API key, sent as ?api_key=) "
                         "or TMDB_BEARER_TOKEN (the API read access token, sent as Authorization: Bearer)")


def check_options(options: CrawlOptions, crawl: CrawlSettings) -> None:
    if not options.years:
        raise CrawlError("no year to crawl: --years 2000-2019")
    outside = [year for year in options.years if not MIN_YEAR <= year <= MAX_YEAR]
    if outside:
        raise CrawlError(f"years must lie between {MIN_YEAR} and {MAX_YEAR}, not {outside[0]}")
    if not options.job_id or "/" in options.job_id or options.job_id.startswith("."):
        raise CrawlError(f"bad job id {options.job_id!r}: letters, digits, - and _ only")
    if options.max_movies_per_year is not None:
        largest = crawl.max_page * PAGE_SIZE
        if not 1 <= options.max_movies_per_year <= largest:
            raise CrawlError(f"--max-movies-per-year must be 1..{largest} (TMDB serves {crawl.max_page} "
                             f"pages of {PAGE_SIZE} per query); leave it out to crawl every movie of "
                             "each year")


def effective_crawl_settings(options: CrawlOptions, crawl: CrawlSettings | None = None) -> CrawlSettings:
    crawl = crawl or CrawlSettings()
    update: dict[str, Any] = {}
    if options.poster_size:
        update["poster_size"] = options.poster_size
    if options.min_poster_width is not None:
        update["min_poster_width"] = options.min_poster_width
    return crawl.model_copy(update=update)


@contextmanager
def job_lock(folder: Path) -> Iterator[None]:
    """One crawl per job id at a time (a redelivered Celery task must not run beside the first)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CrawlError(f"crawl job {folder.name} is already running (lock {folder / 'lock'})") from None
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def prepare_job_dir(folder: Path) -> bool:
    """Discard Scrapy's state unless the last run stopped cleanly; return whether it was discarded."""
    marker = folder / CLEAN_MARKER
    present = [name for name in SCRAPY_STATE if (folder / name).exists()]
    discarded = bool(present) and not marker.exists()
    if discarded:
        for name in present:
            path = folder / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    marker.unlink(missing_ok=True)
    return discarded


class RedactApiKey(logging.Filter):
    """Scrapy logs request URLs; the API key travels in them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "api_key=" in message:
            record.msg, record.args = redact(message), None
        return True


def _install_redaction() -> None:
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactApiKey) for f in handler.filters):
            handler.addFilter(RedactApiKey())


def run_crawl(options: CrawlOptions, settings: Settings | None = None,
              crawl: CrawlSettings | None = None) -> CrawlSummary:
    """Crawl the years of ``options`` into the database and object store; return the summary.

    Raises :class:`CrawlError` before any request when the options or credentials are unusable, and
    after the crawl when TMDB refused the credentials or the configuration could not be read.
    """
    from scrapy.crawler import CrawlerProcess
    from scrapy.settings import Settings as ScrapySettings

    from services.crawler.spiders.tmdb import TmdbSpider
    from shared.db import require_current_schema
    from shared.jobs import create_job, update_job
    from shared.storage import object_store_from_settings

    settings = settings or get_settings()
    crawl = effective_crawl_settings(options, crawl)
    check_options(options, crawl)
    check_credentials(settings)
    database_url = settings.effective_database_url
    require_current_schema(database_url)
    try:
        object_store_from_settings()  # creates the bucket before the pipelines run
    except Exception as exc:  # minio raises ValueError, S3Error, urllib3 errors...
        raise CrawlError(f"cannot use the object store {redact(settings.effective_object_store)} "
                         f"(POSTERGENRE_OBJECT_STORE, POSTERGENRE_S3_ENDPOINT): {exc}") from exc

    folder = job_dir(settings.home_dir, options.job_id)
    with job_lock(folder):
        if prepare_job_dir(folder):
            logger.warning("job %s did not stop cleanly last time: listing every page again "
                           "(posters already stored are not downloaded again)", options.job_id)
        params = {"years": options.years, "max_movies_per_year": options.max_movies_per_year,
                  "poster_size": crawl.poster_size, "min_poster_width": crawl.min_poster_width}
        create_job(options.job_id, "crawl", params, url=database_url)
        update_job(options.job_id, state="STARTED", url=database_url)

        scrapy = ScrapySettings()
        scrapy.setmodule("services.crawler.settings", priority="project")
        scrapy.update(scrapy_settings(crawl, jobdir=folder,
                                      object_store_url=redact(settings.effective_object_store),
                                      log_level=logging.getLevelName(logging.getLogger().level)),
                      priority="cmdline")
        scrapy.set("POSTERGENRE_JOB_ID", options.job_id, priority="cmdline")
        scrapy.set("POSTERGENRE_YEARS", options.years, priority="cmdline")
        # Log through the root logger of the command (no second handler); Scrapy's own loggers
        # default to DEBUG, which would print every item: follow the command's level instead.
        scrapy.set("LOG_INSTALL_ROOT_HANDLER", False, priority="cmdline")
        process = CrawlerProcess(scrapy)
        logging.getLogger("scrapy").setLevel(logging.getLogger().getEffectiveLevel())
        _install_redaction()
        crawler = process.create_crawler(TmdbSpider)
        process.crawl(crawler, years=options.years, max_movies_per_year=options.max_movies_per_year,
                      poster_size=crawl.poster_size, api_url=settings.tmdb_api_url,
                      api_key=settings.tmdb_api_key, database_url=database_url)
        process.start()

        spider = crawler.spider
        state = getattr(spider, "state", {}) if spider is not None else {}
        finish_reason = str(crawler.stats.get_value("finish_reason") or "") if crawler.stats else ""
        fatal = getattr(spider, "fatal_error", None)
        summary = summarize(options.job_id, state, options.years, finish_reason, fatal)
        # Only a clean stop with nothing lost leaves a JOBDIR worth resuming from. After a fatal
        # stop, a skipped page or a failed poster, the requests marked as made include some whose
        # movies are not stored: the next run lists every page again (cheaply) instead.
        nothing_lost = not fatal and not summary.failed_pages and summary.total.failed == 0
        if nothing_lost and finish_reason in ("finished", "shutdown"):
            (folder / CLEAN_MARKER).write_text(finish_reason + "\n")
        if fatal:
            update_job(options.job_id, state="FAILURE", error=fatal, counts=summary.as_dict(),
                       url=database_url)
            raise CrawlError(fatal)
        if finish_reason == "finished":
            update_job(options.job_id, state="SUCCESS" if summary.complete else "FAILURE",
                       progress=100.0 if summary.complete else summary.progress,
                       counts=summary.as_dict(), result=summary.as_dict(), url=database_url,
                       error=None if summary.complete else "some pages or posters failed: rerun the job")
        else:
            update_job(options.job_id, state="INTERRUPTED", progress=summary.progress,
                       counts=summary.as_dict(), url=database_url)
        return summary
