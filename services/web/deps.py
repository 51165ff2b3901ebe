"""Typed dependencies of the routes (``Annotated`` aliases, as in fastapi/full-stack-fastapi-template).

The ones that only hand out an attribute are ``async``: FastAPI runs a plain ``def`` dependency in a
worker thread, a hop each that every request paid. The session stays a plain generator: closing it
may wait on the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from services.web.admin import check_bearer
from services.web.explainer import ExplanationService
from services.web.state import InferenceConnection, WebState
from services.web.year_table import YearTableService
from shared.config import Settings
from shared.db import session_scope
from shared.models import BlessedModels
from shared.storage import ObjectStore


async def get_state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


StateDep = Annotated[WebState, Depends(get_state)]


async def get_settings_dep(state: StateDep) -> Settings:
    return state.settings


def get_session(state: StateDep) -> Iterator[Session]:
    with session_scope(state.settings.effective_database_url) as session:
        yield session


async def get_store(state: StateDep) -> ObjectStore:
    return state.store


async def get_inference(state: StateDep) -> InferenceConnection:
    return state.inference


async def get_year_tables(state: StateDep) -> YearTableService:
    return state.year_tables


async def get_explanations(state: StateDep) -> ExplanationService:
    return state.explanations


async def get_blessed(state: StateDep) -> BlessedModels:
    return state.blessed


async def get_celery(state: StateDep) -> Celery:
    return state.celery


async def require_admin(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> None:
    check_bearer(authorization, state.admin_token)


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
InferenceDep = Annotated[InferenceConnection, Depends(get_inference)]
YearTablesDep = Annotated[YearTableService, Depends(get_year_tables)]
ExplanationsDep = Annotated[ExplanationService, Depends(get_explanations)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
BlessedDep = Annotated[BlessedModels, Depends(get_blessed)]
AdminDep = Depends(require_admin)
