"""``postergenre import``: store an existing poster collection (``images/<id>.jpg`` + ``labels.csv``).

Good rows are imported; each bad row is reported with its row number and reason; a rerun imports
nothing twice (movies are upserted by id and unchanged posters are not written again). The folder
format itself (reading and checking ``labels.csv`` rows) is ``shared.poster_folder``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shared.catalog import find_movie, upsert_movie, validate_poster
from shared.db import session_scope
from shared.images import PosterImageError
from shared.poster_folder import parse_row, read_labels
from shared.storage import ObjectStore


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
