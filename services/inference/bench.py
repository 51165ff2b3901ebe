"""``postergenre bench inference``: what a 20-year table costs, against its physical floor.

Setting (the issue's): ResNet50 backbones with random weights at 256x256, twenty yearly models.

* (a) twenty independent models, (b) one shared-backbone model with twenty heads (scores
  ``[N, years, genres]``): latency p50/p95 of the full table through the web API (``POST
  /api/v1/predictions``, a JPEG poster, the embedded inference server behind it over gRPC);
* the floor, measured in the same run: one bare backbone pass, and the sum of the twenty models'
  single passes, run in-process on the loaded SavedModels;
* throughput: ``concurrency`` clients at once against the offline batched throughput of the same
  models (one in-process call on ``concurrency`` posters per model).

Every poster is new (random JPEG), so the web service's score cache never answers.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from shared.machine import machine_info

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)

FIRST_YEAR = 2000
PREFIX = "genre"


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


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def timed(function: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def random_poster(seed: int, width: int = 300, height: int = 450) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------- models


def backbone(image_size: int) -> Any:
    """ResNet50 without its classifier, global-average pooled, random weights."""
    import keras

    return keras.applications.ResNet50(
        weights=None, include_top=False, pooling="avg", input_shape=(image_size, image_size, 3)
    )


def independent_model(image_size: int, genres: int, seed: int) -> Any:
    """One year's model: pixels 0..255 -> rescaling (in the graph) -> ResNet50 -> sigmoid head."""
    import keras

    keras.utils.set_random_seed(seed)
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    features = backbone(image_size)(keras.layers.Rescaling(1 / 127.5, offset=-1)(pixels))
    scores = keras.layers.Dense(genres, activation="sigmoid", name="scores")(features)
    return keras.Model(pixels, scores)


def shared_model(image_size: int, genres: int, years: int, seed: int) -> Any:
    """The shared-backbone layout: one ResNet50, one sigmoid head per year -> ``[N, years, genres]``."""
    import keras

    keras.utils.set_random_seed(seed)
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    features = backbone(image_size)(keras.layers.Rescaling(1 / 127.5, offset=-1)(pixels))
    heads = [
        keras.layers.Dense(genres, activation="sigmoid", name=f"year_{i}")(features) for i in range(years)
    ]
    scores = keras.layers.Lambda(lambda tensors: keras.ops.stack(tensors, axis=1), name="scores")(heads)
    return keras.Model(pixels, scores)


