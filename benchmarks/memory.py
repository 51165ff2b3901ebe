"""``postergenre bench inference-memory``: resident memory per served model, and the 20-year table's
latency through gRPC in float and in int8 (issue 15 items 4 and 5).

Setting: the shared layout (one backbone, one sigmoid head per year, scores ``[N, years, genres]``)
with random weights, exported as the trainer does (SavedModel ``pixels`` signature, fp32 LiteRT, full-
integer LiteRT calibrated on random posters). Memory does not depend on the weights' values, so the
extra versions are byte copies of the first export (copies, not links: each version maps its own file,
as distinct trained versions do). Random weights also mean no agreement check can be meaningful: the
benchmark writes a passing verdict itself so that the server serves the int8 file; a real version's
verdict comes from the trainer's check on the test posters.

* memory: each mode runs in a fresh process (``spawn``), which loads ``versions`` versions one after
  another with the server's own code (:class:`~services.inference.models.Servable`), answers one table
  on each (so the interpreter's buffers exist) and reads its resident set size (``VmRSS``) before and
  after each; the report gives the RSS delta per version beside the served file's size. Modes:
  ``litert-int8``, ``litert-float``, ``tensorflow`` and ``litert+savedmodel`` (what every version cost
  before the server loaded each version once: the SavedModel's variables beside the interpreter, and
  the mapped .tflite weights kept resident beside XNNPACK's packed copy).
* latency: one embedded server over the shared model, started in float (``prefer_float``) then in
  int8, the table asked ``repeats`` times in alternation through the gRPC client; p50 of each.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.children import die_with_parent
from benchmarks.models import backbone, ensure_tflite, export_pixels_signature
from shared.machine import machine_info

log = logging.getLogger(__name__)

MODES = ("litert-int8", "litert-float", "tensorflow", "litert+savedmodel")
MODEL_NAME = "genre-shared"
BENCH_VERDICT = {"passed": True, "bench": "random weights: not checked; written by the benchmark so that "
                 "the server serves the int8 model"}
AIM_OVER_WEIGHTS = 1.5  # RSS delta per version at most this many times the served file, plus overhead


@dataclass(frozen=True)
class MemoryBenchConfig:
    versions: int = 3
    years: int = 20
    genres: int = 20
    image_size: int = 256
    export: str = ""  # a trainer-exported version folder to copy instead of a random ResNet50
    repeats: int = 30
    modes: tuple[str, ...] = MODES
    workdir: str = ""
    calibration_posters: int = 8


# ------------------------------------------------------------------------------------------- models


def shared_model(config: MemoryBenchConfig, seed: int = 0) -> Any:
    """ResNet50 (random weights, :func:`benchmarks.models.backbone`, as ``bench inference``) and one
    sigmoid layer reshaped to ``[N, years, genres]``.

    Other backbones (EfficientNet-Lite0) are measured on a version the trainer exported (``--export``).
    """
    import keras

    keras.utils.set_random_seed(seed)
    pixels = keras.Input((config.image_size, config.image_size, 3), name="pixels")
    features = backbone(config.image_size)(
        keras.layers.Rescaling(1 / 127.5, offset=-1)(pixels))
    scores = keras.layers.Dense(config.years * config.genres, activation="sigmoid")(features)
    return keras.Model(pixels, keras.layers.Reshape((config.years, config.genres))(scores))


def export_version(config: MemoryBenchConfig, dest: Path) -> None:
    """SavedModel (``pixels`` signature) + fp32 and full-integer LiteRT, as the trainer lays them out."""
    import tensorflow as tf

    export_pixels_signature(shared_model(config), dest, config.image_size)
    exports = ensure_tflite(dest).parent
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 256, (config.calibration_posters, config.image_size, config.image_size, 3))

    def representative() -> Any:
        for image in calibration.astype(np.float32):
            yield [image[np.newaxis]]

    converter = tf.lite.TFLiteConverter.from_saved_model(str(dest), signature_keys=["pixels"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    (exports / "model_full_int8.tflite").write_bytes(converter.convert())
    (exports / "model_full_int8.json").write_text(json.dumps(BENCH_VERDICT))


def copy_export(source: Path, dest: Path) -> None:
    """A trainer's version folder, with both LiteRT files; its int8 verdict set to pass (see above)."""
    exports = source / "exports"
    missing = [name for name in ("model.tflite", "model_full_int8.tflite") if not (exports / name).is_file()]
    if not (source / "saved_model.pb").is_file() or missing:
        raise ValueError(f"{source} is not a trainer version folder with both LiteRT exports "
                         f"(missing: {missing or ['saved_model.pb']})")
    shutil.copytree(source, dest)
    recorded = json.loads((exports / "model_full_int8.json").read_text()) \
        if (exports / "model_full_int8.json").is_file() else {}
    verdict = {**BENCH_VERDICT, "recorded": recorded}
    (dest / "exports" / "model_full_int8.json").write_text(json.dumps(verdict))


