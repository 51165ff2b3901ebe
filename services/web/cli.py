"""Subcommands of the web service: ``postergenre serve web``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _serve_web(args: argparse.Namespace) -> int:
    import uvicorn

    from services.web.app import create_app
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


def _bench_web(args: argparse.Namespace) -> int:
    import logging

    from services.web.bench import bench_web

    logging.getLogger("httpx").setLevel(logging.WARNING)

    print(f"POST {args.url}/api/v1/predictions, years {args.years}, {args.requests} requests, "
          f"concurrency {args.concurrency}")
    for result in bench_web(args.url.rstrip("/"), args.poster, args.years, args.requests, args.concurrency):
        print(result.summary())
    return 0


def _bench_tracing(args: argparse.Namespace) -> int:
    import json

    from services.web.trace_bench import TraceBenchConfig, format_markdown, run_trace_bench

    config = TraceBenchConfig(years=args.years, image_size=args.image_size, requests=args.requests,
                              concurrency=args.concurrency, rounds=args.rounds, workdir=args.workdir)
    report = run_trace_bench(config)
    print(json.dumps(report, indent=2) if args.json else format_markdown(report))
    return 0


def register(commands: Any, serve: Any, bench: Any) -> None:
    """Add this service's subcommands to the `postergenre` parser."""
    web = serve.add_parser("web", help="the poster page and the HTTP API (uvicorn)")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8000)
    web.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    web.add_argument("--forwarded-allow-ips", default="127.0.0.1",
                     help="proxies whose X-Forwarded-* headers are trusted")
    web.add_argument("--no-worker", action="store_true",
                     help="embedded mode: do not start the worker child that runs the admin API's crawls, "
                          "dataset builds and trainings (queues gpu, crawl, dataset)")
    web.set_defaults(handler=_serve_web)

    web_bench = bench.add_parser("web", help="latency and throughput of the prediction API (cold and cached)")
    web_bench.add_argument("--url", default="http://127.0.0.1:8000")
    web_bench.add_argument("--poster", type=Path, default=None, help="poster to vary (default: generated)")
    web_bench.add_argument("--years", default="2000-2019")
    web_bench.add_argument("--requests", type=int, default=50)
    web_bench.add_argument("--concurrency", type=int, default=4)
    web_bench.set_defaults(handler=_bench_web)

    tracing = bench.add_parser(
        "tracing", help="the prediction path with tracing off and on (a local OTLP receiver), interleaved",
        description="Starts two web + inference deployments over one shared-backbone ResNet50 (random "
                    "weights), one exporting every span to a local OTLP/gRPC receiver, and times "
                    "their tables in turn (docs/benchmarks.md).")
    tracing.add_argument("--years", type=int, default=20, help="rows of the table (heads of the model)")
    tracing.add_argument("--image-size", type=int, default=128)
    tracing.add_argument("--requests", type=int, default=30, help="sequential tables per mode (latency)")
    tracing.add_argument("--concurrency", type=int, default=4, help="clients of one burst (throughput)")
    tracing.add_argument("--rounds", type=int, default=4, help="bursts per mode")
    tracing.add_argument("--workdir", default="", help="reuses the exported model of an earlier run")
    tracing.add_argument("--json", action="store_true", help="the whole report as JSON")
    tracing.set_defaults(handler=_bench_tracing)
