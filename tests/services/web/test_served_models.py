"""The web reads the served models from the registry once per change, not once per request
(``shared.models.BlessedModels``): a blessing or a rollback is seen by the very next request, and an
unchanged registry costs only its fingerprint query."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from shared import registry
from shared.config import Settings
from shared.db import get_engine, upgrade_database
from tests.conftest import make_poster

GENRES = ["Drama", "Comedy"]


class ServerOfTheRegistry:
    """An inference client whose server serves every version the test lists, answering the newest
    blessed one as the real server does once it has synced."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}

    def predict_many(self, names: list[str], pixels: np.ndarray, label: str | None = None,
                     signature: str = "pixels") -> dict[str, Any]:
        return {name: (np.full((len(pixels), len(GENRES)), 0.5, np.float32), self.versions[name])
                for name in names}


def new_version(settings: Settings, server: ServerOfTheRegistry) -> int:
    row = registry.register(name="genre-2000", task_id=None, year=2000, window="year", layout="independent",
                            architecture="smallcnn", image_size=32, dataset_version=None, genres=GENRES,
                            years=[2000], url=settings.effective_database_url)
    registry.bless("genre-2000", row["version"], force=True, url=settings.effective_database_url)
    server.versions["genre-2000"] = row["version"]
    return int(row["version"])


@pytest.fixture
def app_and_server(settings: Settings) -> Iterator[tuple[TestClient, ServerOfTheRegistry]]:
    from services.web.app import create_app

    upgrade_database(settings.effective_database_url)
    server = ServerOfTheRegistry()
    app = create_app(settings)
    app.state.web.year_tables._inference_client = lambda: server
    with TestClient(app) as client:
        yield client, server


def served_version(client: TestClient, seed: int) -> int:
    # A new poster each time: the score cache never answers, the version is the registry's.
    response = client.post("/api/v1/predictions", params={"years": "2000"},
                           files={"file": ("p.jpg", make_poster(seed), "image/jpeg")})
    assert response.status_code == 200, response.text
    [row] = response.json()["years"]
    return int(row["version"])


def test_a_blessing_and_a_rollback_are_seen_by_the_next_request(
        settings: Settings, app_and_server: tuple[TestClient, ServerOfTheRegistry]) -> None:
    client, server = app_and_server
    first = new_version(settings, server)
    assert served_version(client, 1) == first
    second = new_version(settings, server)
    assert served_version(client, 2) == second
    registry.rollback("genre-2000", url=settings.effective_database_url)
    server.versions["genre-2000"] = first
    assert served_version(client, 3) == first


def test_an_unchanged_registry_is_read_whole_once(
        settings: Settings, app_and_server: tuple[TestClient, ServerOfTheRegistry]) -> None:
    client, server = app_and_server
    new_version(settings, server)
    row_reads: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The rows' own columns (metrics: the thresholds) are only in the full read, not the fingerprint.
        if "model_versions.metrics" in statement:
            row_reads.append(statement)

    engine = get_engine(settings.effective_database_url)
    event.listen(engine, "before_cursor_execute", count)
    try:
        for seed in range(3):
            served_version(client, 10 + seed)
        assert len(row_reads) == 1
        new_version(settings, server)
        row_reads.clear()  # the registry's own reads while blessing
        for seed in range(2):
            served_version(client, 20 + seed)
        assert len(row_reads) == 1  # the blessing changed the fingerprint: read again, once
    finally:
        event.remove(engine, "before_cursor_execute", count)