def export_pixels_signature(model: Any, dest: Path, image_size: int) -> None:
    """A SavedModel with the contract's ``pixels`` signature (pixels -> scores)."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="pixels",
        fn=lambda pixels: {"scores": model(pixels, training=False)},
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="pixels")],
    )
    archive.write_out(str(dest), verbose=False)


def build_models(config: BenchConfig, models_dir: Path) -> tuple[list[str], str]:
    """Export the independent models and the shared one into ``models_dir/<name>/1``.

    Exports are reused by a later run with the same models, image size and genres (``--workdir``).
    """
    import json
    import shutil

    shape = {"models": config.models, "image_size": config.image_size, "genres": config.genres}
    marker = models_dir / "bench.json"
    if models_dir.exists() and (not marker.exists() or json.loads(marker.read_text()) != shape):
        shutil.rmtree(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(shape))
    names = [f"{PREFIX}-{FIRST_YEAR + i}" for i in range(config.models)]
    for index, name in enumerate(names):
        dest = models_dir / name / "1"
        if not (dest / "saved_model.pb").exists():
            log.info("exporting %s (%d/%d)", name, index + 1, len(names))
            export_pixels_signature(
                independent_model(config.image_size, config.genres, index), dest, config.image_size
            )
    shared = f"{PREFIX}-shared"
    dest = models_dir / shared / "1"
    if not (dest / "saved_model.pb").exists():
        log.info("exporting %s", shared)
        export_pixels_signature(
            shared_model(config.image_size, config.genres, config.models, 1000), dest, config.image_size
        )
    return names, shared


def register(settings: Any, names: list[str], shared: str, config: BenchConfig) -> None:
    from shared.db import ModelVersion, session_scope

    genres = [f"genre{i:02d}" for i in range(config.genres)]
    years = [FIRST_YEAR + i for i in range(config.models)]
    with session_scope(settings.effective_database_url) as session:
        session.query(ModelVersion).delete()
        for name, year in zip(names, years, strict=True):
            session.add(
                ModelVersion(
                    name=name,
                    version=1,
                    year=year,
                    image_size=config.image_size,
                    genres=genres,
                    architecture="resnet50",
                    status="blessed",
                )
            )
        session.add(
            ModelVersion(
                name=shared,
                version=1,
                layout="shared",
                image_size=config.image_size,
                genres=genres,
                years=years,
                architecture="resnet50",
                status="retired",
            )
        )


def serve_layout(settings: Any, layout: str) -> None:
    """Bless the independent models or the shared one (the web service picks the blessed ones)."""
    from shared.db import ModelVersion, session_scope

    with session_scope(settings.effective_database_url) as session:
        for row in session.query(ModelVersion):
            shared = row.layout == "shared"
            row.status = "blessed" if shared == (layout == "shared") else "retired"


# ------------------------------------------------------------------------------------------- clients


@contextmanager
def web_api(settings: Any) -> Iterator[Callable[[bytes, int], dict[str, Any]]]:
    """The web service on a loopback port (uvicorn in a thread) and a function posting one poster."""
    import httpx
    import uvicorn

    from services.web.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, name="bench-web", daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    local = threading.local()

    def ask(poster: bytes, last_year: int) -> dict[str, Any]:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
        response = local.http.post(
            "/api/v1/predictions",
            params={"years": f"{FIRST_YEAR}-{last_year}", "k": 6},
            files={"file": ("poster.jpg", poster, "image/jpeg")},
        )
        response.raise_for_status()
        return dict(response.json())

    try:
        yield ask
    finally:
        server.should_exit = True
        thread.join(timeout=30)


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


def time_once(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def burst(ask: Callable[[], None], clients: int) -> None:
    """``clients`` tables asked at once, one per client thread."""
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(lambda _: ask(), range(clients)))


def measure_layout(
    layout: str,
    ask: Callable[[], None],
    floor: Callable[[], Any],
    offline: Callable[[], Any],
    config: BenchConfig,
) -> LayoutResult:
    """Served tables and their floor, interleaved: on a shared machine both see the same load.

    Latency: each repeat times the floor (in-process passes), then one table through the service.
    Throughput: each round times the offline batch (``concurrency`` posters in one call per model),
    then a burst of ``concurrency`` concurrent clients asking for one table each.
    """
    for _ in range(2):
        ask()
    floor()
    offline()
    floor_times, table_times = [], []
    for _ in range(config.repeats):
        floor_times.append(time_once(floor))
        table_times.append(time_once(ask))
    offline_times, concurrent_times = [], []
    for _ in range(config.rounds):
        offline_times.append(time_once(offline))
        concurrent_times.append(time_once(lambda: burst(ask, config.concurrency)))
    posters = config.concurrency * config.rounds
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
    )


def ensure_tflite(saved_model: Path) -> Path:
    """``exports/model.tflite`` of a SavedModel's ``pixels`` signature (converted once, then reused)."""
    import tensorflow as tf

    tflite_path = saved_model / "exports" / "model.tflite"
    if not tflite_path.exists():
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["pixels"])
        tflite_path.parent.mkdir(parents=True, exist_ok=True)
        tflite_path.write_bytes(converter.convert())
    return tflite_path


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


