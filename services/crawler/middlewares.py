"""Downloader middlewares: TMDB authentication, Retry-After on 429, retries with exponential backoff."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from email.utils import parsedate_to_datetime
from typing import Any

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.http import Response
from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)


def backoff_delay(retry_number: int, base: float, maximum: float) -> float:
    """Pause before retry number ``retry_number`` (1, 2, ...): ``base``, ``2*base``, ``4*base``..."""
    return min(maximum, base * 2 ** max(0, retry_number - 1))


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date).

    ``None`` when the header is absent or unreadable.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


class TmdbAuthMiddleware:
    """Sends ``Authorization: Bearer <TMDB_BEARER_TOKEN>`` on API requests (never to the image host).

    An API key (``TMDB_API_KEY``) travels in the query instead; the spider builds it into the URL.
    """

    def __init__(self, api_url: str, bearer_token: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.bearer_token = bearer_token

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> TmdbAuthMiddleware:
        from shared.config import get_settings

        settings = get_settings()
        return cls(settings.tmdb_api_url, settings.tmdb_bearer_token)

    def process_request(self, request: Request) -> None:
        if (self.bearer_token and request.url.startswith(self.api_url)
                and b"Authorization" not in request.headers):
            request.headers[b"Authorization"] = f"Bearer {self.bearer_token}"


class RetryAfterMiddleware:
    """On HTTP 429, stop sending new requests for the time ``Retry-After`` asks, then retry.

    The engine is paused while any request waits, so the whole crawl slows down, not just the one
    request. Without a usable header the wait is the retry backoff.
    """

    def __init__(self, max_retries: int, max_wait: float, backoff_base: float, backoff_max: float,
                 crawler: Crawler | None = None) -> None:
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.crawler = crawler
        self.waiting = 0

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RetryAfterMiddleware:
        s = crawler.settings
        return cls(s.getint("RATE_LIMIT_RETRY_TIMES", 10), s.getfloat("RETRY_AFTER_MAX", 120.0),
                   s.getfloat("RETRY_BACKOFF_BASE", 1.0), s.getfloat("RETRY_BACKOFF_MAX", 60.0), crawler)

    async def process_response(self, request: Request, response: Response) -> Request | Response:
        if response.status != 429 or request.meta.get("dont_retry", False):
            return response
        attempt = int(request.meta.get("rate_limit_retries", 0)) + 1
        if attempt > self.max_retries:
            logger.error("Gave up after %d answers 429 (too many requests) to %s", attempt - 1, request)
            return response
        header = response.headers.get(b"Retry-After")
        wait = retry_after_seconds(header.decode("latin-1") if header else None)
        if wait is None:
            wait = backoff_delay(attempt, self.backoff_base, self.backoff_max)
        wait = min(wait, self.max_wait)
        logger.warning("HTTP 429 from %s: pausing %.1f s as Retry-After asks (retry %d of %d)",
                       response.url.split("?")[0], wait, attempt, self.max_retries)
        if self.crawler is not None and self.crawler.stats is not None:
            self.crawler.stats.inc_value("retry_after/count")
        await self._pause(wait)
        retry = request.copy()
        retry.meta["rate_limit_retries"] = attempt
        retry.dont_filter = True
        return retry

    async def _pause(self, seconds: float) -> None:
        engine = getattr(self.crawler, "engine", None)
        self.waiting += 1
        if engine is not None:
            engine.pause()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.waiting -= 1
            if engine is not None and self.waiting == 0:
                engine.unpause()


class BackoffRetryMiddleware(RetryMiddleware):
    """Scrapy's retries of 5xx answers and timeouts, pausing ``base * 2**(n-1)`` seconds before retry n."""

    def __init__(self, settings: BaseSettings) -> None:
        super().__init__(settings)
        self.backoff_base = settings.getfloat("RETRY_BACKOFF_BASE", 1.0)
        self.backoff_max = settings.getfloat("RETRY_BACKOFF_MAX", 60.0)

    async def _after_backoff(self, result: Any) -> Any:
        if isinstance(result, Request):
            await asyncio.sleep(backoff_delay(int(result.meta.get("retry_times", 1)),
                                              self.backoff_base, self.backoff_max))
        return result

    async def process_response(  # type: ignore[override]
            self, request: Request, response: Response, spider: Any = None) -> Request | Response:
        return await self._after_backoff(super().process_response(request, response))

    async def process_exception(  # type: ignore[override]
            self, request: Request, exception: Exception, spider: Any = None) -> Request | Response | None:
        return await self._after_backoff(super().process_exception(request, exception))
