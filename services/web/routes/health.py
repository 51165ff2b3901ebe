"""``/healthz`` (the process answers), ``/readyz`` (its dependencies answer) and ``/metrics``."""

from __future__ import annotations

from typing import Any

import grpc
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from services.web.deps import InferenceDep, SessionDep, StateDep, StoreDep
from services.web.errors import error_body
from services.web.state import InferenceConnection
from shared.inference_client import grpc_target
from shared.storage import ObjectStore

router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 2.0


def check_database(session: Any) -> None:
    session.execute(text("SELECT 1"))


def check_object_store(store: ObjectStore) -> None:
    store.exists("readyz-probe")  # a metadata request: raises when the store does not answer


def check_inference(inference: InferenceConnection) -> None:
    if inference.ready_client() is None:
        raise ConnectionError("the inference connection is starting (the embedded server loads its models)")
    with grpc.insecure_channel(grpc_target(inference.url)) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            raise ConnectionError(f"no answer from {inference.url} within {READY_TIMEOUT_S}s") from None


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database, object store and inference server answer")
def readyz(session: SessionDep, store: StoreDep, inference: InferenceDep) -> JSONResponse:
    checks: dict[str, str] = {}
    for name, check in (("database", lambda: check_database(session)),
                        ("object_store", lambda: check_object_store(store)),
                        ("inference", lambda: check_inference(inference))):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"{type(exc).__name__}: {exc}".strip()
    failed = {name: outcome for name, outcome in checks.items() if outcome != "ok"}
    if failed:
        message = "not ready: " + "; ".join(f"{name}: {outcome}" for name, outcome in failed.items())
        return JSONResponse({**error_body("not_ready", message), "checks": checks}, status_code=503)
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
