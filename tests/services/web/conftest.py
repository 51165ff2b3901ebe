"""A web service on the real stack: PostgreSQL, Redis, the S3-protocol server and the embedded
gRPC inference server serving tiny real SavedModels registered as blessed model versions.

The stack is built once per test module (starting the inference server and loading the models is
the slow part); tests that change it build their own.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shared.config import Settings
from shared.db import ModelVersion, session_scope, upgrade_database
from shared.storage import open_object_store, upload_folder
from tests import servers
from tests.services.inference.explainable import ExplainableModel
from tests.services.web.tiny_models import GENRES, TinyModel, build_tiny_model

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
# Validation thresholds of the web stack's versions (genre-2001 v2 has none, as a version trained
# before they were recorded): a spread so that some of the best genres are likely and some are not.
TINY_THRESHOLDS = {key: {genre: round(0.3 + 0.1 * index, 2) for index, genre in enumerate(GENRES)}
                   for key in ("genre-2000/1", "genre-shared/1")}
# Celery messages of these tests go to their own Redis database, so no other test's worker takes them.
BROKER_DB = 13


@dataclass
class WebStack:
    settings: Settings
    client: TestClient
    models: dict[str, TinyModel]  # by "<name>/<version>"
    broker_url: str


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> list[TinyModel]:
    """genre-2000 v1 (32 px), genre-2001 v1 (retired) and v2 (24 px), genre-shared v1 (2002-2003)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return [
        build_tiny_model(root, "genre-2000", 1, 32, seed=1),
        build_tiny_model(root, "genre-2001", 1, 24, seed=2),
        build_tiny_model(root, "genre-2001", 2, 24, seed=3),
        build_tiny_model(root, "genre-shared", 1, 32, seed=4, years=[2002, 2003]),
    ]


def stack_settings_for(home: Path, database_url: str, redis_url: str, s3_endpoint: str, bucket: str,
                       **overrides: object) -> Settings:
    broker = redis_url.rsplit("/", 1)[0] + f"/{servers.redis_db(BROKER_DB)}"
    values: dict[str, object] = dict(
        home=home, database_url=database_url, object_store=f"s3://{bucket}", s3_endpoint=s3_endpoint,
        s3_access_key="test-access", s3_secret_key="test-secret", broker_url=broker, result_backend=broker,
        redis_url=redis_url, admin_token=ADMIN_TOKEN, inference_timeout_s=10.0)
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def register_models(settings: Settings, models: Sequence[TinyModel | ExplainableModel], retired: set[str],
                    thresholds: dict[str, dict[str, float]] | None = None) -> None:
    """Put each SavedModel in the object store and its row in the registry (blessed unless retired);
    ``thresholds`` ("<name>/<version>" -> genre -> threshold) go into those rows' ``metrics``, as the
    trainer records the ones it tunes on validation."""
    upgrade_database(settings.effective_database_url)
    store = open_object_store(settings.effective_object_store, settings.s3_endpoint, settings.s3_access_key,
                              settings.s3_secret_key)
    with session_scope(settings.effective_database_url) as session:
        for index, model in enumerate(models):
            key = f"{model.name}/{model.version}"
            upload_folder(store, model.folder, f"models/{key}")
            store.put(f"models/{key}/metrics.json", b'{"micro_f1": 0.5}', content_type="application/json")
            session.add(ModelVersion(
                name=model.name, version=model.version, image_size=model.image_size, genres=model.genres,
                years=model.years or [int(model.name.rsplit("-", 1)[1])],
                year=None if model.years else int(model.name.rsplit("-", 1)[1]),
                layout="shared" if model.years else "independent", dataset_version="ds-test",
                metrics={"micro_f1": 0.5 + index / 100, "per_genre": {"Drama": 0.4}}
                | ({"thresholds": (thresholds or {})[key]} if key in (thresholds or {}) else {}),
                status="retired" if key in retired else "blessed",
                status_reason="was blessed; superseded" if key in retired else "blessed: test",
                exports={"savedmodel": f"models/{key}"},
                created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=index)))


def wait_until_ready(client: TestClient, timeout_s: float = 120.0) -> None:
    """Poll /readyz: the embedded inference server loads its models in the background."""
    deadline = time.monotonic() + timeout_s
    while (response := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, f"the web service never became ready: {response.text}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def web_stack(tmp_path_factory: pytest.TempPathFactory, tiny_models: list[TinyModel], postgres_admin_url: str,
              redis_url: str, s3_endpoint: str) -> Iterator[WebStack]:
    from services.embedded import create_app

    home = tmp_path_factory.mktemp("web-home")
    database_url = servers.create_database(postgres_admin_url, prefix="webtest")
    settings = stack_settings_for(home, database_url, redis_url, s3_endpoint, f"web-{uuid.uuid4().hex[:12]}")
    register_models(settings, tiny_models, retired={"genre-2001/1"}, thresholds=TINY_THRESHOLDS)
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            wait_until_ready(client)
            yield WebStack(settings, client, {f"{m.name}/{m.version}": m for m in tiny_models},
                           settings.broker_url)
    finally:
        servers.drop_database(postgres_admin_url, database_url)
