"""Exporting a trained Keras model: SavedModel for TF Serving, TFLite, and a TF.js graph model.

Every model version is written once, in the layout of ``docs/contracts.md``::

    <name>/<version>/                         SavedModel (TF Serving's layout)
        saved_model.pb, variables/
        assets.extra/tf_serving_warmup_requests
        assets.extra/genres.json              (when the genre list is given)
        assets.extra/postergenre.json         (the metadata given by the trainer)
        exports/model.tflite                  fp32
        exports/model_int8.tflite             dynamic-range int8 weights
        exports/model_full_int8.tflite        int8 weights and activations, outlier layers float (the
                                              tflite-full-int8 format), and model_full_int8.json:
                                              its agreement check against the float model (the
                                              server's verdict)
        exports/tfjs/model.json, *.bin        TF.js graph model of the ``pixels`` signature

The Keras model takes float32 pixels ``[None, S, S, 3]`` (RGB, 0..255) and returns sigmoid scores
``[None, G]`` or ``[None, Y, G]``. The SavedModel has two signatures:

* ``serving_default``: ``images`` (tf.string ``[None]``, raw JPEG/PNG bytes) -> ``scores``. The
  decoding and resizing happen in the graph and reproduce :func:`shared.images.poster_pixels` bit
  for bit (:mod:`services.trainer.tf_decoding`, which says how and what is not reproduced).
* ``pixels``: ``pixels`` (float32 ``[None, S, S, 3]``) -> ``scores``: the model as trained.
* ``explain`` and ``explain_images`` (models built by :mod:`services.trainer.models`, whose
  backbone marks its last convolutional block): Grad-CAM (:mod:`services.trainer.explain`).
  Inputs ``pixels`` (``explain``) or ``images`` (``explain_images``), ``head`` (int32 ``[None]``:
  the year's index on a shared model's year axis, 0 for a one-year model) and ``genres`` (int32
  ``[None, K]``: the genre indices to explain, K >= 1); outputs ``heatmaps`` (float32
  ``[None, K, h, w]``, 0..1, at the feature map's resolution) and ``scores`` (float32
  ``[None, G]``: the head's scores). One backbone pass per poster whatever K.

Each export is loaded back and compared with Keras on sample inputs (:func:`check_exports`); the
largest absolute difference of each is returned and stored with the model version.

The TF.js converter (tensorflowjs 4.22.0) cannot be installed beside TensorFlow 2.21, so it runs as
a subprocess from its own environment, created by ``scripts/make_tfjs_env.sh``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from services.trainer.explain import (
    GENRES_INPUT,
    HEAD_INPUT,
    NotExplainable,
    explanation_parts,
    grad_cam,
)
from services.trainer.tf_decoding import poster_bytes_to_pixels
from shared.training_plan import EXPORT_FORMATS, FULL_INT8_FORMAT, TrainInputError, check_formats

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
TFJS_ENV_SCRIPT = "scripts/make_tfjs_env.sh"
DEFAULT_TFJS_CONVERTER = REPO_ROOT / ".venv-tfjs" / "bin" / "tensorflowjs_converter"
TFJS_CONVERTER_ENV = "POSTERGENRE_TFJS_CONVERTER"
TFJS_LOADER_SCRIPT = Path(__file__).resolve().parent / "tfjs" / "load_graph_model.mjs"

BYTES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "pixels"
BYTES_INPUT = "images"
PIXELS_INPUT = "pixels"
SCORES_OUTPUT = "scores"
EXPLAIN_SIGNATURE = "explain"
EXPLAIN_IMAGES_SIGNATURE = "explain_images"

EXPORTS_DIR = "exports"
TFLITE_FILE = "model.tflite"
TFLITE_INT8_FILE = "model_int8.tflite"
TFJS_DIR = "tfjs"
WARMUP_FILE = "tf_serving_warmup_requests"

# Number of generated sample images when the caller gives none: enough to catch a wrong layout,
# small enough for a quick check.
DEFAULT_SAMPLE_COUNT = 4


class ExportError(RuntimeError):
    """An export could not be written or read back; the message says which and why."""


class TfjsConverterMissing(ExportError):
    """The separate TF.js converter environment has not been created."""


class TfjsRuntimeMissing(ExportError):
    """Node.js or the @tensorflow/tfjs package is not available to load a TF.js model back."""


# ---------------------------------------------------------------------------------------------
# SavedModel
# ---------------------------------------------------------------------------------------------


def _scores_from_pixels_fn(model: keras.Model) -> Any:
    def scores_from_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        # Cast: a mixed-precision model may still answer in float16; the contract says float32.
        return {SCORES_OUTPUT: tf.cast(model(pixels, training=False), tf.float32)}

    return scores_from_pixels


def serving_archive(model: keras.Model, image_size: int, with_bytes: bool = True,
                    with_explain: bool = True) -> Any:
    """Keras' ExportArchive with the signatures of docs/contracts.md.

    The ``explain`` signatures are added when ``with_explain`` and the model has a marked last
    convolutional block (every model :mod:`services.trainer.models` builds); otherwise they are
    left out with a log line, and the version simply has no explanations.

    ExportArchive, not a hand-made tf.Module holding the model: it saves the model's variables as
    plain TF variables, which the TFLite converter freezes correctly (with the Keras model as a
    tracked child, the converted model reads uninitialised variables and answers NaN).
    """
    scores_from_pixels = _scores_from_pixels_fn(model)

    def scores_from_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return scores_from_pixels(poster_bytes_to_pixels(images, image_size))

    archive = keras.export.ExportArchive()
    archive.track(model)
    if with_bytes:
        archive.add_endpoint(name=BYTES_SIGNATURE, fn=scores_from_images,
                             input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    pixels_spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=PIXELS_INPUT)
    archive.add_endpoint(name=PIXELS_SIGNATURE, fn=scores_from_pixels, input_signature=[pixels_spec])
    if with_explain:
        _add_explain_endpoints(archive, model, image_size, pixels_spec, with_bytes)
    return archive


def _add_explain_endpoints(archive: Any, model: keras.Model, image_size: int, pixels_spec: tf.TensorSpec,
                           with_bytes: bool) -> None:
    try:
        parts = explanation_parts(model)
    except NotExplainable as exc:
        logger.info("no explain signature: %s", exc)
        return
    head_spec = tf.TensorSpec([None], tf.int32, name=HEAD_INPUT)
    genres_spec = tf.TensorSpec([None, None], tf.int32, name=GENRES_INPUT)

    def explain_pixels(pixels: tf.Tensor, head: tf.Tensor, genres: tf.Tensor) -> dict[str, tf.Tensor]:
        return grad_cam(parts, pixels, head, genres)

    def explain_images(images: tf.Tensor, head: tf.Tensor, genres: tf.Tensor) -> dict[str, tf.Tensor]:
        return grad_cam(parts, poster_bytes_to_pixels(images, image_size), head, genres)

    archive.add_endpoint(name=EXPLAIN_SIGNATURE, fn=explain_pixels,
                         input_signature=[pixels_spec, head_spec, genres_spec])
    if with_bytes:
        archive.add_endpoint(name=EXPLAIN_IMAGES_SIGNATURE, fn=explain_images,
                             input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT),
                                              head_spec, genres_spec])


def _all_layers(layer: Any) -> list[Any]:
    children = list(getattr(layer, "layers", []) or [])
    return children + [grandchild for child in children for grandchild in _all_layers(child)]


def _with_float32_policies(config: Any) -> Any:
    if isinstance(config, list):
        return [_with_float32_policies(item) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy" and isinstance(config.get("config"), dict):
        return {**config, "config": {**config["config"], "name": "float32"}}
    return {key: _with_float32_policies(value) for key, value in config.items()}


def export_network(model: keras.Model) -> keras.Model:
    """The network that is exported: ``model`` itself, or its float32 twin if it computes in float16.

    A model trained in mixed precision (on a GPU) computes in float16, which neither the TFLite
    converter nor TF.js accept and which CPUs serve slowly; its weights are float32 already, so a
    float32 copy of the architecture takes them as they are.
    """
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in _all_layers(model)):
        return model
    try:
        config = _with_float32_policies(keras.saving.serialize_keras_object(model))
        twin = keras.saving.deserialize_keras_object(config)
        twin.set_weights(model.get_weights())
    except (TypeError, ValueError) as exc:
        raise ExportError(f"cannot rebuild the mixed-precision model in float32 for export: {exc}") from exc
    return twin


def model_image_size(model: keras.Model) -> int:
    """The side S of the model's square ``[None, S, S, 3]`` input."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or shape[1] is None:
        raise ExportError(f"the model must take pixels [None, S, S, 3]; its input is {list(shape)}")
    return int(shape[1])


