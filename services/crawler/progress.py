"""Progress of a crawl: movies seen, stored, rejected... per year, printed and kept in the Job row.

The counts live in ``spider.state`` (Scrapy pickles it into JOBDIR when the crawl stops cleanly),
so a resumed crawl goes on counting where it stopped. :class:`CrawlProgress` is the Scrapy
extension that records each item's outcome, prints a line every ``PROGRESS_INTERVAL`` seconds and
writes the counts to ``shared.jobs.update_job``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from scrapy import Spider, signals
from scrapy.crawler import Crawler
from scrapy.utils.asyncio import create_looping_call

from services.crawler.items import FAILED, HAS_POSTER, MALFORMED, NO_POSTER, OUTCOMES, REJECTED, MovieItem

logger = logging.getLogger(__name__)


def crawl_state(spider: Spider) -> dict[str, Any]:
    """The spider's persistent state with the crawler's keys in place."""
    state: dict[str, Any] | None = getattr(spider, "state", None)
    if state is None:
        state = {}
        spider.state = state  # type: ignore[attr-defined]
    state.setdefault("counts", {})
    state.setdefault("expected", {})
    state.setdefault("unknown_genre_ids", {})
    state.setdefault("unrecognized_genre_names", [])
    state.setdefault("failed_pages", [])
    return state


def record_outcome(state: dict[str, Any], year: int, outcome: str) -> None:
    counts = state["counts"].setdefault(int(year), dict.fromkeys(OUTCOMES, 0))
    counts[outcome] = counts.get(outcome, 0) + 1


@dataclass
class YearCounts:
    seen: int = 0
    stored: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    no_poster: int = 0
    failed: int = 0
    malformed: int = 0
    expected: int | None = None

    @classmethod
    def from_outcomes(cls, outcomes: Mapping[str, int], expected: int | None) -> YearCounts:
        return cls(
            seen=sum(outcomes.values()),
            stored=sum(outcomes.get(o, 0) for o in HAS_POSTER),
            new=outcomes.get("stored", 0), updated=outcomes.get("updated", 0),
            unchanged=outcomes.get("unchanged", 0), rejected=outcomes.get(REJECTED, 0),
            no_poster=outcomes.get(NO_POSTER, 0), failed=outcomes.get(FAILED, 0),
            malformed=outcomes.get(MALFORMED, 0), expected=expected)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CrawlSummary:
    """What a crawl did, per year and in total."""

    job_id: str
    years: dict[int, YearCounts]
    unknown_genre_ids: dict[int, int] = field(default_factory=dict)
    unrecognized_genre_names: list[str] = field(default_factory=list)
    failed_pages: list[str] = field(default_factory=list)
    finish_reason: str = ""
    fatal_error: str | None = None

    @property
    def total(self) -> YearCounts:
        total = YearCounts(expected=0)
        for counts in self.years.values():
            for name, value in counts.__dict__.items():
                if name == "expected":
                    known = value is not None and total.expected is not None
                    total.expected = total.expected + value if known else None  # type: ignore[operator]
                else:
                    setattr(total, name, getattr(total, name) + value)
        return total

    @property
    def complete(self) -> bool:
        """Finished with nothing left to retry (no failed page or poster)."""
        return (self.finish_reason == "finished" and self.fatal_error is None and not self.failed_pages
                and self.total.failed == 0)

    @property
    def progress(self) -> float:
        """Percent of the expected movies done (years not yet listed count as 0 %)."""
        if not self.years:
            return 0.0
        parts = []
        for counts in self.years.values():
            if counts.expected is None:
                parts.append(0.0)
            else:
                parts.append(1.0 if counts.expected == 0 else min(1.0, counts.seen / counts.expected))
        return 100.0 * sum(parts) / len(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "finish_reason": self.finish_reason, "fatal_error": self.fatal_error,
            "years": {str(year): counts.as_dict() for year, counts in sorted(self.years.items())},
            "total": self.total.as_dict(), "failed_pages": self.failed_pages,
            "unknown_genre_ids": {str(k): v for k, v in sorted(self.unknown_genre_ids.items())},
            "unrecognized_genre_names": self.unrecognized_genre_names,
        }


def summarize(job_id: str, state: Mapping[str, Any], years: list[int], finish_reason: str = "",
              fatal_error: str | None = None) -> CrawlSummary:
    counts: Mapping[int, Mapping[str, int]] = state.get("counts", {})
    expected: Mapping[int, int] = state.get("expected", {})
    return CrawlSummary(
        job_id=job_id,
        years={year: YearCounts.from_outcomes(counts.get(year, {}), expected.get(year)) for year in years},
        unknown_genre_ids=dict(state.get("unknown_genre_ids", {})),
        unrecognized_genre_names=list(state.get("unrecognized_genre_names", [])),
        failed_pages=list(state.get("failed_pages", [])),
        finish_reason=finish_reason, fatal_error=fatal_error)


def progress_line(summary: CrawlSummary) -> str:
    total = summary.total
    years = ", ".join(f"{year}: {c.seen}/{c.expected if c.expected is not None else '?'}"
                      for year, c in sorted(summary.years.items()) if c.seen or c.expected is not None)
    return (f"crawl {summary.job_id}: {summary.progress:5.1f}% seen {total.seen}, stored {total.stored}, "
            f"rejected {total.rejected}, no poster {total.no_poster}, failed {total.failed}"
            + (f" [{years}]" if years else ""))


def summary_table(summary: CrawlSummary) -> str:
    header = f"{'year':>6} {'seen':>7} {'stored':>7} {'new':>6} {'updated':>7} {'same':>6} " \
             f"{'rejected':>8} {'noposter':>8} {'failed':>6} {'malformed':>9}"
    lines = [header]
    rows = [*sorted(summary.years.items()), ("total", summary.total)]
    for year, c in rows:
        lines.append(f"{year!s:>6} {c.seen:>7} {c.stored:>7} {c.new:>6} {c.updated:>7} {c.unchanged:>6} "
                     f"{c.rejected:>8} {c.no_poster:>8} {c.failed:>6} {c.malformed:>9}")
    if summary.unknown_genre_ids:
        lines.append("unknown TMDB genre ids (movies): " + ", ".join(
            f"{k} ({v})" for k, v in sorted(summary.unknown_genre_ids.items())))
    if summary.unrecognized_genre_names:
        lines.append("TMDB genres new to the vocabulary: " + ", ".join(summary.unrecognized_genre_names))
    if summary.failed_pages:
        lines.append(f"{len(summary.failed_pages)} page(s) skipped after retries (rerun the same job id "
                     "to fetch them):")
        lines.extend(f"  {page}" for page in summary.failed_pages[:20])
    return "\n".join(lines)


class CrawlProgress:
    """Scrapy extension: counts outcomes, prints progress, writes the Job row."""

    def __init__(self, crawler: Crawler, job_id: str | None, years: list[int], interval: float,
                 out: TextIO = sys.stdout) -> None:
        self.crawler = crawler
        self.job_id = job_id
        self.years = years
        self.interval = interval
        self.out = out
        self.state: dict[str, Any] = {}
        self.loop: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CrawlProgress:
        s = crawler.settings
        years = [int(y) for y in s.getlist("POSTERGENRE_YEARS")]
        extension = cls(crawler, s.get("POSTERGENRE_JOB_ID") or None, years,
                        s.getfloat("PROGRESS_INTERVAL", 5.0))
        # Connected after Scrapy's SpiderState (extensions load in order), so spider.state is loaded.
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(extension.item_scraped, signal=signals.item_scraped)
        return extension

    def spider_opened(self, spider: Spider) -> None:
        self.state = crawl_state(spider)
        self.loop = create_looping_call(self.report)
        self.loop.start(self.interval, now=False)

    def item_scraped(self, item: Any) -> None:
        if not isinstance(item, MovieItem) or not item.outcome:
            return
        record_outcome(self.state, item.year, item.outcome)
        for genre_id in item.unknown_genre_ids:
            self.state["unknown_genre_ids"][genre_id] = self.state["unknown_genre_ids"].get(genre_id, 0) + 1

    def summary(self, finish_reason: str = "") -> CrawlSummary:
        return summarize(self.job_id or "-", self.state, self.years, finish_reason)

    def report(self) -> None:
        summary = self.summary()
        print(progress_line(summary), file=self.out, flush=True)
        if self.job_id:
            from shared.jobs import update_job

            try:
                update_job(self.job_id, progress=summary.progress, counts=summary.as_dict())
            except Exception:  # progress is advisory: a database hiccup must not stop the crawl
                logger.warning("could not record the progress of job %s", self.job_id, exc_info=True)

    def spider_closed(self, spider: Spider, reason: str) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.report()
