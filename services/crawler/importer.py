"""``postergenre import``: store an existing poster collection (``images/<id>.jpg`` + ``labels.csv``).

Good rows are imported; each bad row is reported with its row number and reason; a rerun imports
nothing twice (movies are upserted by id and unchanged posters are not written again).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.catalog import MovieRecord, check_year, find_movie, upsert_movie, validate_poster
from shared.db import session_scope
from shared.genres import UnknownGenreError, parse_genres
from shared.images import PosterImageError
from shared.storage import ObjectStore

REQUIRED_COLUMNS = ("imdb_id", "year", "title", "genres")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class RowError:
    row: int
    movie_id: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row} ({self.movie_id or '?'}): {self.reason}"


@dataclass
class ImportReport:
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return self.imported + self.updated + self.unchanged + len(self.errors)


@dataclass
class LabelRow:
    row: int
    movie_id: str
    year: str
    title: str
    genres: str


class ImportFolderError(ValueError):
    """The folder itself is unusable (no labels.csv, wrong columns)."""


def read_labels(folder: Path) -> Iterator[LabelRow]:
    """Rows of ``labels.csv``; row numbers count the header as row 1, as a spreadsheet does."""
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise ImportFolderError(f"{labels} not found: expected images/<id>.jpg and labels.csv")
    with labels.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ImportFolderError(f"{labels} lacks column(s) {', '.join(missing)}; "
                                    f"expected {','.join(REQUIRED_COLUMNS)}")
        for number, row in enumerate(reader, start=2):
            yield LabelRow(number, (row["imdb_id"] or "").strip(), row["year"] or "",
                           (row["title"] or "").strip(), row["genres"] or "")


def find_image(folder: Path, movie_id: str) -> Path | None:
    for extension in IMAGE_EXTENSIONS:
        path = folder / "images" / f"{movie_id}{extension}"
        if path.is_file():
            return path
    return None


def source_of(movie_id: str) -> str:
    return "imdb" if re.fullmatch(r"tt\d{7,10}", movie_id) else "import"


def parse_row(folder: Path, row: LabelRow) -> tuple[MovieRecord, bytes]:
    """Validate one row; raise ValueError with the reason when it cannot be imported."""
    if not ID_PATTERN.fullmatch(row.movie_id):
        raise ValueError(f"bad id {row.movie_id!r}")
    year = check_year(row.year)
    try:
        genres = parse_genres(row.genres)
    except UnknownGenreError as exc:
        raise ValueError(str(exc)) from None
    if not genres:
        raise ValueError("no genre")
    image = find_image(folder, row.movie_id)
    if image is None:
        raise ValueError(f"missing image images/{row.movie_id}.jpg")
    data = image.read_bytes()
    return MovieRecord(source_of(row.movie_id), row.movie_id, row.title, year, genres), data


def import_folder(folder: Path, store: ObjectStore, database_url: str | None = None,
                  years: range | None = None, limit: int | None = None,
                  progress: object | None = None) -> ImportReport:
    """Import every good row of ``folder``; ``years`` and ``limit`` select a subset."""
    report = ImportReport()
    rows = [r for r in read_labels(folder)]
    selected = []
    for row in rows:
        if years is not None:
            try:
                if int(row.year) not in years:
                    continue
            except ValueError:
                pass  # reported as a bad year below
        selected.append(row)
    if limit is not None:
        selected = selected[:limit]
    bar = progress
    for row in selected:
        try:
            record, data = parse_row(folder, row)
            info, phash = validate_poster(data)
        except (ValueError, PosterImageError) as exc:
            report.errors.append(RowError(row.row, row.movie_id, str(exc)))
        else:
            with session_scope(database_url) as session:
                existed = find_movie(session, record.source, record.source_id) is not None
                movie, written = upsert_movie(session, store, record, data, info, phash)
                changed = written or session.is_modified(movie)
            if not existed:
                report.imported += 1
            elif changed:
                report.updated += 1
            else:
                report.unchanged += 1
        if bar is not None:
            bar.update(1)  # type: ignore[attr-defined]
    return report
