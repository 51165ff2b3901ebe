"""Subcommands of the inference service: ``serve inference`` and ``predict``."""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.inference.poster_table import PosterTable


def _serve_inference(args: argparse.Namespace) -> int:
    from services.inference.server import start_server
    from shared.config import get_settings
    from shared.tracing import start_tracing

    settings = get_settings()
    start_tracing("postergenre-inference")  # before the gRPC server is built: it gets instrumented
    config_path: Path | None = args.model_config or settings.models_config_path
    if args.model_config is not None and not args.model_config.is_file():
        print(f"no model config at {args.model_config}", file=sys.stderr)
        return 2
    server = start_server(
        args.models_dir or settings.models_dir,
        config_path,
        grpc_port=args.grpc_port,
        rest_port=args.rest_port,
        host=args.host,
        max_batch_size=args.max_batch_size or settings.inference_max_batch_size,
        batch_timeout_ms=settings.inference_batch_timeout_ms
        if args.batch_timeout_ms is None
        else args.batch_timeout_ms,
        poll_seconds=args.poll_seconds if args.poll_seconds is not None else settings.inference_poll_seconds,
        request_timeout_s=settings.inference_timeout_s,
        batch_threads=args.batch_threads,
        backend=args.backend,
        metrics_port=(settings.inference_metrics_port if args.metrics_port is None else args.metrics_port)
        or None,
        prefer_float=args.prefer_float or settings.inference_prefer_float,
    )
    print(f"serving gRPC on {server.url} and REST on {server.rest_url}"
          + (f", metrics at {server.metrics_url}" if server.metrics_url else ""), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.grpc_server.stop(1))
    try:
        server.wait()
    finally:
        server.stop(grace=1)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from services.inference.poster_table import format_table, inference_client, predict_poster
    from shared.config import get_settings
    from shared.images import PosterImageError
    from shared.inference_client import InferenceError
    from shared.years import parse_years

    settings = get_settings()
    try:
        years = parse_years(args.years)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not 1 <= args.k <= 50:
        print(f"bad --k {args.k}: between 1 and 50", file=sys.stderr)
        return 2
    try:
        data = args.poster.read_bytes()
    except OSError as exc:
        print(f"cannot read {args.poster}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        with inference_client(settings, args.url) as client:
            table = predict_poster(data, years, args.k, settings, client)
    except PosterImageError as exc:
        print(f"{args.poster} is not a usable poster: {exc}", file=sys.stderr)
        return 2
    except InferenceError as exc:
        print(f"inference failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        from services.cli_support import print_json

        print_json(table_json(table, args.k, hashlib.sha256(data).hexdigest()))
        return 0
    print(format_table(table))
    return 0


def table_json(table: PosterTable, k: int, poster_sha256: str) -> dict[str, Any]:
    """``predict --json``: the table in the shape of the REST API's answer (docs/api.md)."""
    return {
        "poster_sha256": poster_sha256,
        "k": k,
        "years": [{"year": row.year, "model": row.model, "version": row.version,
                   "top": [{"genre": genre, "score": round(float(score), 6)} for genre, score in row.top]}
                  for row in table.rows],
        "unavailable_years": list(table.unavailable_years),
    }


def register(commands: Any, serve: Any) -> None:
    """Add this service's subcommands to the `postergenre` parser."""
    server = serve.add_parser(
        "inference", help="the embedded inference server (TF Serving's gRPC and REST APIs)"
    )
    server.add_argument("--grpc-port", type=int, default=8500)
    server.add_argument("--rest-port", type=int, default=8501)
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument(
        "--metrics-port", type=int, default=None,
        help="port of the Prometheus endpoint (/monitoring/prometheus/metrics, also on the REST port); "
        "default: inference_metrics_port; 0: off",
    )
    server.add_argument(
        "--model-config",
        type=Path,
        default=None,
        help="models.config (ModelServerConfig text); default: the settings' one, else every "
        "<name>/<version>/ folder of the models folder",
    )
    server.add_argument("--models-dir", type=Path, default=None, help="default: $POSTERGENRE_HOME/models")
    server.add_argument("--max-batch-size", type=int, default=None, help="default: inference_max_batch_size")
    server.add_argument(
        "--batch-timeout-ms", type=float, default=None, help="default: inference_batch_timeout_ms"
    )
    server.add_argument("--batch-threads", type=int, default=1, help="batches of one model run at once")
    server.add_argument(
        "--backend",
        choices=["tensorflow", "litert"],
        default="litert",
        help="run the pixels signature with TensorFlow or LiteRT (exports/model.tflite, or "
        "model_full_int8.tflite where its agreement check passed)",
    )
    server.add_argument(
        "--prefer-float",
        action="store_true",
        help="serve the fp32 LiteRT model even where the int8 one passed its check "
        "(default: inference_prefer_float)",
    )
    server.add_argument(
        "--poll-seconds",
        type=float,
        default=None,
        help="how often to look for new versions and config changes (0: never)",
    )
    server.set_defaults(handler=_serve_inference)

    predict = commands.add_parser("predict", help="the best genres of a poster under each year's model")
    predict.add_argument("poster", type=Path)
    predict.add_argument("--years", default="2000-2019")
    predict.add_argument("--k", type=int, default=6, help="genres per year")
    predict.add_argument(
        "--url",
        default="",
        help="inference server (grpc://host:port or http://host:port); "
        "default: POSTERGENRE_INFERENCE_URL, else an embedded one",
    )
    predict.add_argument("--json", action="store_true",
                         help="print the table as JSON, shaped as the REST API's answer "
                         "(stdout holds only the JSON)")
    predict.set_defaults(handler=_predict)
