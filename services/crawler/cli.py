"""Subcommands of the crawler service: ``import`` (existing collections) and ``crawl`` (TMDB)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from services.cli_support import add_output_options
from shared.years import year_span_argument, years_argument


def _import(args: argparse.Namespace) -> int:
    from services.cli_support import print_json, progress_bar
    from services.crawler.importer import import_folder
    from shared.config import get_settings
    from shared.db import require_current_schema
    from shared.poster_folder import ImportFolderError, read_labels
    from shared.storage import object_store_from_settings

    folder: Path = args.source
    if not folder.is_dir():
        print(f"error: {folder} is not a folder. Point --from (or DATA=) at a folder with "
              "images/<id>.jpg and labels.csv, or set TMDB_API_KEY and use `postergenre crawl`.",
              file=sys.stderr)
        return 2
    require_current_schema(get_settings().effective_database_url)
    store = object_store_from_settings()
    try:
        total = sum(1 for _ in read_labels(folder))
    except ImportFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with progress_bar(quiet=args.quiet, total=min(total, args.limit or total), desc="import",
                      unit="poster") as bar:
        report = import_folder(folder, store, years=args.years, limit=args.limit, progress=bar)
    for error in report.errors:
        print(f"rejected {error}", file=sys.stderr)
    if args.json:
        print_json({"imported": report.imported, "updated": report.updated, "unchanged": report.unchanged,
                    "rejected": [{"row": error.row, "movie_id": error.movie_id, "reason": error.reason}
                                 for error in report.errors]})
    else:
        print(f"imported {report.imported}, updated {report.updated}, unchanged {report.unchanged}, "
              f"rejected {len(report.errors)}")
    return 1 if report.errors else 0


def _crawl(args: argparse.Namespace) -> int:
    from services.crawler.progress import summary_table
    from services.crawler.runner import CrawlError, CrawlOptions, new_job_id, run_crawl

    job_id = args.job_id or new_job_id()
    print(f"crawl job {job_id} (rerun with --job-id {job_id} to resume it)", flush=True)
    options = CrawlOptions(years=list(args.years), job_id=job_id,
                           max_movies_per_year=args.max_movies_per_year, poster_size=args.poster_size,
                           min_poster_width=args.min_poster_width)
    try:
        summary = run_crawl(options)
    except CrawlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary_table(summary))
    if summary.finish_reason != "finished":
        years = ",".join(str(year) for year in args.years)
        print(f"crawl stopped ({summary.finish_reason}); resume it with: postergenre crawl "
              f"--years {years} --job-id {job_id}", file=sys.stderr)
        return 130
    return 0 if summary.complete else 1


def register(commands: Any) -> None:
    crawl = commands.add_parser("crawl", help="crawl TMDB (API v3) into the database and object store")
    crawl.add_argument("--years", type=years_argument, required=True,
                       help="e.g. 2000-2019, 2005 or 2000-2004,2010")
    crawl.add_argument("--max-movies-per-year", type=int, default=None,
                       help="only the N most popular movies of each year")
    crawl.add_argument("--job-id", default=None, help="resume (or name) this crawl; default: a new id")
    crawl.add_argument("--poster-size", default=None,
                       help="one of TMDB's poster sizes (default POSTERGENRE_CRAWL_POSTER_SIZE or w342)")
    crawl.add_argument("--min-poster-width", type=int, default=None,
                       help="reject narrower posters (default POSTERGENRE_CRAWL_MIN_POSTER_WIDTH or 100)")
    crawl.set_defaults(handler=_crawl)

    imp = commands.add_parser("import", help="import a poster folder (images/<id>.jpg + labels.csv)")
    imp.add_argument("--from", dest="source", type=Path, required=True, help="the folder")
    imp.add_argument("--years", type=year_span_argument, default=None,
                     help="only these years, e.g. 2000-2015")
    imp.add_argument("--limit", type=int, default=None, help="import at most N rows")
    add_output_options(imp, "print the counts and the rejected rows as JSON")
    imp.set_defaults(handler=_import)