def write_warmup_requests(saved_model_dir: Path, model_name: str, sample_pixels: np.ndarray) -> Path:
    """TF Serving replays these ``pixels`` requests before serving, so the first user does not wait."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=PIXELS_SIGNATURE))
    request.inputs[PIXELS_INPUT].CopyFrom(tf.make_tensor_proto(sample_pixels.astype(np.float32)))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    path = saved_model_dir / "assets.extra" / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(log.SerializeToString())
    return path


def write_metadata(saved_model_dir: Path, metadata: dict[str, Any], image_size: int) -> None:
    """``postergenre.json`` holds the trainer's metadata; ``genres.json`` the output layout."""
    extra = saved_model_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    (extra / "postergenre.json").write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
    if "genres" in metadata:
        layout = {"genres": list(metadata["genres"]), "years": list(metadata.get("years") or []),
                  "image_size": image_size}
        (extra / "genres.json").write_text(json.dumps(layout, indent=2))


def export_saved_model(model: keras.Model, dest: Path, image_size: int,
                       metadata: dict[str, Any] | None = None,
                       warmup_pixels: np.ndarray | None = None) -> Path:
    """Write the SavedModel to ``dest`` (``.../<name>/<version>``) with signatures and warm-up file.

    ``dest`` must not hold a SavedModel already: versions are immutable.
    """
    dest = Path(dest)
    if (dest / "saved_model.pb").exists():
        raise ExportError(f"{dest} already holds a SavedModel; model versions are immutable")
    if model_image_size(model) != image_size:
        raise ExportError(f"image_size {image_size} does not match the model's input "
                          f"{model_image_size(model)}")
    dest.mkdir(parents=True, exist_ok=True)
    serving_archive(export_network(model), image_size).write_out(str(dest), verbose=False)
    if warmup_pixels is None:
        warmup_pixels = np.full((1, image_size, image_size, 3), 127.0, np.float32)
    write_warmup_requests(dest, dest.parent.name or "model", warmup_pixels[:1])
    if metadata is not None:
        write_metadata(dest, metadata, image_size)
    return dest


