"""Embedded mode's composition root: the web app with its inference server in-process.

The web service imports no inference code (``.importlinter``, "web imports no inference code"), so
the one place that joins them is here: :func:`create_app` builds the web app
(``services.web.app.create_app``) with :func:`start_embedded_inference`, which the app calls when
``POSTERGENRE_INFERENCE_URL`` is empty. ``postergenre serve web`` (and ``postergenre demo``, which
runs it), the benchmarks and the tests build their apps here; with an inference URL the starter is
never called, so stack mode builds the same app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.config import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from services.inference.server import EmbeddedServer


def start_embedded_inference(settings: Settings) -> EmbeddedServer:
    """The inference server in this process, on a free gRPC port: it syncs the registry's served
    versions and then watches the registry (``start_embedded(..., watch_registry=True)``)."""
    # Imported here: the inference server's modules (gRPC, protobuf, the model loaders) load only in
    # a process that starts one, not in every `postergenre` command that builds the parser.
    from services.inference.server import start_embedded

    return start_embedded(settings, grpc_port=0, watch_registry=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The web app of ``settings`` (default: the environment's), able to start its inference server."""
    from services.web.app import create_app as create_web_app

    return create_web_app(settings, start_embedded_inference)
