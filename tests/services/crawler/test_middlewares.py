from __future__ import annotations

import asyncio
import datetime as dt

from scrapy import Request
from scrapy.http import Response
from scrapy.utils.test import get_crawler
from twisted.internet.error import TimeoutError as TwistedTimeoutError

from services.crawler.middlewares import (
    BackoffRetryMiddleware,
    RetryAfterMiddleware,
    TmdbAuthMiddleware,
    backoff_delay,
    retry_after_seconds,
)
from services.crawler.spiders.tmdb import TmdbSpider


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_backoff_doubles_up_to_a_maximum() -> None:
    assert [backoff_delay(n, 1.0, 5.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


def test_the_bearer_token_goes_to_the_api_only() -> None:
    middleware = TmdbAuthMiddleware("http://api.test/3", "token")
    api = Request("http://api.test/3/configuration")
    image = Request("http://images.test/t/p/w342/a.jpg")
    middleware.process_request(api)
    middleware.process_request(image)
    assert api.headers[b"Authorization"] == b"Bearer token"
    assert b"Authorization" not in image.headers


def test_429_is_retried_after_the_wait_and_given_up_after_the_limit() -> None:
    middleware = RetryAfterMiddleware(max_retries=2, max_wait=5.0, backoff_base=0.0, backoff_max=0.0)
    request = Request("http://api.test/3/discover/movie?page=2")
    limited = Response(request.url, status=429, headers={"Retry-After": "0"}, request=request)
    retry = asyncio.run(middleware.process_response(request, limited))
    assert isinstance(retry, Request) and retry.dont_filter and retry.meta["rate_limit_retries"] == 1
    again = asyncio.run(middleware.process_response(retry, limited))
    assert isinstance(again, Request) and again.meta["rate_limit_retries"] == 2
    assert asyncio.run(middleware.process_response(again, limited)) is limited
    ok = Response(request.url, status=200, request=request)
    assert asyncio.run(middleware.process_response(request, ok)) is ok


def test_5xx_and_timeouts_are_retried_then_given_up() -> None:
    crawler = get_crawler(TmdbSpider, {"RETRY_TIMES": 1, "RETRY_BACKOFF_BASE": 0.0})
    crawler.spider = crawler._create_spider(years=[2000])
    middleware = BackoffRetryMiddleware.from_crawler(crawler)
    request = Request("http://api.test/3/discover/movie?page=3")
    failed = Response(request.url, status=503, request=request)
    retry = asyncio.run(middleware.process_response(request, failed))
    assert isinstance(retry, Request) and retry.meta["retry_times"] == 1
    assert asyncio.run(middleware.process_response(retry, failed)) is failed
    timed_out = asyncio.run(middleware.process_exception(request, TwistedTimeoutError()))
    assert isinstance(timed_out, Request) and timed_out.meta["retry_times"] == 1
    not_found = Response(request.url, status=404, request=request)
    assert asyncio.run(middleware.process_response(request, not_found)) is not_found