def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    import tensorflow as tf

    from services.inference.client import InferenceClient
    from services.inference.server import start_server
    from shared.config import Settings, get_settings
    from shared.db import upgrade_database
    from shared.images import poster_pixels

    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="bench-inference-"))
    os.environ["POSTERGENRE_HOME"] = str(workdir)
    os.environ["POSTERGENRE_DATABASE_URL"] = ""
    os.environ["POSTERGENRE_OBJECT_STORE"] = ""
    os.environ["POSTERGENRE_MODEL_PREFIX"] = PREFIX
    get_settings.cache_clear()
    settings: Settings = get_settings()
    upgrade_database(settings.effective_database_url)
    load_before = os.getloadavg()
    started = time.perf_counter()
    names, shared = build_models(config, settings.models_dir)
    export_s = time.perf_counter() - started
    register(settings, names, shared, config)
    if config.backend == "litert":
        for name in [*names, shared]:
            ensure_tflite(settings.models_dir / name / "1")

    started = time.perf_counter()
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
    load_s = time.perf_counter() - started
    os.environ["POSTERGENRE_INFERENCE_URL"] = server.url
    os.environ["POSTERGENRE_INFERENCE_TIMEOUT_S"] = "600"
    get_settings.cache_clear()
    settings = get_settings()
    size = config.image_size
    rng = np.random.default_rng(0)
    one = rng.uniform(0, 255, size=(1, size, size, 3)).astype(np.float32)
    batch = rng.uniform(0, 255, size=(config.concurrency, size, size, 3)).astype(np.float32)

    def direct(name: str, pixels: np.ndarray) -> Callable[[], Any]:
        """The loaded SavedModel's pixels signature, called in-process (no queue, no RPC)."""
        run = server.manager.resolve(name).signatures["pixels"].batcher.run_batch
        return lambda: run({"pixels": pixels})

    singles = [direct(name, one) for name in names]
    batches = [direct(name, batch) for name in names]
    bare_model = tf.function(
        backbone(size), input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)]
    )
    bare_input = tf.constant(one / 127.5 - 1.0)
    floors: dict[str, Callable[[], Any]] = {
        "independent": lambda: [single() for single in singles],
        "shared": lambda: bare_model(bare_input),
    }
    offlines: dict[str, Callable[[], Any]] = {
        "independent": lambda: [run() for run in batches],
        "shared": direct(shared, batch),
    }

    # Every table gets a new poster (no cache hit), encoded before the clock starts.
    needed = 2 * (config.repeats + 2 + config.concurrency * config.rounds)
    posters = iter([random_poster(seed) for seed in range(needed)])
    poster_lock = threading.Lock()

    def next_poster() -> bytes:
        with poster_lock:
            return next(posters)

    last_year = FIRST_YEAR + config.models - 1

    @contextmanager
    def asker(layout: str) -> Iterator[Callable[[], None]]:
        if config.through == "web":
            with web_api(settings) as ask:
                yield lambda: check_table(ask(next_poster(), last_year), config.models)
            return
        with InferenceClient(server.url, timeout=600) as client:
            model_names = names if layout == "independent" else [shared]

            def ask_grpc() -> None:
                pixels = poster_pixels(next_poster(), size)[np.newaxis].astype(np.float32)
                answers = client.predict_many(model_names, pixels)
                if any(isinstance(answer, Exception) for answer in answers.values()):
                    raise RuntimeError(f"inference failed: {answers}")

            yield ask_grpc

    results: dict[str, LayoutResult] = {}
    for layout in ("independent", "shared"):
        serve_layout(settings, layout)
        with asker(layout) as ask:
            results[layout] = measure_layout(layout, ask, floors[layout], offlines[layout], config)
    server.stop(grace=1)
    litert = (
        compare_litert(settings.models_dir / names[0] / "1", size, config.concurrency, config.repeats)
        if config.litert
        else None
    )

    independent, shared_result = results["independent"], results["shared"]
    ratios = {
        "shared_p50_over_bare_backbone": shared_result.table_p50_s / shared_result.floor_p50_s,
        "independent_p50_over_sum_of_single_passes": independent.table_p50_s / independent.floor_p50_s,
        "independent_concurrent_over_offline": independent.concurrent_posters_per_s
        / independent.offline_posters_per_s,
        "shared_concurrent_over_offline": shared_result.concurrent_posters_per_s
        / shared_result.offline_posters_per_s,
    }
    aims = {
        "shared_p50_over_bare_backbone": ("<=", 1.25),
        "independent_p50_over_sum_of_single_passes": ("<=", 1.15),
        "independent_concurrent_over_offline": (">=", 0.9),
        "shared_concurrent_over_offline": (">=", 0.9),
    }
    return {
        "config": asdict(config),
        "machine": {**machine(), "load_average_before": load_before},
        "export_s": export_s,
        "load_s": load_s,
        "bare_backbone_pass_s": shared_result.floor_p50_s,
        "sum_of_single_passes_s": independent.floor_p50_s,
        "layouts": {name: asdict(result) for name, result in results.items()},
        "ratios": ratios,
        "aims": {
            key: {"aim": f"{op} {bound}", "met": ratios[key] <= bound if op == "<=" else ratios[key] >= bound}
            for key, (op, bound) in aims.items()
        },
        "litert_vs_tensorflow": litert,
        "workdir": str(workdir),
    }


def machine() -> dict[str, Any]:
    import tensorflow as tf

    return {**machine_info(), "tensorflow": tf.__version__}


def format_markdown(report: dict[str, Any]) -> str:
    """The table written in docs/benchmarks.md."""
    ms = 1000.0
    independent, shared = report["layouts"]["independent"], report["layouts"]["shared"]
    ratios = report["ratios"]
    clients = report["config"]["concurrency"]
    rows = [
        (
            "table latency p50 (ms)",
            f"{independent['table_p50_s'] * ms:.0f}",
            f"{shared['table_p50_s'] * ms:.0f}",
        ),
        (
            "table latency p95 (ms)",
            f"{independent['table_p95_s'] * ms:.0f}",
            f"{shared['table_p95_s'] * ms:.0f}",
        ),
        (
            "floor: sum of single passes / one bare backbone pass (ms)",
            f"{report['sum_of_single_passes_s'] * ms:.0f}",
            f"{report['bare_backbone_pass_s'] * ms:.0f}",
        ),
        (
            "p50 / floor",
            f"{ratios['independent_p50_over_sum_of_single_passes']:.2f} (aim <= 1.15)",
            f"{ratios['shared_p50_over_bare_backbone']:.2f} (aim <= 1.25)",
        ),
        (
            f"throughput, {clients} concurrent clients (posters/s)",
            f"{independent['concurrent_posters_per_s']:.2f}",
            f"{shared['concurrent_posters_per_s']:.2f}",
        ),
        (
            "offline batched throughput (posters/s)",
            f"{independent['offline_posters_per_s']:.2f}",
            f"{shared['offline_posters_per_s']:.2f}",
        ),
        (
            "concurrent / offline",
            f"{ratios['independent_concurrent_over_offline']:.2f} (aim >= 0.9)",
            f"{ratios['shared_concurrent_over_offline']:.2f} (aim >= 0.9)",
        ),
    ]
    lines = ["| measure | independent models | shared backbone |", "|---|---|---|"]
    lines += [f"| {name} | {a} | {b} |" for name, a, b in rows]
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
