"""Scrapy settings of the TMDB crawler, and the crawl's own settings (``POSTERGENRE_CRAWL_*``).

The upper-case names below are the Scrapy settings module (``SCRAPY_SETTINGS_MODULE``);
:func:`scrapy_settings` starts from it and applies :class:`CrawlSettings` (politeness, retries,
poster size), the shared settings (object store, home) and the options of one crawl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

BOT_NAME = "postergenre"
SPIDER_MODULES = ["services.crawler.spiders"]
NEWSPIDER_MODULE = "services.crawler.spiders"
USER_AGENT = "postergenre-crawler/0.1 (+https://github.com/postergenre)"
# The API is not a website: there is no robots.txt to read, and TMDB's terms are about rate.
ROBOTSTXT_OBEY = False
COOKIES_ENABLED = False
TELNETCONSOLE_ENABLED = False
# One place for the asyncio event loop: pipelines and middlewares are coroutines using asyncio.
TWISTED_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"

DOWNLOADER_MIDDLEWARES = {
    "services.crawler.middlewares.TmdbAuthMiddleware": 350,
    # Replaces Scrapy's RetryMiddleware (550): same retries, with an exponential pause between them.
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "services.crawler.middlewares.BackoffRetryMiddleware": 550,
    # Sees responses before the retry middleware (responses go from high numbers to low).
    "services.crawler.middlewares.RetryAfterMiddleware": 560,
}
# 429 is handled by RetryAfterMiddleware (it honours Retry-After), not by the plain retries.
RETRY_HTTP_CODES = [500, 502, 503, 504, 522, 524, 408]

ITEM_PIPELINES = {
    "services.crawler.pipelines.DuplicateMoviePipeline": 100,
    "services.crawler.pipelines.GenrePipeline": 200,
    "services.crawler.pipelines.StoredPosterPipeline": 300,
    "services.crawler.pipelines.PosterPipeline": 400,
    "services.crawler.pipelines.CatalogPipeline": 500,
}
FILES_URLS_FIELD = "poster_urls"
FILES_RESULT_FIELD = "posters"

EXTENSIONS = {
    "services.crawler.progress.CrawlProgress": 500,
    # Prometheus counters of the crawl (services/crawler/metrics.py).
    "services.crawler.metrics.CrawlMetricsExtension": 510,
    # A crawl is controlled by signals and its job id, not by an HTTP port left open.
    "scrapy.extensions.remote_control.RemoteControl": None,
}

LOG_LEVEL = "INFO"
# Poster bodies are small; anything larger than this is not a poster.
DOWNLOAD_MAXSIZE = 20 * 1024 * 1024
DOWNLOAD_WARNSIZE = 0


class CrawlSettings(BaseSettings):
    """Politeness, retries and poster rules of the crawler (environment ``POSTERGENRE_CRAWL_*``)."""

    model_config = SettingsConfigDict(env_prefix="POSTERGENRE_CRAWL_", extra="ignore")

    concurrency: int = Field(default=8, ge=1, description="Requests in flight at once (per host too).")
    delay: float = Field(default=0.1, ge=0, description="Seconds between requests to one host "
                                                       "(the minimum when AutoThrottle is on).")
    autothrottle: bool = Field(default=True, description="Adapt the delay to the server's latency.")
    autothrottle_target_concurrency: float = Field(default=4.0, gt=0)
    autothrottle_start_delay: float = Field(default=0.5, ge=0)
    autothrottle_max_delay: float = Field(default=30.0, gt=0)
    timeout: float = Field(default=30.0, gt=0, description="Seconds before a request times out.")
    retry_times: int = Field(default=5, ge=0, description="Retries of a 5xx or timed-out request.")
    backoff_base: float = Field(default=1.0, ge=0, description="First pause before a retry, doubled "
                                                              "for each further retry.")
    backoff_max: float = Field(default=60.0, ge=0, description="Longest pause before a retry.")
    rate_limit_retries: int = Field(default=10, ge=0, description="Retries of one request after 429.")
    retry_after_max: float = Field(default=120.0, ge=0, description="Longest Retry-After honoured.")
    json_retries: int = Field(default=2, ge=0, description="Refetches of a page whose JSON is malformed.")
    poster_size: str = Field(default="w342", description="One of /configuration's poster_sizes.")
    min_poster_width: int = Field(default=100, ge=1, description="Narrower posters are rejected.")
    min_poster_height: int = Field(default=1, ge=1, description="Shorter posters are rejected.")
    buffer_bytes: int = Field(default=100_000, ge=1024, description="Discover pages (in bytes of "
                              "JSON) whose movies may be in progress at once; about 10 TMDB pages. Bounds "
                              "memory and how long a clean stop (Ctrl-C) takes.")
    max_page: int = Field(default=500, ge=1, description="TMDB's last page of one query (it answers "
                                                         "422 above); larger years are split by date.")
    progress_interval: float = Field(default=5.0, gt=0, description="Seconds between progress lines.")


def job_dir(home_dir: Path, job_id: str) -> Path:
    """Where a crawl keeps its Scrapy JOBDIR (queue, seen requests, spider state)."""
    return home_dir / "crawls" / job_id


def scrapy_settings(crawl: CrawlSettings, *, jobdir: Path | None, object_store_url: str,
                    log_level: str = "INFO") -> dict[str, Any]:
    """The Scrapy settings of one crawl: this module's, then politeness and storage."""
    values: dict[str, Any] = {
        "LOG_LEVEL": log_level,
        "CONCURRENT_REQUESTS": crawl.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": crawl.concurrency,
        "DOWNLOAD_DELAY": crawl.delay,
        "DOWNLOAD_DELAY_JITTER": 0.5 if crawl.delay > 0 else 0.0,
        "AUTOTHROTTLE_ENABLED": crawl.autothrottle,
        "AUTOTHROTTLE_TARGET_CONCURRENCY": crawl.autothrottle_target_concurrency,
        "AUTOTHROTTLE_START_DELAY": crawl.autothrottle_start_delay,
        "AUTOTHROTTLE_MAX_DELAY": crawl.autothrottle_max_delay,
        "DOWNLOAD_TIMEOUT": crawl.timeout,
        # A response counts as active until every movie of it went through the pipelines, so this
        # bounds the movies in flight (Scrapy's default, 5 MB, would be about 10,000 movies).
        "SCRAPER_SLOT_MAX_ACTIVE_SIZE": crawl.buffer_bytes,
        "RETRY_TIMES": crawl.retry_times,
        "RETRY_BACKOFF_BASE": crawl.backoff_base,
        "RETRY_BACKOFF_MAX": crawl.backoff_max,
        "RATE_LIMIT_RETRY_TIMES": crawl.rate_limit_retries,
        "RETRY_AFTER_MAX": crawl.retry_after_max,
        "TMDB_JSON_RETRIES": crawl.json_retries,
        "TMDB_MAX_PAGE": crawl.max_page,
        "POSTER_MIN_WIDTH": crawl.min_poster_width,
        "POSTER_MIN_HEIGHT": crawl.min_poster_height,
        "PROGRESS_INTERVAL": crawl.progress_interval,
        # Only shown in Scrapy's log: PosterPipeline writes through shared.storage.
        "FILES_STORE": object_store_url,
    }
    if jobdir is not None:
        values["JOBDIR"] = str(jobdir)
    return values