def build_versions(config: MemoryBenchConfig, models_dir: Path) -> list[Path]:
    """``models_dir/genre-shared/1..versions``, exported once and reused by a run with the same shape."""
    shape = {key: value for key, value in asdict(config).items()
             if key in ("years", "genres", "image_size", "export")}
    marker = models_dir / "bench-memory.json"
    if models_dir.exists() and (not marker.is_file() or json.loads(marker.read_text()) != shape):
        shutil.rmtree(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(shape))
    first = models_dir / MODEL_NAME / "1"
    if not (first / "exports" / "model_full_int8.json").is_file():
        shutil.rmtree(first, ignore_errors=True)
        if config.export:
            copy_export(Path(config.export), first)
        else:
            log.info("exporting a random ResNet50 shared model")
            export_version(config, first)
    folders = [first]
    for version in range(2, config.versions + 1):
        folder = models_dir / MODEL_NAME / str(version)
        if not folder.is_dir():
            shutil.copytree(first, folder)
        folders.append(folder)
    return folders


# ------------------------------------------------------------------------------------------- memory


def resident_bytes() -> int:
    """This process's resident set size (``VmRSS`` of /proc/self/status)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError as exc:
        raise RuntimeError(f"resident memory is read from /proc/self/status, which is not readable: {exc}"
                           ) from exc
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmRSS line")


def _load_versions(mode: str, folders: list[str], image_size: int) -> dict[str, Any]:
    """Child process: load the versions one by one in ``mode``; RSS before and after each."""
    import tensorflow as tf  # imported before the baseline: every server pays for it once

    from services.inference.models import Servable

    del tf
    pixels = np.random.default_rng(0).uniform(0, 255, (1, image_size, image_size, 3)).astype(np.float32)
    baseline = resident_bytes()
    loaded, after = [], []
    for index, folder in enumerate(folders):
        servable = Servable(MODEL_NAME, index + 1, Path(folder), max_batch_size=16, batch_timeout_s=0.002,
                            backend="tensorflow" if mode == "tensorflow" else "litert",
                            prefer_float=mode != "litert-int8",
                            release_mapped_weights=mode != "litert+savedmodel")
        if mode == "litert+savedmodel":
            servable._saved_model()  # the old behaviour: TensorFlow's copy of the weights beside LiteRT
        servable.predict("pixels", {"pixels": pixels}, timeout=600)
        loaded.append(servable)
        after.append(resident_bytes())
    served = loaded[0].litert_file
    weights = served.stat().st_size if served is not None else _variables_bytes(Path(folders[0]))
    for servable in loaded:
        servable.close()
    return {"baseline_bytes": baseline, "after_each_bytes": after, "served_file_bytes": weights,
            "served_file": served.name if served is not None else "variables/"}


def _variables_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in (folder / "variables").glob("*") if path.is_file())


def measure_memory(mode: str, folders: list[Path], image_size: int) -> dict[str, Any]:
    """``_load_versions`` in a fresh process, so that no other model or import skews its RSS."""
    context = multiprocessing.get_context("spawn")
    # The worker dies with this process, as every child of a benchmark (benchmarks.children).
    with context.Pool(1, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        raw = pool.apply(_load_versions, (mode, [str(f) for f in folders], image_size))
    levels = [raw["baseline_bytes"], *raw["after_each_bytes"]]
    deltas = [after - before for before, after in zip(levels, levels[1:], strict=False)]
    # The first version also pays once-per-process costs (LiteRT's and XNNPACK's code and caches);
    # the later ones show what one more version costs.
    later = deltas[1:] or deltas
    per_version = float(np.median(later))
    return {**raw, "delta_bytes": deltas, "per_version_bytes": per_version,
            "per_version_over_served_file": per_version / raw["served_file_bytes"],
            "first_version_overhead_bytes": deltas[0] - per_version}


# ------------------------------------------------------------------------------------------ latency


def measure_latency(models_dir: Path, version: int, image_size: int, repeats: int) -> dict[str, Any]:
    """The 20-year table (one call of the shared model) through gRPC: p50 in float and in int8.

    Both servers run at once on the same folder, asked in alternation, so a shared machine's load
    falls on both alike.
    """
    from services.inference.server import start_server
    from shared.inference_client import InferenceClient

    config = models_dir / "bench-memory.config"
    config.write_text(f"model_config_list {{ config {{ name: '{MODEL_NAME}' base_path: "
                      f"'{models_dir / MODEL_NAME}' model_platform: 'tensorflow' "
                      f"model_version_policy {{ specific {{ versions: {version} }} }} }} }}")
    servers = {precision: start_server(models_dir, config, poll_seconds=0, request_timeout_s=600,
                                       prefer_float=precision == "float32")
               for precision in ("float32", "int8")}
    try:
        for precision, server in servers.items():
            served = server.manager.resolve(MODEL_NAME)
            if served.precision != precision:
                raise RuntimeError(f"the {precision} server serves {served.precision} ({served.litert_file})")
        rng = np.random.default_rng(1)
        times: dict[str, list[float]] = {precision: [] for precision in servers}
        clients = {precision: InferenceClient(server.url, timeout=600)
                   for precision, server in servers.items()}
        try:
            for index in range(repeats + 1):
                pixels = rng.uniform(0, 255, (1, image_size, image_size, 3)).astype(np.float32)
                for precision, client in clients.items():
                    started = time.perf_counter()
                    client.predict(MODEL_NAME, pixels)
                    if index:  # the first table of each is a warm-up
                        times[precision].append(time.perf_counter() - started)
        finally:
            for client in clients.values():
                client.close()
    finally:
        for server in servers.values():
            server.stop(grace=0)
    p50 = {precision: float(np.percentile(values, 50)) for precision, values in times.items()}
    return {"table_p50_s": p50, "int8_over_float": p50["int8"] / p50["float32"], "repeats": repeats}


# ------------------------------------------------------------------------------------------- report


def served_image_size(folder: Path, default: int) -> int:
    """The input side a version declares (``assets.extra/genres.json``), else ``default``."""
    try:
        return int(json.loads((folder / "assets.extra" / "genres.json").read_text())["image_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def run_memory_benchmark(config: MemoryBenchConfig) -> dict[str, Any]:
    unknown = set(config.modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; choose from {list(MODES)}")
    if config.versions < 1 or config.repeats < 1:
        raise ValueError("versions and repeats must be at least 1")
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="bench-memory-"))
    load_before = os.getloadavg()
    started = time.perf_counter()
    folders = build_versions(config, workdir / "models")
    export_s = time.perf_counter() - started
    image_size = served_image_size(folders[0], config.image_size)
    memory = {mode: measure_memory(mode, folders, image_size) for mode in config.modes}
    latency = measure_latency(workdir / "models", 1, image_size, config.repeats)
    machine = {**machine_info(), "load_average_before": load_before, "load_average_after": os.getloadavg()}
    return {"config": asdict(config), "image_size": image_size, "machine": machine, "export_s": export_s,
            "memory": memory, "latency": latency, "workdir": str(workdir)}


def format_memory_markdown(report: dict[str, Any]) -> str:
    mb = 1 / 1e6
    config = report["config"]
    source = config["export"] or "random ResNet50"
    shape = f"{config['years']} years x {config['genres']} genres, " if not config["export"] else ""
    lines = [f"{source} shared model ({shape}"
             f"{report['image_size']} px), {config['versions']} versions per mode", "",
             "| mode | served file | MB | RSS per version MB | per version / file | first version extra MB |",
             "|---|---|---|---|---|---|"]
    for mode, value in report["memory"].items():
        lines.append(f"| {mode} | {value['served_file']} | {value['served_file_bytes'] * mb:.1f} | "
                     f"{value['per_version_bytes'] * mb:.1f} | {value['per_version_over_served_file']:.2f} | "
                     f"{value['first_version_overhead_bytes'] * mb:.1f} |")
    latency = report["latency"]
    p50 = latency["table_p50_s"]
    lines += ["", f"20-year table through gRPC, p50 of {latency['repeats']}: float32 "
              f"{p50['float32'] * 1000:.1f} ms, int8 {p50['int8'] * 1000:.1f} ms "
              f"(int8 / float {latency['int8_over_float']:.2f})",
              f"load average before/after: {report['machine']['load_average_before']} / "
              f"{report['machine']['load_average_after']}"]
    return "\n".join(lines)
