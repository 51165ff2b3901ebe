"""The ``tmdb`` spider: TMDB API v3 ``/configuration`` -> ``/genre/movie/list`` -> ``/discover/movie``.

The crawl starts with one request, ``/configuration``: a missing or wrong key stops it there, with
one clear error, before any other request. Then the genre list is stored in the vocabulary and
page 1 of each year is asked for; page 1 tells how many pages the year has. A year needing more
pages than TMDB serves (500) is split into release-date windows until each window fits.

Each discover result becomes a :class:`~services.crawler.items.MovieItem` for the pipelines.
A page whose JSON is malformed is fetched again (``TMDB_JSON_RETRIES`` times), then logged with its
URL and skipped; the crawl goes on.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import scrapy
from scrapy.crawler import Crawler
from scrapy.exceptions import CloseSpider
from scrapy.http import Response
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.python.failure import Failure

from services.crawler.items import MALFORMED, MovieItem
from services.crawler.progress import crawl_state, record_outcome
from services.crawler.tmdb import (
    MAX_PAGE,
    PAGE_SIZE,
    DateWindow,
    DiscoverPage,
    ImageConfig,
    TmdbFormatError,
    api_url,
    discover_params,
    error_message,
    movie_from_result,
    pages_needed,
    parse_configuration,
    parse_discover_page,
    parse_genre_list,
    redact,
    split_window,
)

UNAUTHORIZED = "tmdb_unauthorized"
UNUSABLE = "tmdb_unusable"


class TmdbSpider(scrapy.Spider):
    name = "tmdb"

    def __init__(self, years: Iterable[int] = (), max_movies_per_year: int | None = None,
                 poster_size: str = "w342", api_url: str = "", api_key: str = "",
                 database_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.years = sorted({int(year) for year in years})
        self.limit = max_movies_per_year
        self.poster_size = poster_size
        self.api_base = api_url
        self.api_key = api_key
        self.database_url = database_url
        self.max_page = MAX_PAGE
        self.json_retries = 2
        self.image_config: ImageConfig | None = None
        self.fatal_error: str | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> TmdbSpider:
        spider: TmdbSpider = super().from_crawler(crawler, *args, **kwargs)
        spider.max_page = crawler.settings.getint("TMDB_MAX_PAGE", MAX_PAGE)
        spider.json_retries = crawler.settings.getint("TMDB_JSON_RETRIES", 2)
        return spider

    # --- requests -------------------------------------------------------------------------------

    def api_request(self, path: str, callback: Any, params: dict[str, str] | None = None,
                    meta: dict[str, Any] | None = None, priority: int = 0,
                    dont_filter: bool = False) -> scrapy.Request:
        return scrapy.Request(api_url(self.api_base, path, params, self.api_key), callback=callback,
                              errback=self.api_failed, meta=meta or {}, priority=priority,
                              dont_filter=dont_filter, headers={"Accept": "application/json"})

    def discover_request(self, window: DateWindow, page: int) -> scrapy.Request:
        # Later pages first within a window is not needed; higher priority for page 1 lets the
        # crawl learn every year's size early (progress and splitting).
        return self.api_request("/discover/movie", self.parse_discover, discover_params(window, page),
                                meta={"window": window.to_meta(), "page": page},
                                priority=10 if page == 1 else 0)

    async def start(self) -> AsyncIterator[Any]:
        state = crawl_state(self)
        if "image_config" in state:  # a resumed crawl: queued pages may be answered before /configuration
            base, sizes = state["image_config"]
            self.image_config = ImageConfig(base, tuple(sizes))
        # Always asked again (dont_filter): it checks the credentials before anything else.
        yield self.api_request("/configuration", self.parse_configuration, priority=100, dont_filter=True)

    # --- callbacks ------------------------------------------------------------------------------

    def read_json(self, response: Response, parse: Any) -> Any:
        """The parsed document, or a request to fetch it again, or ``None`` when it is given up."""
        try:
            return parse(json.loads(response.body))
        except (ValueError, TmdbFormatError) as exc:
            reason = str(exc) if isinstance(exc, TmdbFormatError) else f"malformed JSON ({exc})"
            attempt = int(response.meta.get("json_retries", 0)) + 1
            url = redact(response.url)
            if attempt <= self.json_retries:
                self.logger.warning("%s from %s: fetching it again (%d of %d)", reason, url, attempt,
                                    self.json_retries)
                return response.request.replace(  # type: ignore[union-attr]
                    dont_filter=True, meta={**response.meta, "json_retries": attempt})
            self.logger.error("%s from %s after %d tries: page skipped", reason, url, attempt)
            crawl_state(self)["failed_pages"].append(url)
            return None

    def parse_configuration(self, response: Response) -> Iterator[Any]:
        config = self.read_json(response, parse_configuration)
        if isinstance(config, scrapy.Request):
            yield config
            return
        if config is None:
            self.stop(UNUSABLE, f"TMDB's /configuration at {redact(response.url)} could not be read; "
                                "check TMDB_API_URL")
        assert isinstance(config, ImageConfig)
        if self.poster_size not in config.poster_sizes:
            self.stop(UNUSABLE, f"poster size {self.poster_size!r} is not one TMDB serves; choose one of "
                                f"{', '.join(config.poster_sizes)} "
                                "(--poster-size or POSTERGENRE_CRAWL_POSTER_SIZE)")
        self.image_config = config
        crawl_state(self)["image_config"] = [config.secure_base_url, list(config.poster_sizes)]
        yield self.api_request("/genre/movie/list", self.parse_genres, priority=90, dont_filter=True)

    def parse_genres(self, response: Response) -> Iterator[Any]:
        from services.crawler.vocabulary import sync_tmdb_genres

        genres = self.read_json(response, parse_genre_list)
        if isinstance(genres, scrapy.Request):
            yield genres
            return
        if genres is None:
            self.stop(UNUSABLE, f"TMDB's genre list at {redact(response.url)} could not be read")
        sync = sync_tmdb_genres(genres, self.database_url)
        state = crawl_state(self)
        for name in sync.unrecognized_names:
            if name not in state["unrecognized_genre_names"]:
                state["unrecognized_genre_names"].append(name)
        self.logger.info("TMDB genre list: %d genres", len(sync.names))
        for year in self.years:
            yield self.discover_request(DateWindow.whole_year(year), 1)

    def parse_discover(self, response: Response) -> Iterator[Any]:
        page = self.read_json(response, parse_discover_page)
        if not isinstance(page, DiscoverPage):
            if page is not None:
                yield page  # fetch it again
            return
        window = DateWindow.from_meta(response.meta["window"])
        number = int(response.meta["page"])
        if number == 1:
            split = False
            for request in self.plan_window(window, page.total_results, page.total_pages):
                split = split or request.meta["page"] == 1
                yield request
            if split:
                return  # the windows list these movies again
        yield from self.movies(page.results, window, number, response.url)

    def plan_window(self, window: DateWindow, total_results: int,
                    total_pages: int) -> Iterator[scrapy.Request]:
        """Requests for pages 2.. of a window, or page 1 of its halves when it has too many pages."""
        if window.is_whole_year:
            expected = total_results if self.limit is None else min(total_results, self.limit)
            crawl_state(self)["expected"][window.year] = expected
        needed = pages_needed(total_results, total_pages, self.limit, PAGE_SIZE)
        if needed > self.max_page:
            halves = split_window(window)
            if halves is not None:
                self.logger.info("%s has %d movies (%d pages, TMDB serves %d): split into %s and %s",
                                 window.label(), total_results, needed, self.max_page,
                                 halves[0].label(), halves[1].label())
                for half in halves:
                    yield self.discover_request(half, 1)
                return
            self.logger.warning("%s alone has %d pages and cannot be split: only the first %d are crawled",
                                window.label(), needed, self.max_page)
            needed = self.max_page
        for number in range(2, needed + 1):
            yield self.discover_request(window, number)

    def movies(self, results: list[dict[str, Any]], window: DateWindow, page: int,
               url: str) -> Iterator[MovieItem]:
        assert self.image_config is not None, "discover page answered before /configuration"
        for index, result in enumerate(results):
            rank = (page - 1) * PAGE_SIZE + index
            if self.limit is not None and rank >= self.limit:
                break
            try:
                yield movie_from_result(result, window, rank, self.image_config, self.poster_size)
            except TmdbFormatError as exc:
                self.logger.warning("%s in %s: movie skipped", exc, redact(url))
                record_outcome(crawl_state(self), window.year, MALFORMED)

    # --- errors ---------------------------------------------------------------------------------

    def stop(self, reason: str, message: str) -> None:
        self.fatal_error = message
        self.logger.error(message)
        raise CloseSpider(reason)

    def api_failed(self, failure: Failure) -> None:
        request = failure.request  # type: ignore[attr-defined]
        url = redact(request.url)
        if failure.check(HttpError):
            response: Response = failure.value.response  # type: ignore[union-attr]
            message = error_message(response.body)
            if response.status == 401:
                self.stop(UNAUTHORIZED, f"TMDB refused the credentials (HTTP 401: {message}). Set a "
                                        "valid TMDB_API_KEY (v3 API key) or TMDB_BEARER_TOKEN (API read "
                                        "access token).")
            detail = f"HTTP {response.status}: {message}"
        else:
            detail = f"{type(failure.value).__name__}: {failure.value}"
        if request.callback in (self.parse_configuration, self.parse_genres):
            self.stop(UNUSABLE, f"cannot read {url} ({detail}); "
                                "check TMDB_API_URL and the network")
        self.logger.error("giving up on %s (%s): page skipped", url, detail)
        crawl_state(self)["failed_pages"].append(url)
