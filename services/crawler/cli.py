"""Subcommands of the crawler service: ``import`` (existing collections) and ``crawl`` (TMDB)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def parse_years(text: str) -> range:
    """``2000-2019`` or ``2005`` as a range of years."""
    try:
        if "-" in text:
            first, last = (int(part) for part in text.split("-", 1))
        else:
            first = last = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"years must look like 2000-2019 or 2005, not {text!r}") from None
    if first > last:
        raise argparse.ArgumentTypeError(f"empty year range {text!r}")
    return range(first, last + 1)


def _import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from services.crawler.importer import ImportFolderError, import_folder, read_labels
    from shared.config import get_settings
    from shared.db import upgrade_database
    from shared.storage import object_store_from_settings

    folder: Path = args.source
    if not folder.is_dir():
        print(f"error: {folder} is not a folder. Point --from (or DATA=) at a folder with "
              "images/<id>.jpg and labels.csv, or set TMDB_API_KEY and use `postergenre crawl`.",
              file=sys.stderr)
        return 2
    upgrade_database(get_settings().effective_database_url)
    store = object_store_from_settings()
    try:
        total = sum(1 for _ in read_labels(folder))
    except ImportFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tqdm(total=min(total, args.limit or total), desc="import", unit="poster",
              disable=args.quiet) as bar:
        report = import_folder(folder, store, years=args.years, limit=args.limit, progress=bar)
    for error in report.errors:
        print(f"rejected {error}", file=sys.stderr)
    print(f"imported {report.imported}, updated {report.updated}, unchanged {report.unchanged}, "
          f"rejected {len(report.errors)}")
    return 1 if report.errors else 0


def register(commands: Any, bench: Any) -> None:
    imp = commands.add_parser("import", help="import a poster folder (images/<id>.jpg + labels.csv)")
    imp.add_argument("--from", dest="source", type=Path, required=True, help="the folder")
    imp.add_argument("--years", type=parse_years, default=None, help="only these years, e.g. 2000-2015")
    imp.add_argument("--limit", type=int, default=None, help="import at most N rows")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(handler=_import)
