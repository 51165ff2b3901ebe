"""The poster-folder format (``images/<id>.jpg`` + ``labels.csv``): reading and checking its rows.

A contract of its own: ``postergenre import`` (the crawler service) stores a folder's good rows, and
``postergenre evaluate`` (the trainer) scores models on a folder without storing it, so both read
the folder here and neither imports the other. Columns: ``imdb_id,year,title,genres`` (README.md).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.catalog import MovieRecord, check_year
from shared.genres import UnknownGenreError, parse_genres

REQUIRED_COLUMNS = ("imdb_id", "year", "title", "genres")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


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
