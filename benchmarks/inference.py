"""``postergenre bench inference``: what a 20-year table costs, against its physical floor.

Setting (the issue's): ResNet50 backbones with random weights at 256x256, twenty yearly models.

* (a) twenty independent models, (b) one shared-backbone model with twenty heads (scores
  ``[N, years, genres]``): latency p50/p95 of the full table through the web API (``POST
  /api/v1/predictions``, a JPEG poster, the embedded inference server behind it over gRPC);
* the floor, measured in the same run: one bare backbone pass, and the sum of the twenty models'
  single passes, run in-process on the loaded SavedModels;
* throughput: ``concurrency`` clients at once against the offline batched throughput of the same
  models (one in-process call on ``concurrency`` posters per model).

By default the services run as they are deployed: ``postergenre serve inference`` and ``postergenre
serve web`` are processes of their own, the clients and the in-process floor live in the benchmark's
process (``--processes one`` puts all of it in one process, as embedded mode's single ``serve web``
does, where every thread shares one interpreter lock). Every poster is new (random JPEG), so the web
service's score cache never answers.

The models it serves are built in :mod:`benchmarks.models`, the services are started by
:mod:`benchmarks.serving`, the tables are asked through :func:`benchmarks.web.poster_poster`; this
module measures and writes the table.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.children import child_pids, cpu_seconds, cpus_of, pin
from benchmarks.models import (
    FIRST_YEAR,
    PREFIX,
    backbone,
    build_models,
    ensure_tflite,
    register,
    serve_layout,
)
from benchmarks.serving import (
    inference_process,
    restored_environment,
    settings_in,
    web_in_thread,
    web_process,
)
from benchmarks.web import poster_poster
from shared.machine import machine_info

LAYOUTS = ("independent", "shared")


@dataclass(frozen=True)
class BenchConfig:
    models: int = 20
    repeats: int = 10
    image_size: int = 256
    concurrency: int = 16
    rounds: int = 5  # interleaved offline/concurrent rounds
    genres: int = 20
    through: str = "web"  # or "grpc": the inference client directly
    max_batch_size: int = 16
    batch_timeout_ms: float = 2.0
    workdir: str = ""
    litert: bool = False  # also time LiteRT against TensorFlow on one model
    batch_threads: int = 1
    backend: str = "litert"  # the served models run from a TFLite conversion; or "tensorflow"
    processes: str = "separate"  # web service and inference server in their own processes; or "one"
    layouts: tuple[str, ...] = LAYOUTS
    # A shared-layout version folder the trainer wrote (SavedModel + exports/model.tflite), served in
    # place of the random ResNet50 (how EfficientNet-Lite0 is measured); its years, genres and input
    # size come from the export, and the floor is one in-process pass of the exported model itself.
    export: str = ""
    # CPUs of the inference server and of the in-process floor and offline batch; the web service and
    # the clients run on the others, as where the services are deployed on machines (or cores) of their
    # own. Empty: everything shares every CPU.
    inference_cpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Placement:
    """Where the two sides of the benchmark run (``--inference-cpus``): the inference server, the floor
    and the offline batch on ``inference``; the web service and the clients on ``others``. Empty sets:
    no pinning, every process on every CPU."""

    inference: frozenset[int] = frozenset()
    others: frozenset[int] = frozenset()

    def place(self, pids: set[int], side: str) -> None:
        """Pin these processes to ``side``'s CPUs (``inference`` or ``others``); nothing when unpinned."""
        if self.inference:
            pin(pids, set(self.inference if side == "inference" else self.others))

    def inference_side(self) -> AbstractContextManager[None]:
        """This process's threads on the inference CPUs for the block (the floor, the offline batch),
        then back with the clients. Entered outside the timers: moving every thread costs time."""
        return self._moved() if self.inference else nullcontext()

    @contextmanager
    def _moved(self) -> Iterator[None]:
        self.place({os.getpid()}, "inference")
        try:
            yield
        finally:
            self.place({os.getpid()}, "others")


