"""Fixtures of the reliability tests: tiny real models (the web tests' builder) and a web stack factory.

The stacks reuse the web service tests' helpers (``stack_settings_for``, ``register_models``) so the
faults hit the same configuration the functional tests check.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from shared.config import Settings
from tests.services.crawler.conftest import make_site  # noqa: F401 (the crawler tests' site fixture)
from tests.services.web.conftest import register_models, stack_settings_for
from tests.services.web.tiny_models import TinyModel, build_tiny_model

ADMIN_TOKEN = "reliability-admin-token-0123456789"
YEARS = "2000-2001"


@pytest.fixture(scope="session")
def reliability_models(tmp_path_factory: pytest.TempPathFactory) -> list[TinyModel]:
    """genre-2000 v1 (32 px) and genre-2001 v1 (24 px): two input sizes, two concurrent calls."""
    root = tmp_path_factory.mktemp("reliability-models")
    return [build_tiny_model(root, "genre-2000", 1, 32, seed=11),
            build_tiny_model(root, "genre-2001", 1, 24, seed=12)]


def web_settings(home: Path, database_url: str, redis_url: str, s3_endpoint: str,
                 models: list[TinyModel], **overrides: object) -> Settings:
    """Stack settings for a web service over ``models`` (registered blessed in a fresh bucket)."""
    values: dict[str, object] = {"admin_token": ADMIN_TOKEN, **overrides}
    settings = stack_settings_for(home, database_url, redis_url, s3_endpoint,
                                  f"rel-{uuid.uuid4().hex[:12]}", **values)
    register_models(settings, models, retired=set())
    return settings
