"""Rolling a model back from the admin API: the registry changes which version is blessed
(``shared.registry``, the registry operations the trainer uses too). Nothing more: the inference
side watches the registry and serves the newly blessed version within
``settings.model_sync_interval_s`` (docs/architecture.md, "The model sync")."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.web.errors import ApiError
from shared import registry
from shared.config import Settings
from shared.db import ModelVersion


def roll_back(settings: Settings, session: Session, name: str, version: int | None) -> list[dict[str, Any]]:
    """Bless ``version`` (default: the previous blessed one) of ``name``; every version's row after."""
    if session.scalar(select(ModelVersion.id).where(ModelVersion.name == name).limit(1)) is None:
        raise ApiError(404, "model_not_found", f"no model named {name}")
    session.close()  # the registry works in its own transaction
    try:
        registry.rollback(name, to_version=version, url=settings.effective_database_url)
    except registry.RegistryError as exc:
        if "has no version" in str(exc):
            raise ApiError(404, "version_not_found", str(exc)) from None
        raise ApiError(409, "rollback_refused", str(exc)) from None
    query = select(ModelVersion).where(ModelVersion.name == name).order_by(ModelVersion.version)
    rows = session.scalars(query)
    from services.web.routes.models import model_info

    return [model_info(row, []) for row in rows]