def placement_of(config: BenchConfig) -> Placement:
    """The config's ``inference_cpus`` checked against the CPUs this process may use."""
    if not config.inference_cpus:
        return Placement()
    if config.processes == "one":
        raise ValueError("--inference-cpus puts the inference server on CPUs of its own: it needs the "
                         "services in processes of their own (--processes separate)")
    available = os.sched_getaffinity(0)
    inference = frozenset(config.inference_cpus)
    if not inference <= available:
        raise ValueError(f"--inference-cpus {','.join(map(str, sorted(inference)))}: this process may "
                         f"only use CPUs {','.join(map(str, sorted(available)))}")
    others = frozenset(available - inference)
    if not others:
        raise ValueError("--inference-cpus must leave at least one CPU for the web service and the clients")
    return Placement(inference, others)


# Per layout: the report key of its floor, and the key and aim (at most) of its table p50 over it.
FLOOR_KEY = {"independent": "sum_of_single_passes_s", "shared": "bare_backbone_pass_s"}
P50_OVER_FLOOR = {
    "independent": ("independent_p50_over_sum_of_single_passes", 1.15),
    "shared": ("shared_p50_over_bare_backbone", 1.25),
}
CONCURRENT_OVER_OFFLINE_AIM = 0.9  # at least


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def random_poster(seed: int, width: int = 300, height: int = 450) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()



def check_table(answer: dict[str, Any], years: int) -> None:
    if answer.get("unavailable_years") or len(answer.get("years", [])) != years:
        raise RuntimeError(f"the table is incomplete: {answer}")


@dataclass
class LayoutResult:
    layout: str
    table_p50_s: float
    table_p95_s: float
    floor_p50_s: float  # sum of single passes (independent) or one bare backbone pass (shared)
    table_times_s: list[float]
    floor_times_s: list[float]
    concurrent_posters_per_s: float
    offline_posters_per_s: float
    round_ratios: list[float]  # concurrent / offline throughput of each interleaved round
    # CPU time (user + system, /proc/PID/stat) of each service process over the concurrent bursts, per
    # poster; None where the service does not run as a process of its own (``--processes one``) or is
    # not on the path (the web service ``--through grpc``).
    web_cpu_ms_per_poster: float | None = None
    inference_cpu_ms_per_poster: float | None = None
    # The same for this process during the bursts: its client threads (and, with ``--processes one``,
    # the services inside it too).
    bench_cpu_ms_per_poster: float | None = None
    # The CPUs each service process (and ``bench``, this process) was allowed at the end of the bursts.
    cpus: dict[str, list[int]] = field(default_factory=dict)


def time_once(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def burst(ask: Callable[[], None], clients: ThreadPoolExecutor, count: int) -> None:
    """``count`` tables asked at once, one per client thread (threads live for the whole run)."""
    list(clients.map(lambda _: ask(), range(count)))


def measure_layout(
    layout: str,
    ask: Callable[[], None],
    floor: Callable[[], Any],
    offline: Callable[[], Any],
    config: BenchConfig,
    services: dict[str, set[int]] | None = None,
    placement: Placement | None = None,
) -> LayoutResult:
    """Served tables and their floor, interleaved: on a shared machine both see the same load.

    Latency: each repeat times the floor (in-process passes), then one table through the service.
    Throughput: each round times the offline batch (``concurrency`` posters in one call per model),
    then a burst of ``concurrency`` concurrent clients asking for one table each. ``services`` (``web``,
    ``inference``: their process ids) and this process (``bench``: the clients) get their CPU time per
    poster of the bursts measured. With a ``placement``, the floor and the offline batch run on the
    inference server's CPUs.
    """
    services = {**(services or {}), "bench": {os.getpid()}}
    placement = placement or Placement()
    burst_cpu_s = dict.fromkeys(services, 0.0)
    for _ in range(2):
        ask()
    with placement.inference_side():
        floor()
        offline()
    floor_times, table_times = [], []
    for _ in range(config.repeats):
        with placement.inference_side():
            floor_times.append(time_once(floor))
        table_times.append(time_once(ask))
    offline_times, concurrent_times = [], []
    with ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="client") as clients:
        burst(ask, clients, config.concurrency)  # every client thread connects before the clock starts
        for _ in range(config.rounds):
            with placement.inference_side():
                offline_times.append(time_once(offline))
            # Read around the burst only: the offline batch runs in this process, not in the services.
            cpu_before = {name: cpu_seconds(pids) for name, pids in services.items()}
            concurrent_times.append(time_once(lambda: burst(ask, clients, config.concurrency)))
            for name, pids in services.items():
                burst_cpu_s[name] += cpu_seconds(pids) - cpu_before[name]
        cpus = {name: sorted(cpus_of(pids)) for name, pids in services.items()}
    posters = config.concurrency * config.rounds
    cpu_ms = {name: seconds * 1000.0 / posters for name, seconds in burst_cpu_s.items()}
    return LayoutResult(
        layout,
        percentile(table_times, 50),
        percentile(table_times, 95),
        percentile(floor_times, 50),
        table_times,
        floor_times,
        posters / sum(concurrent_times),
        posters / sum(offline_times),
        [offline / concurrent for offline, concurrent in zip(offline_times, concurrent_times, strict=True)],
        cpu_ms.get("web"),
        cpu_ms.get("inference"),
        cpu_ms["bench"],
        cpus,
    )