# ---------------------------------------------------------------------------------------------
# TFLite
# ---------------------------------------------------------------------------------------------


def export_tflite(model: keras.Model, out_dir: Path) -> dict[str, Path]:
    """fp32 ``model.tflite`` and dynamic-range int8 ``model_int8.tflite`` (weights int8, math fp32).

    Converted from a pixels-only SavedModel in a temporary folder: the converter's supported path
    for Keras 3 models (``from_keras_model`` and bare concrete functions do not freeze Keras 3
    variables reliably).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="tflite-src-") as folder:
        network = export_network(model)
        serving_archive(network, model_image_size(network), with_bytes=False,
                        with_explain=False).write_out(folder, verbose=False)
        for key, filename, optimize in (("tflite", TFLITE_FILE, False),
                                        ("tflite_int8", TFLITE_INT8_FILE, True)):
            converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[PIXELS_SIGNATURE])
            if optimize:
                # No representative dataset: dynamic-range quantisation (int8 weights, float math).
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            path = out_dir / filename
            path.write_bytes(converter.convert())
            paths[key] = path
    return paths


def run_tflite(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Scores of a TFLite model through the LiteRT interpreter (ai-edge-litert)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    input_index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, list(pixels.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_index, pixels.astype(np.float32))
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


# ---------------------------------------------------------------------------------------------
# TF.js
# ---------------------------------------------------------------------------------------------


def tfjs_converter_path() -> Path:
    """The converter of the separate environment; raises :class:`TfjsConverterMissing` if absent."""
    configured = os.environ.get(TFJS_CONVERTER_ENV)
    path = Path(configured) if configured else DEFAULT_TFJS_CONVERTER
    if not path.is_file() or not os.access(path, os.X_OK):
        raise TfjsConverterMissing(
            f"TF.js converter not found at {path}: run `bash {TFJS_ENV_SCRIPT}` (or `make tfjs-env`) to "
            f"create .venv-tfjs, or set {TFJS_CONVERTER_ENV} to a tensorflowjs_converter 4.22.0")
    return path


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # The converter needs no GPU; keep it off the one the trainer is using.
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def export_tfjs(saved_model_dir: Path, out_dir: Path) -> Path:
    """Convert the SavedModel's ``pixels`` signature to a TF.js graph model; returns ``model.json``."""
    converter = tfjs_converter_path()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} is not empty; model versions are immutable")
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [str(converter), "--input_format=tf_saved_model", f"--signature_name={PIXELS_SIGNATURE}",
               "--saved_model_tags=serve", "--output_format=tfjs_graph_model",
               str(saved_model_dir), str(out_dir)]
    result = subprocess.run(command, capture_output=True, text=True, env=_subprocess_env(), check=False)
    model_json = out_dir / "model.json"
    if result.returncode != 0 or not model_json.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ExportError(f"tensorflowjs_converter failed (exit {result.returncode}):\n{tail}")
    return model_json


