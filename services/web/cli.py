"""Subcommands of the web service: ``postergenre serve web``."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

# Builds the app to serve; given by the composition root (services/cli.py passes
# services.embedded.create_app, so that embedded mode can start its inference server).
AppFactory = Callable[[], "FastAPI"]


def _serve_web(args: argparse.Namespace, create_app: AppFactory) -> int:
    import uvicorn

    from services.web.worker import embedded_worker
    from shared.config import get_settings
    from shared.tracing import start_tracing

    start_tracing("postergenre-web")  # before the app, its database engine and gRPC channel exist
    # In embedded mode a worker child runs the admin API's jobs (services.web.worker); stack: none.
    with embedded_worker(get_settings(), enabled=not args.no_worker):
        # log_config=None: uvicorn's loggers go through the root handler (the services' format, with
        # request ids); its access log is replaced by services.web's (shared.logs.RequestIdMiddleware).
        uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level,
                    proxy_headers=True, forwarded_allow_ips=args.forwarded_allow_ips, log_config=None,
                    access_log=False)
    return 0


def register(commands: Any, serve: Any, create_app: AppFactory) -> None:
    """Add this service's subcommands to the `postergenre` parser; ``serve web`` runs ``create_app()``."""
    web = serve.add_parser("web", help="the poster page and the HTTP API (uvicorn)")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8000)
    web.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    web.add_argument("--forwarded-allow-ips", default="127.0.0.1",
                     help="proxies whose X-Forwarded-* headers are trusted")
    web.add_argument("--no-worker", action="store_true",
                     help="embedded mode: do not start the worker child that runs the admin API's crawls, "
                          "dataset builds and trainings (queues gpu, crawl, dataset)")
    web.set_defaults(handler=functools.partial(_serve_web, create_app=create_app))