def compare_litert(saved_model: Path, image_size: int, batch_size: int, repeats: int) -> dict[str, Any]:
    """One model under TensorFlow and under LiteRT (its TFLite conversion): time and largest difference.

    Decides the serving backend: LiteRT is only worth it if it is faster at the batch sizes the
    batching server runs, with the same scores (within 1e-4).
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    tflite_path = ensure_tflite(saved_model)
    interpreter = Interpreter(model_path=str(tflite_path), num_threads=os.cpu_count())
    litert = interpreter.get_signature_runner("pixels")
    function = tf.saved_model.load(str(saved_model)).signatures["pixels"]
    rng = np.random.default_rng(1)
    report: dict[str, Any] = {}
    for rows in (1, batch_size):
        pixels = rng.uniform(0, 255, size=(rows, image_size, image_size, 3)).astype(np.float32)
        tensor = tf.constant(pixels)
        tf_times, lite_times = [], []
        run_tf = partial(function, pixels=tensor)
        run_litert = partial(litert, pixels=pixels)
        for _ in range(max(2, repeats // (1 if rows == 1 else 3))):  # interleaved, as the layouts
            tf_times.append(time_once(run_tf))
            lite_times.append(time_once(run_litert))
        difference = float(
            np.abs(function(pixels=tensor)["scores"].numpy() - litert(pixels=pixels)["scores"]).max()
        )
        report[f"batch_{rows}"] = {
            "tensorflow_p50_s": percentile(tf_times, 50),
            "litert_p50_s": percentile(lite_times, 50),
            "max_abs_diff": difference,
        }
    return report


def export_shape(version: Path) -> tuple[int, int, int]:
    """(years, genres, image size) of a shared-layout version folder, read from its LiteRT model's
    ``pixels`` signature: input ``[1, S, S, 3]``, scores ``[1, years, genres]``."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(ensure_tflite(version))).get_signature_runner("pixels")
    [input_shape] = [list(detail["shape"]) for detail in runner.get_input_details().values()]
    [output_shape] = [list(detail["shape"]) for detail in runner.get_output_details().values()]
    if len(input_shape) != 4 or len(output_shape) != 3:
        raise ValueError(f"{version} is not a shared-layout model: pixels {input_shape} -> scores "
                         f"{output_shape} (expected [N, S, S, 3] -> [N, years, genres])")
    return int(output_shape[1]), int(output_shape[2]), int(input_shape[1])


