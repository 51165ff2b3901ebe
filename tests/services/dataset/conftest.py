"""Small movie collections in the database for the dataset tests (imported the way users import)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_poster_folder

GENRES = [
    "Drama",
    "Comedy",
    "Action|Thriller",
    "Drama|Romance",
    "Horror",
    "Comedy|Romance",
    "Drama",
    "Action",
    "Comedy|Drama",
    "Western|Action|Drama",
]


def collection_rows(years: range, per_year: int) -> list[tuple[str, int, str, str]]:
    rows: list[tuple[str, int, str, str]] = []
    for year in years:
        for _ in range(per_year):
            number = len(rows)
            rows.append(
                (f"tt{2000000 + number:07d}", year, f"Movie {number}", GENRES[(number * 7 + year) % 10])
            )
    return rows


def near_copy(data: bytes) -> bytes:
    """The same poster with a white corner, saved as PNG: other bytes, nearly the same image."""
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()
    pixels[:4, :4] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def collection(tmp_path: Path) -> Callable[..., Path]:
    """Write a poster folder of ``per_year`` movies per year; movie 1 is an exact copy of movie 0's
    poster (next year) and movie 3 a re-encoded copy of movie 2's."""

    def make(years: range = range(2000, 2004), per_year: int = 16) -> Path:
        rows = collection_rows(years, per_year)
        folder = write_poster_folder(tmp_path / "collection", rows)
        images = folder / "images"
        first, second, third, fourth = (rows[i][0] for i in (0, (per_year + 1) % len(rows), 2, 3))
        (images / f"{second}.jpg").write_bytes((images / f"{first}.jpg").read_bytes())
        # The importer decides the type by content, so PNG bytes under .jpg are fine.
        (images / f"{fourth}.jpg").write_bytes(near_copy((images / f"{third}.jpg").read_bytes()))
        return folder

    return make
