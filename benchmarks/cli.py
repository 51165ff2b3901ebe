"""The ``postergenre bench ...`` subcommands: one per benchmark of this package (docs/benchmarks.md).

``services/cli.py``, the composition root, calls :func:`register`; no service imports a benchmark.
Each handler imports its benchmark (TensorFlow, Scrapy, moto) when it runs, so that ``postergenre
--help`` stays fast, and leaves on SIGTERM as on Ctrl-C, through the ``with`` blocks that stop its
servers (:func:`benchmarks.children.stop_on_sigterm`).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.memory import MODES as MEMORY_MODES
from services.trainer.cli import ARCHITECTURES

Handler = Callable[[argparse.Namespace], int]


def _stops_children(handler: Handler) -> Handler:
    """The handler, run with SIGTERM turned into the normal way out (its servers are stopped)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from benchmarks.children import stop_on_sigterm

        stop_on_sigterm()
        return handler(args)

    return run


@_stops_children
def _bench_crawl(args: argparse.Namespace) -> int:
    from benchmarks.crawler import bench_crawl

    return bench_crawl(movies=args.movies, as_json=args.json, real_posters=not args.generated_posters,
                       embedded=args.embedded)


@_stops_children
def _bench_dataset(args: argparse.Namespace) -> int:
    from benchmarks.dataset import run_benchmark

    result = run_benchmark(records=args.records, years=args.year_count, seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for window, info in result["windows"].items():
            print(f"{window}: {info['seconds']:.2f} s, {info['targets']} targets")
        print(f"total {result['total_seconds']:.2f} s, peak {result['peak_memory_mib']} MiB")
    return 0


@_stops_children
def _bench_train(args: argparse.Namespace) -> int:
    from benchmarks.trainer import run_training_benchmark

    result = run_training_benchmark(args.arch, args.image_size, args.resolution, args.batch_size, args.steps)
    print(json.dumps(result, indent=1))
    return 0


@_stops_children
def _bench_features(args: argparse.Namespace) -> int:
    from benchmarks.trainer import run_features_benchmark

    print(json.dumps(run_features_benchmark(args.arch, args.weights, args.side, args.posters), indent=1))
    return 0


@_stops_children
def _bench_explain(args: argparse.Namespace) -> int:
    from benchmarks.explain import run_explain_benchmark

    result = run_explain_benchmark(args.arch, args.layout, args.image_size, args.years, args.genres,
                                   args.repeats)
    print(json.dumps(result, indent=1))
    return 0


@_stops_children
def _bench_inference(args: argparse.Namespace) -> int:
    from benchmarks.inference import BenchConfig, format_markdown, run_benchmark

    config = BenchConfig(
        models=args.models,
        repeats=args.repeats,
        image_size=args.image_size,
        concurrency=args.concurrency,
        rounds=args.rounds,
        genres=args.genres,
        through=args.through,
        max_batch_size=args.max_batch_size,
        batch_timeout_ms=args.batch_timeout_ms,
        workdir=args.workdir,
        litert=args.litert,
        batch_threads=args.batch_threads,
        backend=args.backend,
        processes=args.processes,
        layouts=("shared",) if args.export else tuple(args.layouts.split(",")),
        export=args.export,
        inference_cpus=args.inference_cpus,
    )
    try:
        report = run_benchmark(config)
    except ValueError as exc:  # an --export folder that is not a shared-layout version
        print(f"bench inference: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_markdown(report))
    return 0


def _cpu_list(value: str) -> tuple[int, ...]:
    try:
        cpus = tuple(sorted({int(cpu) for cpu in value.split(",") if cpu.strip()}))
    except ValueError:
        cpus = ()
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"CPUs are comma-separated numbers (e.g. 1 or 2,3), not {value!r}")
    return cpus


def _layouts(value: str) -> str:
    from benchmarks.inference import LAYOUTS

    layouts = [layout.strip() for layout in value.split(",") if layout.strip()]
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if not layouts or unknown:
        raise argparse.ArgumentTypeError(f"layouts are independent and shared, not {value!r}")
    return ",".join(layouts)


@_stops_children
def _bench_inference_memory(args: argparse.Namespace) -> int:
    from benchmarks.memory import (
        MemoryBenchConfig,
        format_memory_markdown,
        run_memory_benchmark,
    )

    config = MemoryBenchConfig(
        versions=args.versions,
        years=args.years,
        genres=args.genres,
        image_size=args.image_size,
        repeats=args.repeats,
        modes=tuple(mode for mode in args.modes.split(",") if mode),
        workdir=args.workdir,
        export=args.export,
    )
    try:
        report = run_memory_benchmark(config)
    except ValueError as exc:
        print(f"bench inference-memory: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_memory_markdown(report))
    return 0


@_stops_children
def _bench_web(args: argparse.Namespace) -> int:
    from benchmarks.web import bench_web

    print(f"POST {args.url}/api/v1/predictions, years {args.years}, {args.requests} requests, "
          f"concurrency {args.concurrency}")
    try:
        results = bench_web(args.url.rstrip("/"), args.poster, args.years, args.requests, args.concurrency)
    except OSError as exc:  # nothing answers (refused, unreachable, timed out): say so, without a traceback
        print(f"error: no web service answers at {args.url} ({type(exc).__name__}: {exc}); start one "
              "with `postergenre serve web` or point --url at it", file=sys.stderr)
        return 1
    for result in results:
        print(result.summary())
    return 0


@_stops_children
def _bench_tracing(args: argparse.Namespace) -> int:
    from benchmarks.tracing import TraceBenchConfig, format_markdown, run_trace_bench

    config = TraceBenchConfig(years=args.years, image_size=args.image_size, requests=args.requests,
                              concurrency=args.concurrency, rounds=args.rounds, workdir=args.workdir)
    report = run_trace_bench(config)
    print(json.dumps(report, indent=2) if args.json else format_markdown(report))
    return 0



def register(bench: Any) -> None:
    """Add every benchmark to ``postergenre bench``."""
    bench_crawl = bench.add_parser("crawl", help="movies stored per second from the local TMDB test site")
    bench_crawl.add_argument("--movies", type=int, default=2000)
    bench_crawl.add_argument("--json", action="store_true", help="print the figures as JSON")
    bench_crawl.add_argument("--generated-posters", action="store_true",
                             help="generated posters even when ../shared/data/posters-imdb exists")
    bench_crawl.add_argument("--embedded", action="store_true",
                             help="SQLite and a local folder instead of PostgreSQL and an S3 server")
    bench_crawl.set_defaults(handler=_bench_crawl)

    bench_dataset = bench.add_parser("dataset", help="split+balance time on synthetic movie records")
    bench_dataset.add_argument("--records", type=int, default=100_000)
    bench_dataset.add_argument("--year-count", type=int, default=20)
    bench_dataset.add_argument("--seed", type=int, default=0)
    bench_dataset.add_argument("--json", action="store_true", help="print the result as JSON")
    bench_dataset.set_defaults(handler=_bench_dataset)

    bench_train = bench.add_parser("train", help="training and prediction throughput of one architecture")
    bench_train.add_argument("--arch", choices=ARCHITECTURES, default="smallcnn")
    bench_train.add_argument("--image-size", type=int, default=128)
    bench_train.add_argument("--resolution", type=int, default=None)
    bench_train.add_argument("--batch-size", type=int, default=32)
    bench_train.add_argument("--steps", type=int, default=10)
    bench_train.set_defaults(handler=_bench_train)

    bench_features = bench.add_parser(
        "features", help="the features strategy's vectors per second: Keras against LiteRT, in one run")
    bench_features.add_argument("--arch", choices=ARCHITECTURES, default="efficientnet-lite0")
    bench_features.add_argument("--weights", default="package")
    bench_features.add_argument("--side", type=int, default=320, help="working side (the demo's: 320)")
    bench_features.add_argument("--posters", type=int, default=256)
    bench_features.set_defaults(handler=_bench_features)

    bench_explain = bench.add_parser(
        "explain", help="an explanation's latency (Grad-CAM) against one prediction of the same model")
    bench_explain.add_argument("--arch", choices=ARCHITECTURES, default="resnet50")
    bench_explain.add_argument("--layout", choices=["shared", "independent"], default="shared")
    bench_explain.add_argument("--image-size", type=int, default=256)
    bench_explain.add_argument("--years", type=int, default=20, help="heads of the shared layout")
    bench_explain.add_argument("--genres", type=int, default=20)
    bench_explain.add_argument("--repeats", type=int, default=20)
    bench_explain.set_defaults(handler=_bench_explain)

    bench_inference = bench.add_parser(
        "inference", help="20-year table latency and throughput (docs/benchmarks.md)"
    )
    bench_inference.add_argument("--json", action="store_true", help="print the report as JSON")
    bench_inference.add_argument(
        "--models", type=int, default=20, help="yearly models (and shared-model heads)"
    )
    bench_inference.add_argument("--repeats", type=int, default=10, help="timed tables per layout")
    bench_inference.add_argument("--image-size", type=int, default=256)
    bench_inference.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    bench_inference.add_argument(
        "--rounds", type=int, default=5, help="rounds of offline batch, then concurrent burst"
    )
    bench_inference.add_argument("--genres", type=int, default=20)
    bench_inference.add_argument("--through", choices=["web", "grpc"], default="web")
    bench_inference.add_argument("--max-batch-size", type=int, default=16)
    bench_inference.add_argument("--batch-timeout-ms", type=float, default=2.0)
    bench_inference.add_argument("--workdir", default="", help="reuse exported models between runs")
    bench_inference.add_argument("--batch-threads", type=int, default=1, help="batches of one model at once")
    bench_inference.add_argument("--backend", choices=["tensorflow", "litert"], default="litert")
    bench_inference.add_argument(
        "--litert", action="store_true", help="also time LiteRT against TensorFlow on one model"
    )
    bench_inference.add_argument(
        "--processes",
        choices=["separate", "one"],
        default="separate",
        help="web service and inference server in their own processes, as deployed, or all in one",
    )
    bench_inference.add_argument(
        "--layouts",
        type=_layouts,
        default="independent,shared",
        help="comma-separated: independent, shared",
    )
    bench_inference.add_argument(
        "--export", default="", metavar="VERSION_FOLDER",
        help="serve this shared-layout version folder (trainer export) instead of a random ResNet50; "
             "its years, genres and input size are the export's; implies --layouts shared",
    )
    bench_inference.add_argument(
        "--inference-cpus", type=_cpu_list, default=(), metavar="LIST",
        help="CPUs (e.g. 1 or 2,3) of the inference server, the floor and the offline batch; the web "
             "service and the clients get the others, as services deployed on cores of their own",
    )
    bench_inference.set_defaults(handler=_bench_inference)

    bench_memory = bench.add_parser(
        "inference-memory",
        help="resident memory per served model and the table's gRPC p50, float vs int8 (docs/benchmarks.md)",
    )
    bench_memory.add_argument("--json", action="store_true", help="print the report as JSON")
    bench_memory.add_argument("--versions", type=int, default=3, help="versions loaded per mode")
    bench_memory.add_argument("--years", type=int, default=20, help="heads of the shared model")
    bench_memory.add_argument("--genres", type=int, default=20)
    bench_memory.add_argument("--image-size", type=int, default=256)
    bench_memory.add_argument("--repeats", type=int, default=30, help="timed tables per precision")
    bench_memory.add_argument(
        "--modes", default=",".join(MEMORY_MODES), help=f"comma-separated: {', '.join(MEMORY_MODES)}"
    )
    bench_memory.add_argument(
        "--export", default="", help="a trainer-exported version folder (with both LiteRT files) to measure "
        "instead of a random ResNet50, e.g. an efficientnet-lite0 model"
    )
    bench_memory.add_argument("--workdir", default="", help="reuse exported models between runs")
    bench_memory.set_defaults(handler=_bench_inference_memory)

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