def tfjs_runtime_problem() -> str | None:
    """Why a TF.js model cannot be loaded back here (no node, no @tensorflow/tfjs), or None."""
    node = shutil.which("node")
    if node is None:
        return "Node.js (node) is not on PATH"
    probe = subprocess.run([node, "--input-type=module", "-e", "await import('@tensorflow/tfjs');"],
                           cwd=TFJS_LOADER_SCRIPT.parent, capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return "the npm package @tensorflow/tfjs is not installed: run `npm ci` in the repository root"
    return None


def run_tfjs(model_json: Path, pixels: np.ndarray) -> np.ndarray:
    """Scores of a TF.js graph model, computed by @tensorflow/tfjs (CPU backend) in Node.js."""
    problem = tfjs_runtime_problem()
    if problem is not None:
        raise TfjsRuntimeMissing(problem)
    with tempfile.TemporaryDirectory(prefix="tfjs-input-") as folder:
        input_path = Path(folder) / "pixels.f32"
        input_path.write_bytes(np.ascontiguousarray(pixels, dtype="<f4").tobytes())
        shape = ",".join(str(dim) for dim in pixels.shape)
        result = subprocess.run(["node", str(TFJS_LOADER_SCRIPT), str(model_json), str(input_path), shape],
                                capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ExportError(f"loading {model_json} with TF.js failed: {result.stderr.strip()[-2000:]}")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return np.asarray(answer["scores"], dtype=np.float32).reshape(answer["shape"])


# ---------------------------------------------------------------------------------------------
# Checks and the whole export
# ---------------------------------------------------------------------------------------------


def sample_inputs(image_size: int, count: int = DEFAULT_SAMPLE_COUNT, seed: int = 0) -> np.ndarray:
    """Deterministic integer-valued pixels ``[count, S, S, 3]`` for checks when none are given."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, image_size, image_size, 3)).astype(np.float32)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless bytes of one ``[S, S, 3]`` image, to check the bytes signature exactly."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _max_abs_diff(actual: np.ndarray, expected: np.ndarray, what: str) -> float:
    if actual.shape != expected.shape:
        raise ExportError(f"{what} answers with shape {actual.shape}, Keras with {expected.shape}")
    return float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))


def check_exports(model: keras.Model, dest: Path, sample_pixels: np.ndarray) -> dict[str, float]:
    """Max absolute score difference of every export present under ``dest`` vs Keras.

    Keys: ``savedmodel`` (pixels signature), ``savedmodel_bytes`` (bytes signature on the samples
    encoded as PNG, so decoding is exact and only the graph's preprocessing is tested),
    ``tflite``, ``tflite_int8`` (quantised: recorded, not expected below 1e-4), ``tfjs`` (only
    where Node.js and @tensorflow/tfjs are available; otherwise logged and left out). For a
    mixed-precision model the exports are compared with its float32 twin, and ``float32_twin``
    records how far that twin is from the model itself.
    """
    dest = Path(dest)
    pixels = np.asarray(sample_pixels, dtype=np.float32)
    network = export_network(model)
    expected = np.asarray(network(pixels, training=False), dtype=np.float32)
    diffs: dict[str, float] = {}
    if network is not model:
        original = np.asarray(model(pixels, training=False), dtype=np.float32)
        diffs["float32_twin"] = _max_abs_diff(expected, original, "the float32 twin")
    if (dest / "saved_model.pb").is_file():
        loaded = tf.saved_model.load(str(dest))
        by_pixels = loaded.signatures[PIXELS_SIGNATURE](**{PIXELS_INPUT: tf.constant(pixels)})
        diffs["savedmodel"] = _max_abs_diff(by_pixels[SCORES_OUTPUT].numpy(), expected, "SavedModel pixels")
        rounded = np.clip(np.round(pixels), 0, 255)
        expected_rounded = np.asarray(network(rounded, training=False), dtype=np.float32)
        images = tf.constant([encode_png(image) for image in rounded])
        by_bytes = loaded.signatures[BYTES_SIGNATURE](**{BYTES_INPUT: images})
        diffs["savedmodel_bytes"] = _max_abs_diff(by_bytes[SCORES_OUTPUT].numpy(), expected_rounded,
                                                  "SavedModel bytes")
    exports = dest / EXPORTS_DIR
    for key, filename in (("tflite", TFLITE_FILE), ("tflite_int8", TFLITE_INT8_FILE)):
        if (exports / filename).is_file():
            diffs[key] = _max_abs_diff(run_tflite(exports / filename, pixels), expected, filename)
    model_json = exports / TFJS_DIR / "model.json"
    if model_json.is_file():
        problem = tfjs_runtime_problem()
        if problem is None:
            diffs["tfjs"] = _max_abs_diff(run_tfjs(model_json, pixels), expected, "TF.js")
        else:
            logger.warning("TF.js export not checked: %s", problem)
    return diffs


def export_all(model: keras.Model, dest: Path, image_size: int, sample_pixels: np.ndarray | None = None,
               formats: Sequence[str] = EXPORT_FORMATS,
               metadata: dict[str, Any] | None = None, calibration_pixels: np.ndarray | None = None,
               agreement_split: AgreementSplit | None = None) -> dict[str, Any]:
    """Write every requested format of one model version under ``dest`` and check each against Keras.

    With the ``tflite-full-int8`` format the full-integer model is exported, calibrated on
    ``calibration_pixels`` (training posters) and checked on ``agreement_split`` (labelled test
    posters) (:func:`export_full_int8`); its verdict, a failure saying why when either is missing, is
    returned under ``full_int8``.

    ``formats`` is a subset of :data:`shared.training_plan.EXPORT_FORMATS`; TF.js needs the SavedModel.
    Returns ``{"paths": {"savedmodel": ".", "tflite": "exports/model.tflite", "tflite_int8": ...,
    "tfjs": "exports/tfjs/model.json"}, "max_abs_diff": {...from check_exports...},
    "image_size": S}`` with paths relative to ``dest`` (the layout the object store keeps).
    """
    dest = Path(dest)
    try:
        formats = check_formats(formats)
    except TrainInputError as exc:
        raise ExportError(str(exc)) from None
    if "tfjs" in formats:
        tfjs_converter_path()  # fail before the slow steps, not after them
    samples = sample_inputs(image_size) if sample_pixels is None else np.asarray(sample_pixels, np.float32)
    network = export_network(model)  # rebuilt once here, not in every step
    written: dict[str, Path] = {}
    if "savedmodel" in formats:
        written["savedmodel"] = export_saved_model(network, dest, image_size, metadata=metadata,
                                                   warmup_pixels=samples[:1])
    if "tflite" in formats:
        written.update(export_tflite(network, dest / EXPORTS_DIR))
    if "tfjs" in formats:
        written["tfjs"] = export_tfjs(dest, dest / EXPORTS_DIR / TFJS_DIR)
    diffs = check_exports(model, dest, samples)
    logger.info("exports of %s checked against Keras: %s", dest, diffs)
    paths = {key: path.relative_to(dest).as_posix() for key, path in written.items()}
    result: dict[str, Any] = {"paths": paths, "max_abs_diff": diffs, "image_size": image_size}
    if FULL_INT8_FORMAT in formats:
        result["full_int8"] = verdict = export_full_int8(network, dest, calibration_pixels, agreement_split)
        if (dest / EXPORTS_DIR / TFLITE_FULL_INT8_FILE).is_file():
            paths["tflite_full_int8"] = f"{EXPORTS_DIR}/{TFLITE_FULL_INT8_FILE}"
        paths["tflite_full_int8_check"] = f"{EXPORTS_DIR}/{FULL_INT8_CHECK_FILE}"
        logger.info("full-integer LiteRT export of %s: %s", dest, verdict)
    return result


# ---------------------------------------------------------------------------------------------
# Integer LiteRT model (issue 15 item 4): int8 weights and activations except outlier layers,
# float input/output
# ---------------------------------------------------------------------------------------------
#
# Kept apart from export_tflite/export_all so that the float exports never depend on it: a failed
# calibration or conversion is recorded and the version keeps its float exports.

TFLITE_FULL_INT8_FILE = "model_full_int8.tflite"
FULL_INT8_CHECK_FILE = "model_full_int8.json"  # the agreement verdict the inference server reads
CALIBRATION_LIMIT = 256  # training posters fed to the converter; more barely moves the ranges
AGREEMENT_TOP_K = 6
AGREEMENT_AIM = 0.99  # at least: same top-6 genres, as a set, in this share of (poster, year) rows
AUC_TOLERANCE = 0.005  # at most: |macro ROC-AUC of int8 - of float| on the test posters
AGREEMENT_BATCH = 32
# The integer mode written to the verdict: int8 weights and activations, except the layers whose own
# int8 error is an outlier (:data:`OUTLIER_ERROR_STEPS`), which stay float inside the same file.
FULL_INT8_MODE = "int8, outlier layers float"
# A layer's own int8 error (QuantizationDebugger: its int8 output against its float op on the same
# input), as RMSE in quantisation steps of its output. Rounding alone gives 1/sqrt(12) = 0.29 steps;
# on the demo's EfficientNet-Lite0 every layer sits at 0.15-0.6 except the stem convolution (3.1)
# and the first depthwise convolution (2.8): keeping those two float lifts its top-6 agreement
# from 0.764 to 0.805 (docs/benchmarks.md).
OUTLIER_ERROR_STEPS = 1.0
LAYER_STATS_POSTERS = 16  # calibration posters the per-layer error is measured on


@dataclass(frozen=True)
class AgreementSplit:
    """Labelled posters the int8 model is checked on (the dataset's test split).

    ``heads`` gives each poster's own year (index into the model's years axis) for the AUC; the
    top-6 agreement looks at every (poster, year) row of the shared model.
    """

    pixels: np.ndarray  # [N, S, S, 3], 0..255
    labels: np.ndarray  # [N, G] in {0, 1}
    heads: np.ndarray  # [N] int


def calibration_sample(pixels: np.ndarray, limit: int = CALIBRATION_LIMIT, seed: int = 0) -> np.ndarray:
    """At most ``limit`` posters of ``pixels``, drawn evenly at random (float32)."""
    pixels = np.asarray(pixels)
    if len(pixels) > limit:
        pixels = pixels[np.sort(np.random.default_rng(seed).choice(len(pixels), limit, replace=False))]
    return pixels.astype(np.float32)


@dataclass(frozen=True)
class FullInt8Export:
    """The written integer model and what stayed float in it."""

    path: Path
    float_layers: list[str]  # output tensor names of the layers kept float (outliers)


def _layer_errors(debugger: Any) -> list[dict[str, Any]]:
    """Each quantised layer's own error, in model order: ``{"op", "tensor", "error_steps"}``."""
    import csv

    table = io.StringIO()
    debugger.layer_statistics_dump(table)  # the debugger's public form of its per-layer statistics
    table.seek(0)
    errors = []
    for row in csv.DictReader(table):
        scale = float(row["scale"])
        rmse = float(np.sqrt(float(row["mean_squared_error"])))
        errors.append({"op": row["op_name"], "tensor": row["tensor_name"],
                       "error_steps": rmse / scale if scale > 0 else 0.0})
    return errors


def export_tflite_full_int8(model: keras.Model, out_dir: Path,
                            calibration_pixels: np.ndarray | None) -> FullInt8Export:
    """``model_full_int8.tflite``: int8 weights and activations (int32 biases), except outlier layers.

    The activation ranges come from ``calibration_pixels`` (training posters ``[N, S, S, 3]``);
    input and output stay float32 (one quantise op at the start, one dequantise at the end), so
    the serving code and the ``pixels`` signature are unchanged. TensorFlow's QuantizationDebugger
    measures each layer's own int8 error on a few calibration posters; the layers whose error
    exceeds :data:`OUTLIER_ERROR_STEPS` quantisation steps (far above rounding's 0.29) are kept
    float in the same file, the rest is int8 (:data:`FULL_INT8_MODE`). An operator the quantiser
    cannot handle also stays float rather than failing: the verdict's ``tensor_types`` shows it.
    """
    network = export_network(model)
    image_size = model_image_size(network)
    if calibration_pixels is None or len(calibration_pixels) == 0:
        raise ExportError("the full-integer LiteRT export needs calibration posters (training pixels "
                          "[N, S, S, 3]); none were given")
    calibration = np.asarray(calibration_pixels, dtype=np.float32)
    if calibration.ndim != 4 or calibration.shape[1:] != (image_size, image_size, 3):
        raise ExportError(f"calibration pixels must be [N, {image_size}, {image_size}, 3]; "
                          f"got {list(calibration.shape)}")

    def representative() -> Any:
        for index in range(len(calibration)):
            yield [calibration[index:index + 1]]

    def stats_posters() -> Any:
        count = min(LAYER_STATS_POSTERS, len(calibration))
        for index in np.linspace(0, len(calibration) - 1, count).astype(int):
            yield [calibration[index:index + 1]]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tflite-int8-src-") as folder:
        serving_archive(network, image_size, with_bytes=False).write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[PIXELS_SIGNATURE])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        try:
            # Calibrates once; the options below re-quantise the calibrated model without calibrating again.
            debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                                 debug_dataset=stats_posters)
            debugger.run()
            float_layers = [layer["tensor"] for layer in _layer_errors(debugger)
                            if layer["error_steps"] > OUTLIER_ERROR_STEPS]
            if float_layers:
                debugger.options = tf.lite.experimental.QuantizationDebugOptions(
                    denylisted_nodes=float_layers)
            content = debugger.get_nondebug_quantized_model()
        except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError...
            raise ExportError(f"full-integer LiteRT conversion failed: {str(exc).strip()[-1500:]}") from exc
    path = out_dir / TFLITE_FULL_INT8_FILE
    path.write_bytes(content)
    return FullInt8Export(path, float_layers)


def tflite_tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each dtype a LiteRT model holds (``{"int8": 120, "int32": 40, ...}``)."""
    from ai_edge_litert.interpreter import Interpreter

    counts: dict[str, int] = {}
    for detail in Interpreter(model_path=str(path)).get_tensor_details():
        name = np.dtype(detail["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    return counts


def _batched_tflite_scores(path: Path, pixels: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
    runner = interpreter.get_signature_runner(PIXELS_SIGNATURE)
    parts = [np.array(runner(**{PIXELS_INPUT: pixels[start:start + AGREEMENT_BATCH].astype(np.float32)})
                      [SCORES_OUTPUT]) for start in range(0, len(pixels), AGREEMENT_BATCH)]
    return np.concatenate(parts)


def _macro_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from services.trainer.metrics import per_genre_ranking

    names = [str(index) for index in range(labels.shape[1])]
    ranking = per_genre_ranking(labels, scores, names)
    aucs = [entry["roc_auc"] for entry in ranking.values() if "roc_auc" in entry]
    return float(np.mean(aucs)) if aucs else float("nan")


def top_k_agreement(float_scores: np.ndarray, int8_scores: np.ndarray, k: int = AGREEMENT_TOP_K) -> float:
    """Share of rows (every leading index: poster, or poster and year) whose top-``k`` genres,
    as a set, are the same in both score arrays ``[..., G]``."""
    if float_scores.shape != int8_scores.shape:
        raise ExportError(f"int8 scores have shape {int8_scores.shape}, float {float_scores.shape}")
    genres = float_scores.shape[-1]
    k = min(k, genres)
    rows_float = float_scores.reshape(-1, genres)
    rows_int8 = int8_scores.reshape(-1, genres)
    # Stable sort on the negated scores: ties (int8 outputs have 256 levels) break by genre index
    # in both arrays alike.
    top_float = np.sort(np.argsort(-rows_float, axis=1, kind="stable")[:, :k], axis=1)
    top_int8 = np.sort(np.argsort(-rows_int8, axis=1, kind="stable")[:, :k], axis=1)
    return float(np.mean(np.all(top_float == top_int8, axis=1))) if len(rows_float) else float("nan")


def full_int8_agreement(model: keras.Model, int8_path: Path, split: AgreementSplit) -> dict[str, Any]:
    """Compare the int8 LiteRT model with the float model on labelled posters; says if it passes.

    ``top6_agreement`` over (poster, year) rows, ``macro_auc_float``/``macro_auc_int8`` with each
    poster scored under its own year, ``auc_delta`` = int8 - float, and ``passed`` when the
    agreement is at least :data:`AGREEMENT_AIM` and ``|auc_delta|`` at most :data:`AUC_TOLERANCE`.
    """
    pixels = np.asarray(split.pixels, dtype=np.float32)
    labels = np.asarray(split.labels)
    if len(pixels) == 0 or len(pixels) != len(labels) or len(labels) != len(split.heads):
        raise ExportError(f"the agreement check needs labelled posters: {len(pixels)} pixels, "
                          f"{len(labels)} labels, {len(split.heads)} heads")
    network = export_network(model)
    float_scores = np.concatenate([np.asarray(network(pixels[start:start + AGREEMENT_BATCH], training=False))
                                   for start in range(0, len(pixels), AGREEMENT_BATCH)])
    int8_scores = _batched_tflite_scores(int8_path, pixels)
    agreement = top_k_agreement(float_scores, int8_scores)
    rows_checked = int(np.prod(float_scores.shape[:-1]))
    max_abs_diff = float(np.max(np.abs(float_scores.astype(np.float64) - int8_scores)))
    if float_scores.ndim == 3:  # shared layout: each poster under its own year for the AUC
        rows = np.arange(len(pixels))
        heads = np.asarray(split.heads, dtype=np.int64)
        float_scores, int8_scores = float_scores[rows, heads], int8_scores[rows, heads]
    auc_float, auc_int8 = _macro_auc(labels, float_scores), _macro_auc(labels, int8_scores)
    delta = auc_int8 - auc_float
    passed = bool(agreement >= AGREEMENT_AIM and np.isfinite(delta) and abs(delta) <= AUC_TOLERANCE)
    return {"posters": int(len(pixels)), "rows": rows_checked,
            "top6_agreement": agreement, "macro_auc_float": auc_float, "macro_auc_int8": auc_int8,
            "auc_delta": delta, "max_abs_diff": max_abs_diff,
            "aims": {"top6_agreement_at_least": AGREEMENT_AIM, "abs_auc_delta_at_most": AUC_TOLERANCE},
            "passed": passed}


def export_full_int8(model: keras.Model, dest: Path, calibration_pixels: np.ndarray | None,
                     agreement_split: AgreementSplit | None) -> dict[str, Any]:
    """Write the full-integer model under ``dest/exports``, check it, and record the verdict.

    Never raises for a model that cannot be quantised or checked: the verdict then says why
    (``passed`` false, ``error``), the int8 file is removed, and the float exports stay as they are.
    The verdict is written beside the model (``exports/model_full_int8.json``): the inference
    server reads the version folder, not the registry (in the stack it has no database access), so
    the file travels with the model; the trainer records the same verdict in the registry.
    """
    out_dir = Path(dest) / EXPORTS_DIR
    path = out_dir / TFLITE_FULL_INT8_FILE
    verdict: dict[str, Any] = {"file": TFLITE_FULL_INT8_FILE, "passed": False}
    try:
        calibration = None if calibration_pixels is None else calibration_sample(calibration_pixels)
        written = export_tflite_full_int8(model, out_dir, calibration)
        verdict["calibration_posters"] = int(len(calibration)) if calibration is not None else 0
        verdict["mode"] = FULL_INT8_MODE
        verdict["float_layers"] = written.float_layers
        verdict["tensor_types"] = tflite_tensor_types(path)
        verdict["bytes"] = path.stat().st_size
        if agreement_split is None:
            raise ExportError("no labelled test posters to check the int8 model against the float one")
        verdict.update(full_int8_agreement(model, path, agreement_split))
    except ExportError as exc:
        logger.warning("full-integer LiteRT export of %s not served: %s", dest, exc)
        verdict.update(passed=False, error=str(exc))
        if "bytes" not in verdict:
            path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FULL_INT8_CHECK_FILE).write_text(json.dumps(verdict, indent=2, sort_keys=True))
    return verdict
