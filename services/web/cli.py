"""Subcommands of the web service: ``postergenre serve web``."""

from __future__ import annotations

import argparse
from typing import Any


def _serve_web(args: argparse.Namespace) -> int:
    import uvicorn

    from services.web.app import create_app

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level,
                proxy_headers=True, forwarded_allow_ips=args.forwarded_allow_ips)
    return 0


def register(commands: Any, serve: Any, bench: Any) -> None:
    """Add this service's subcommands to the `postergenre` parser."""
    web = serve.add_parser("web", help="the poster page and the HTTP API (uvicorn)")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8000)
    web.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    web.add_argument("--forwarded-allow-ips", default="127.0.0.1",
                     help="proxies whose X-Forwarded-* headers are trusted")
    web.set_defaults(handler=_serve_web)