def copy_export(source: Path, models_dir: Path) -> str:
    """``source`` (a trainer's version folder) as ``models_dir/<prefix>-shared/1``, copied once per
    work folder; returns the served name."""
    if not (source / "saved_model.pb").is_file():
        raise ValueError(f"{source} is not a model version folder (no saved_model.pb)")
    shared = f"{PREFIX}-shared"
    marker = models_dir / "bench.json"
    shape = {"export": str(source.resolve())}
    if models_dir.exists() and (not marker.exists() or json.loads(marker.read_text()) != shape):
        shutil.rmtree(models_dir)
    if not (models_dir / shared / "1" / "saved_model.pb").exists():
        shutil.copytree(source, models_dir / shared / "1")
    marker.write_text(json.dumps(shape))
    return shared


def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    """Run the benchmark; the settings point at its work folder through the environment until it ends."""
    with restored_environment():
        return _run_benchmark(config)


def _run_benchmark(config: BenchConfig) -> dict[str, Any]:
    from services.inference.models import ModelManager
    from services.inference.server import start_server
    from shared.config import get_settings

    placement = placement_of(config)
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="bench-inference-"))
    settings = settings_in(workdir)
    load_before = os.getloadavg()
    started = time.perf_counter()
    if config.export:
        if tuple(config.layouts) != ("shared",):
            raise ValueError("--export serves one shared-layout model: use it with --layouts shared")
        shared = copy_export(Path(config.export), settings.models_dir)
        years, genres, image_size = export_shape(settings.models_dir / shared / "1")
        config = replace(config, models=years, genres=genres, image_size=image_size)
        names: list[str] = []
    else:
        names, shared = build_models(settings.models_dir, config.models, config.image_size, config.genres,
                                     config.layouts)
    export_s = time.perf_counter() - started
    register(settings, names, shared, config.image_size, config.genres, years=config.models,
             architecture="export" if config.export else "resnet50")
    layouts = [layout for layout in LAYOUTS if layout in config.layouts]
    served = [*names] if "independent" in layouts else []
    served += [shared] if "shared" in layouts else []
    if config.backend == "litert":
        for name in served:
            ensure_tflite(settings.models_dir / name / "1")
    services: dict[str, set[int]] = {}  # service processes of their own, by name: their pids
    with ExitStack() as stack:
        own_cpus = os.sched_getaffinity(0)
        stack.callback(pin, {os.getpid()}, own_cpus)  # this process as it was, pinned or not
        started = time.perf_counter()
        if config.processes == "one":
            server = start_server(
                settings.models_dir,
                None,
                max_batch_size=config.max_batch_size,
                batch_timeout_ms=config.batch_timeout_ms,
                poll_seconds=0,
                request_timeout_s=600,
                batch_threads=config.batch_threads,
                backend=config.backend,
            )
            stack.callback(server.stop, 1)
            manager, inference_url = server.manager, server.url
        else:
            # The floor and the offline batch run on models this process loads with the server's code.
            manager = ModelManager(
                settings.models_dir,
                None,
                config.max_batch_size,
                config.batch_timeout_ms / 1000.0,
                poll_seconds=0,
                batch_threads=config.batch_threads,
                backend=config.backend,
            )
            stack.callback(manager.close)
            manager.refresh()
            before = child_pids()
            inference_url = stack.enter_context(inference_process(
                settings, served, max_batch_size=config.max_batch_size,
                batch_timeout_ms=config.batch_timeout_ms, batch_threads=config.batch_threads,
                backend=config.backend))
            services["inference"] = child_pids() - before
            placement.place(services["inference"], "inference")
            placement.place({os.getpid()}, "others")
        load_s = time.perf_counter() - started
        os.environ["POSTERGENRE_INFERENCE_URL"] = inference_url
        os.environ["POSTERGENRE_INFERENCE_TIMEOUT_S"] = "600"
        get_settings.cache_clear()
        settings = get_settings()
        results = {
            layout: measure_served_layout(layout, config, settings, manager, inference_url, names, shared,
                                          services, placement)
            for layout in layouts
        }
    litert = (
        compare_litert(settings.models_dir / served[0] / "1", config.image_size, config.concurrency,
                       config.repeats)
        if config.litert
        else None
    )

    ratios: dict[str, float] = {}
    aims: dict[str, tuple[str, float]] = {}
    for layout, result in results.items():
        over_floor, bound = P50_OVER_FLOOR[layout]
        ratios[over_floor] = result.table_p50_s / result.floor_p50_s
        aims[over_floor] = ("<=", bound)
        ratios[f"{layout}_concurrent_over_offline"] = (result.concurrent_posters_per_s
                                                       / result.offline_posters_per_s)
        aims[f"{layout}_concurrent_over_offline"] = (">=", CONCURRENT_OVER_OFFLINE_AIM)
    return {
        "config": asdict(config),
        "machine": {**machine(), "load_average_before": load_before},
        "export_s": export_s,
        "load_s": load_s,
        **{FLOOR_KEY[layout]: result.floor_p50_s for layout, result in results.items()},
        "layouts": {name: asdict(result) for name, result in results.items()},
        "ratios": ratios,
        "aims": {
            key: {"aim": f"{op} {bound}", "met": ratios[key] <= bound if op == "<=" else ratios[key] >= bound}
            for key, (op, bound) in aims.items()
        },
        "litert_vs_tensorflow": litert,
        "workdir": str(workdir),
    }


