"""``postergenre bench tracing``: what OpenTelemetry tracing costs on the prediction path.

Two deployments side by side, as ``postergenre serve inference`` + ``postergenre serve web`` processes
over the same shared-backbone model (one ResNet50, a head per year, random weights; the layout the
demo trains): one with tracing off (no OTLP endpoint), one with tracing on, exporting every span to
a local OTLP/gRPC receiver this process runs (:class:`OtlpSink`, which counts what it receives).
Their requests are interleaved (one table from each in turn, then one burst of concurrent tables
from each in turn), so both see the same load on a shared machine. Every poster is new, so the score
cache never answers. The models (:mod:`benchmarks.models`), the services (:mod:`benchmarks.serving`),
the client (:func:`benchmarks.web.poster_poster`) and the timing are those of ``bench inference``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.children import child_pids, cpu_seconds

log = logging.getLogger(__name__)

MODES = ("off", "on")


@dataclass(frozen=True)
class TraceBenchConfig:
    years: int = 20  # heads of the shared model: the table has this many rows
    image_size: int = 128
    requests: int = 30  # sequential tables per mode, for the latency
    concurrency: int = 4  # clients of one burst, for the throughput
    rounds: int = 4  # bursts per mode
    workdir: str = ""


class OtlpSink:
    """A local OTLP/gRPC trace receiver (``TraceService/Export``) that counts spans by service and
    keeps the trace ids each service sent spans of."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans: dict[str, int] = {}
        self.traces: dict[str, set[str]] = {}
        self.exports = 0
        lock = threading.Lock()
        sink = self

        class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC name)
                with lock:
                    sink.exports += 1
                    for resource_spans in request.resource_spans:
                        service = next((a.value.string_value for a in resource_spans.resource.attributes
                                        if a.key == "service.name"), "?")
                        spans = [span for scope in resource_spans.scope_spans for span in scope.spans]
                        sink.spans[service] = sink.spans.get(service, 0) + len(spans)
                        sink.traces.setdefault(service, set()).update(span.trace_id.hex() for span in spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-sink"))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(1).wait()


@contextmanager
def otel_environment(endpoint: str | None) -> Iterator[None]:
    """The OTEL_* variables the services started inside see (they copy ``os.environ``)."""
    saved = {key: value for key, value in os.environ.items() if key.startswith("OTEL_")}
    for key in saved:
        del os.environ[key]
    if endpoint:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    try:
        yield
    finally:
        for key in [key for key in os.environ if key.startswith("OTEL_")]:
            del os.environ[key]
        os.environ.update(saved)


@dataclass
class ModeResult:
    mode: str
    table_p50_ms: float
    table_p95_ms: float
    posters_per_s: float
    cpu_ms_per_table: float  # web + inference processes, user + system
    table_times_ms: list[float]


def table_asker(post: Callable[[bytes, str], dict[str, Any]], poster: Callable[[], bytes], query: str,
                years: int) -> Callable[[], None]:
    """Ask one table of a new poster; raise unless every year is answered."""
    from benchmarks.inference import check_table

    def ask() -> None:
        check_table(post(poster(), query), years)

    return ask


def run_trace_bench(config: TraceBenchConfig) -> dict[str, Any]:
    from benchmarks.serving import restored_environment

    with restored_environment():
        return _run(config)


def _run(config: TraceBenchConfig) -> dict[str, Any]:
    from benchmarks import inference as bench
    from benchmarks.models import FIRST_YEAR, build_models, ensure_tflite, register, serve_layout
    from benchmarks.serving import inference_process, settings_in, web_process
    from benchmarks.web import poster_poster

    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="bench-tracing-"))
    settings = settings_in(workdir)
    models = bench.BenchConfig(models=config.years, image_size=config.image_size, layouts=("shared",),
                               concurrency=config.concurrency)
    names, shared = build_models(settings.models_dir, models.models, models.image_size, models.genres,
                                 models.layouts)
    register(settings, names, shared, models.image_size, models.genres)
    serve_layout(settings, "shared")
    ensure_tflite(settings.models_dir / shared / "1")

    sink = OtlpSink()
    asks: dict[str, Callable[[], None]] = {}
    query = f"years={FIRST_YEAR}-{FIRST_YEAR + config.years - 1}&k=6"
    seeds = iter(range(10**9))
    seed_lock = threading.Lock()

    def new_poster() -> bytes:
        with seed_lock:
            seed = next(seeds)
        return bench.random_poster(seed)

    load_before = os.getloadavg()
    processes: dict[str, set[int]] = {}
    with ExitStack() as stack:
        stack.callback(sink.stop)
        for mode in MODES:
            before = child_pids()
            with otel_environment(sink.endpoint if mode == "on" else None):
                inference_url = stack.enter_context(inference_process(
                    settings, [shared], max_batch_size=models.max_batch_size,
                    batch_timeout_ms=models.batch_timeout_ms, batch_threads=models.batch_threads,
                    backend=models.backend))
                web_url = stack.enter_context(web_process(settings, inference_url))
            processes[mode] = child_pids() - before
            asks[mode] = table_asker(poster_poster(web_url), new_poster, query, config.years)
        # Posters are encoded inside the timed call in both modes alike (a 300x450 JPEG, ~2 ms).
        for run in asks.values():
            for _ in range(3):
                run()
        cpu_before = {mode: cpu_seconds(processes[mode]) for mode in MODES}
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(config.requests):
            for mode, run in asks.items():
                times[mode].append(bench.time_once(run) * 1000)
        bursts: dict[str, list[float]] = {mode: [] for mode in MODES}
        with futures.ThreadPoolExecutor(config.concurrency, thread_name_prefix="client") as clients:
            for run in asks.values():
                bench.burst(run, clients, config.concurrency)  # every client connects first
            for _ in range(config.rounds):
                for mode, run in asks.items():
                    burst = partial(bench.burst, run, clients, config.concurrency)
                    bursts[mode].append(bench.time_once(burst))
        time.sleep(6)  # the batch span processors export every 5 s: let the last spans arrive
        timed_tables = config.requests + config.concurrency * (config.rounds + 1)
        results = {
            mode: ModeResult(mode, bench.percentile(times[mode], 50), bench.percentile(times[mode], 95),
                             config.concurrency * config.rounds / sum(bursts[mode]),
                             (cpu_seconds(processes[mode]) - cpu_before[mode]) * 1000 / timed_tables,
                             times[mode])
            for mode in MODES
        }
    return {
        "config": asdict(config),
        "machine": {**bench.machine(), "load_average_before": load_before},
        "modes": {mode: asdict(result) for mode, result in results.items()},
        "p50_on_over_off": results["on"].table_p50_ms / results["off"].table_p50_ms,
        "throughput_on_over_off": results["on"].posters_per_s / results["off"].posters_per_s,
        "cpu_on_over_off": results["on"].cpu_ms_per_table / results["off"].cpu_ms_per_table,
        "spans_received": dict(sink.spans),
        "exports_received": sink.exports,
        "tables_per_mode": config.requests + 3 + config.concurrency * (config.rounds + 1),
        "workdir": str(workdir),
    }


def format_markdown(report: dict[str, Any]) -> str:
    modes = report["modes"]
    rows = [
        "| tracing | table p50 (ms) | table p95 (ms) | throughput (posters/s, "
        f"{report['config']['concurrency']} clients) | CPU per table (ms, web + inference) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    titles = {"off": "off (no endpoint)", "on": "on, OTLP/gRPC to a local receiver"}
    for mode in MODES:
        result = modes[mode]
        rows.append(f"| {titles[mode]} | {result['table_p50_ms']:.1f} | {result['table_p95_ms']:.1f} | "
                    f"{result['posters_per_s']:.2f} | {result['cpu_ms_per_table']:.1f} |")
    spans = ", ".join(f"{name} {count}" for name, count in sorted(report["spans_received"].items()))
    rows.append("")
    rows.append(f"On over off: p50 x{report['p50_on_over_off']:.3f}, throughput "
                f"x{report['throughput_on_over_off']:.3f}, CPU x{report['cpu_on_over_off']:.3f}. "
                f"Spans received: {spans} "
                f"({report['tables_per_mode']} traced tables).")
    return "\n".join(rows)
