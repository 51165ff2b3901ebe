"""Prometheus metrics of a crawl: a Scrapy extension that turns the crawl's items, responses and
stats into counters as they happen (a dashboard sees a crawl of hours progress, not only its end).

The counters live in ``prometheus_client``'s default registry. In a crawl worker
(``postergenre worker --queues crawl`` with ``POSTERGENRE_WORKER_METRICS_PORT``) the worker's
exporter serves them, summed over its pool's processes (:mod:`shared.worker_metrics`); a crawl run
by ``postergenre crawl`` keeps them to itself (its summary and the job row say the same).

Families: ``postergenre_crawler_movies_seen_total``, ``postergenre_crawler_movies_stored_total``
{outcome: stored, updated, unchanged}, ``postergenre_crawler_movies_refused_total`` {reason:
no_poster, poster_missing, poster_invalid, failed, duplicate, malformed},
``postergenre_crawler_retries_total`` (Scrapy's retries of failed requests) and
``postergenre_crawler_responses_total`` {status} (HTTP 429 among them).
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter
from scrapy import Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import DropItem

from services.crawler.items import FAILED, HAS_POSTER, MALFORMED, NO_POSTER, REJECTED, MovieItem
from shared.metrics import guarded

# The Scrapy stats whose growth is exported, and as what.
RETRY_STATS = ("retry/count",)


class CrawlerMetrics:
    def __init__(self) -> None:
        self.seen = Counter("postergenre_crawler_movies_seen", "Movies the crawl listed and processed")
        self.stored = Counter("postergenre_crawler_movies_stored", "Movies stored with their poster, by "
                              "outcome (stored: new, updated, unchanged)", ["outcome"])
        self.refused = Counter("postergenre_crawler_movies_refused", "Movies not stored with a poster, "
                               "by reason", ["reason"])
        self.retries = Counter("postergenre_crawler_retries", "Requests retried after a failure "
                               "(HTTP 5xx, timeouts, connection errors)")
        self.responses = Counter("postergenre_crawler_responses", "HTTP responses by status "
                                 "(429: the API asked the crawl to slow down)", ["status"])


@functools.cache
def crawler_metrics() -> CrawlerMetrics:
    """Created at first use, in the process that crawls (a worker's pool child: see
    :mod:`shared.worker_metrics`)."""
    return CrawlerMetrics()


def refusal_reason(item: MovieItem) -> str:
    """A bounded label for why ``item`` has no stored poster (the free-text reason is in the job)."""
    if item.outcome == REJECTED:
        return "poster_missing" if (item.rejection or "").startswith("poster missing") else "poster_invalid"
    return str(item.outcome)


class CrawlMetricsExtension:
    """Counts items, responses and retries of one crawl into :func:`crawler_metrics`."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.metrics = crawler_metrics()
        self.exported: dict[str, int] = {}  # stat or state key -> what the counters already hold
        self.spider: Spider | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CrawlMetricsExtension:
        # Every receiver takes **kwargs: Scrapy passes a receiver only the arguments its signature
        # names, and the guard's wrapper names none.
        extension = cls(crawler)
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(extension.item_dropped, signal=signals.item_dropped)
        # response_downloaded, not response_received: a 429 that RetryAfterMiddleware turns into a
        # retry never reaches the engine, so only the downloader's signal sees it.
        crawler.signals.connect(extension.response_downloaded, signal=signals.response_downloaded)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def _malformed(self) -> int:
        # Discover results that cannot be read never become items: the spider counts them in its
        # state (which a resumed crawl reloads; only the growth since this run opened is counted).
        state = getattr(self.spider, "state", None) or {}
        return sum(int(counts.get(MALFORMED, 0)) for counts in state.get("counts", {}).values())

    def _stat(self, key: str) -> int:
        stats = self.crawler.stats
        return int(stats.get_value(key, 0) or 0) if stats is not None else 0

    @guarded
    def spider_opened(self, spider: Spider, **_kwargs: Any) -> None:
        self.spider = spider
        self.exported = {key: self._stat(key) for key in RETRY_STATS}
        self.exported[MALFORMED] = self._malformed()

    @guarded
    def sync(self) -> None:
        """Add the growth of the retry stats and of the malformed count since the last call."""
        for key in RETRY_STATS:
            now = self._stat(key)
            if now > self.exported.get(key, 0):
                self.metrics.retries.inc(now - self.exported.get(key, 0))
            self.exported[key] = now
        malformed = self._malformed()
        if malformed > self.exported.get(MALFORMED, 0):
            grown = malformed - self.exported.get(MALFORMED, 0)
            self.metrics.seen.inc(grown)
            self.metrics.refused.labels(reason=MALFORMED).inc(grown)
        self.exported[MALFORMED] = malformed

    @guarded
    def item_scraped(self, item: Any, **_kwargs: Any) -> None:
        if not isinstance(item, MovieItem) or not item.outcome:
            return
        self.metrics.seen.inc()
        if item.outcome in HAS_POSTER:
            self.metrics.stored.labels(outcome=item.outcome).inc()
        elif item.outcome in (REJECTED, NO_POSTER, FAILED):
            self.metrics.refused.labels(reason=refusal_reason(item)).inc()

    @guarded
    def item_dropped(self, item: Any, exception: BaseException | None = None, **_kwargs: Any) -> None:
        # The one DropItem of the pipelines: a movie listed twice in one crawl.
        if isinstance(exception, DropItem):
            self.metrics.seen.inc()
            self.metrics.refused.labels(reason="duplicate").inc()

    @guarded
    def response_downloaded(self, response: Any, **_kwargs: Any) -> None:
        self.metrics.responses.labels(status=str(getattr(response, "status", 0))).inc()
        self.sync()

    def spider_closed(self, spider: Spider, **_kwargs: Any) -> None:
        self.sync()