def measure_served_layout(layout: str, config: BenchConfig, settings: Any, manager: Any, inference_url: str,
                          names: list[str], shared: str, services: dict[str, set[int]],
                          placement: Placement | None = None) -> LayoutResult:
    """Bless ``layout``'s models, then time its tables (through the web API or gRPC) and its floor;
    ``services`` are the service processes already running (their CPU time per poster is measured);
    the web service started here runs on ``placement``'s client CPUs."""
    placement = placement or Placement()
    import tensorflow as tf

    from shared.images import poster_pixels
    from shared.inference_client import InferenceClient

    size = config.image_size
    rng = np.random.default_rng(0)
    one = rng.uniform(0, 255, size=(1, size, size, 3)).astype(np.float32)
    batch = rng.uniform(0, 255, size=(config.concurrency, size, size, 3)).astype(np.float32)

    def direct(name: str, pixels: np.ndarray) -> Callable[[], Any]:
        """The loaded model's pixels signature, called in-process (no queue, no RPC), same backend."""
        run = manager.resolve(name).signatures["pixels"].batcher.run_batch
        return lambda: run({"pixels": pixels})

    if layout == "independent":
        singles = [direct(name, one) for name in names]
        batches = [direct(name, batch) for name in names]
        floor: Callable[[], Any] = lambda: [single() for single in singles]  # noqa: E731
        offline: Callable[[], Any] = lambda: [run() for run in batches]  # noqa: E731
    elif config.export:
        # No bare backbone of an exported architecture here (the benchmark builds ResNet50 only): the
        # floor is one in-process pass of the exported model, the served backend.
        floor = direct(shared, one)
        offline = direct(shared, batch)
    else:
        bare_model = tf.function(
            backbone(size), input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)]
        )
        bare_input = tf.constant(one / 127.5 - 1.0)
        floor = lambda: bare_model(bare_input)  # noqa: E731
        offline = direct(shared, batch)

    # Every table gets a new poster (no cache hit), encoded before the clock starts.
    needed = config.repeats + 2 + config.concurrency * (config.rounds + 1)
    first_seed = 0 if layout == "independent" else needed
    posters = iter([random_poster(first_seed + seed) for seed in range(needed)])
    poster_lock = threading.Lock()

    def next_poster() -> bytes:
        with poster_lock:
            return next(posters)

    years = f"years={FIRST_YEAR}-{FIRST_YEAR + config.models - 1}&k=6"
    serve_layout(settings, layout)
    measured = dict(services)
    with ExitStack() as stack:
        if config.through == "web":
            before = child_pids()
            web_url = stack.enter_context(
                web_in_thread(settings) if config.processes == "one" else web_process(settings, inference_url)
            )
            if config.processes != "one":
                measured["web"] = child_pids() - before
                placement.place(measured["web"], "others")
            post = poster_poster(web_url)

            def ask() -> None:
                check_table(post(next_poster(), years), config.models)
        else:
            client = stack.enter_context(InferenceClient(inference_url, timeout=600))
            model_names = names if layout == "independent" else [shared]

            def ask() -> None:
                pixels = poster_pixels(next_poster(), size)[np.newaxis].astype(np.float32)
                answers = client.predict_many(model_names, pixels)
                if any(isinstance(answer, Exception) for answer in answers.values()):
                    raise RuntimeError(f"inference failed: {answers}")

        return measure_layout(layout, ask, floor, offline, config, measured, placement)


