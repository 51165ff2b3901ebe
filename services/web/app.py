"""The web service: the poster page, the prediction API and the admin API (FastAPI).

``create_app(settings)`` builds an app for given settings (tests build several); ``postergenre serve
web`` runs one with uvicorn. In embedded mode (``POSTERGENRE_INFERENCE_URL`` empty) the app starts the
inference server in-process with the ``start_embedded_inference`` it is given: the web service
imports no inference code, so the composition root ``services.embedded.create_app`` passes it.
The OpenAPI document is at ``/openapi.json`` (FastAPI's ``/docs`` page fetches Swagger UI from a
CDN, so it needs internet; the poster and admin pages do not).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from services.web.admin import admin_token_problem, effective_admin_token
from services.web.errors import install_error_handlers
from services.web.metrics import RequestMetricsMiddleware
from services.web.routes import admin, explanations, health, models, pages, predictions
from services.web.routes.pages import STATIC_DIR
from services.web.security import SecurityHeadersMiddleware
from services.web.state import EmbeddedInferenceStarter, WebState
from services.web.uploads import UploadLimitMiddleware
from services.web.year_table import MAX_BATCH_FILES
from shared.config import Settings, get_settings
from shared.logs import RequestIdMiddleware
from shared.tracing import instrument_app

log = logging.getLogger(__name__)

DESCRIPTION = """Reads a movie poster and says which genres it suggests under each release year's model.

Errors always have the body `{"error": {"code": "...", "message": "..."}}`.
The admin API needs `Authorization: Bearer <POSTERGENRE_ADMIN_TOKEN>`."""


def create_app(settings: Settings | None = None,
               start_embedded_inference: EmbeddedInferenceStarter | None = None) -> FastAPI:
    settings = settings or get_settings()
    problem = admin_token_problem(settings)
    state = WebState(settings, admin_token="" if problem else effective_admin_token(settings),
                     start_embedded_inference=start_embedded_inference)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Connect to (or start) the inference server in the background, so the first visitor
        # does not wait for the models to load; a failure is retried on the first request.
        state.inference.connect_in_background()
        try:
            yield
        finally:
            await asyncio.to_thread(state.close)

    app = FastAPI(title="Poster Genre", version="1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.web = state
    app.state.metrics = state.metrics
    app.state.admin_enabled = problem is None
    install_error_handlers(app)
    app.add_middleware(UploadLimitMiddleware, max_upload_bytes=settings.max_upload_bytes,
                       max_files=MAX_BATCH_FILES)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)
    app.add_middleware(RequestIdMiddleware)  # added last: outermost, so every line has the id

    app.include_router(predictions.router)
    app.include_router(explanations.router)
    app.include_router(models.router)
    app.include_router(health.router)
    if problem is None:
        app.include_router(admin.router)
    else:
        log.error("admin API not mounted: %s (set a long random token to enable it)", problem)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    instrument_app(app)  # traces its requests when tracing is on (shared.tracing); else nothing
    return app
