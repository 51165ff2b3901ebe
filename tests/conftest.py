"""Fixtures shared by the whole suite: settings in a temporary home, real servers, small posters."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.config import Settings
from tests import servers

SHARED_POSTERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "posters-imdb"
ENV_PREFIX = "POSTERGENRE_"


def make_poster(seed: int, size: tuple[int, int] = (60, 90), fmt: str = "JPEG") -> bytes:
    """A small synthetic poster whose colours depend on ``seed``."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    array = np.clip(base + rng.normal(0, 25, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write_poster_folder(folder: Path, rows: list[tuple[str, int, str, str]]) -> Path:
    """Write ``images/<id>.jpg`` and ``labels.csv`` for ``(id, year, title, genres)`` rows."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = ["imdb_id,year,title,genres"]
    for index, (movie_id, year, title, genres) in enumerate(rows):
        (folder / "images" / f"{movie_id}.jpg").write_bytes(make_poster(index))
        lines.append(f"{movie_id},{year},{title},{genres}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Embedded-mode settings in a fresh temporary home; every POSTERGENRE_* variable cleared."""
    from shared.config import get_settings

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(ENV_PREFIX + "TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("POSTERGENRE_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    with servers.postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    url = servers.create_database(postgres_admin_url)
    try:
        yield url
    finally:
        servers.drop_database(postgres_admin_url, url)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with servers.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with servers.s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket_url(s3_endpoint: str) -> str:
    return f"s3://bucket-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def stack_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str, redis_url: str,
                   s3_endpoint: str, s3_bucket_url: str) -> Iterator[Settings]:
    """Stack-mode settings: real PostgreSQL, Redis and an S3-protocol server."""
    from shared.config import get_settings

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(ENV_PREFIX + "TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("POSTERGENRE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POSTERGENRE_DATABASE_URL", postgres_url)
    monkeypatch.setenv("POSTERGENRE_OBJECT_STORE", s3_bucket_url)
    monkeypatch.setenv("POSTERGENRE_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("POSTERGENRE_S3_ACCESS_KEY", "test-access")
    monkeypatch.setenv("POSTERGENRE_S3_SECRET_KEY", "test-secret")
    monkeypatch.setenv("POSTERGENRE_BROKER_URL", redis_url)
    monkeypatch.setenv("POSTERGENRE_RESULT_BACKEND", redis_url)
    monkeypatch.setenv("POSTERGENRE_REDIS_URL", redis_url)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def poster_folder(tmp_path: Path) -> Path:
    """A tiny labelled poster folder in the import layout (two years, a few genres)."""
    rows = []
    genres = ["Drama", "Comedy", "Action|Thriller", "Drama|Romance", "Horror", "Comedy|Romance"]
    for index in range(24):
        rows.append((f"tt{1000000 + index:07d}", 2000 + index % 2, f"Movie {index}", genres[index % 6]))
    return write_poster_folder(tmp_path / "posters", rows)


@pytest.fixture
def shared_posters() -> Path:
    if not (SHARED_POSTERS / "labels.csv").is_file():
        pytest.skip(f"needs the shared poster collection at {SHARED_POSTERS} (absent here)")
    return SHARED_POSTERS