def machine() -> dict[str, Any]:
    import tensorflow as tf

    return {**machine_info(), "tensorflow": tf.__version__}


def cpu_cell(ms: float | None) -> str:
    """A CPU-per-poster figure, or a dash where that service was not a process of its own."""
    return "-" if ms is None else f"{ms:.1f}"


def _cpus(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def format_markdown(report: dict[str, Any]) -> str:
    """The table written in docs/benchmarks.md (a column per measured layout)."""
    ms = 1000.0
    layouts = report["layouts"]
    ratios = report["ratios"]
    clients = report["config"]["concurrency"]
    titles = {"independent": "independent models", "shared": "shared backbone"}

    def cells(layout: str) -> list[str]:
        result = layouts[layout]
        ratio_key, bound = P50_OVER_FLOOR[layout]
        return [
            f"{result['table_p50_s'] * ms:.0f}",
            f"{result['table_p95_s'] * ms:.0f}",
            f"{report[FLOOR_KEY[layout]] * ms:.0f}",
            f"{ratios[ratio_key]:.2f} (aim <= {bound})",
            f"{result['concurrent_posters_per_s']:.2f}",
            f"{result['offline_posters_per_s']:.2f}",
            f"{ratios[f'{layout}_concurrent_over_offline']:.2f} (aim >= {CONCURRENT_OVER_OFFLINE_AIM})",
            cpu_cell(result.get("web_cpu_ms_per_poster")),
            cpu_cell(result.get("inference_cpu_ms_per_poster")),
            cpu_cell(result.get("bench_cpu_ms_per_poster")),
        ]

    floor = ("one pass of the exported model" if report["config"].get("export")
             else "one bare backbone pass")
    measures = [
        "table latency p50 (ms)",
        "table latency p95 (ms)",
        f"floor: sum of single passes / {floor} (ms)",
        "p50 / floor",
        f"throughput, {clients} concurrent clients (posters/s)",
        "offline batched throughput (posters/s)",
        "concurrent / offline",
        "web service CPU per poster, bursts (ms)",
        "inference server CPU per poster, bursts (ms)",
        "benchmark's own process (its clients) CPU per poster, bursts (ms)",
    ]
    columns = [cells(layout) for layout in layouts]
    lines = [
        "| measure | " + " | ".join(titles[layout] for layout in layouts) + " |",
        "|---" * (len(layouts) + 1) + "|",
    ]
    lines += [
        f"| {measure} | " + " | ".join(column[row] for column in columns) + " |"
        for row, measure in enumerate(measures)
    ]
    pinned = report["config"].get("inference_cpus")
    if pinned:
        cpus = layouts[next(iter(layouts))]["cpus"]
        lines += ["", f"Inference server, floor and offline batch on CPU(s) {_cpus(pinned)}; web service and "
                      f"clients on CPU(s) {_cpus(cpus.get('bench', []))}."]
    litert = report.get("litert_vs_tensorflow")
    if litert:
        lines += [
            "",
            "| one model, in-process | TensorFlow p50 (ms) | LiteRT p50 (ms) | max abs diff |",
            "|---|---|---|---|",
        ]
        for key, value in litert.items():
            lines.append(
                f"| {key.replace('_', ' ')} | {value['tensorflow_p50_s'] * ms:.0f} | "
                f"{value['litert_p50_s'] * ms:.0f} | {value['max_abs_diff']:.1e} |"
            )
    return "\n".join(lines)
