"""Exports of a model version: each one written, loaded back by its own runtime, compared with Keras.

One tiny model (32 px) is exported once per module (the TF.js conversion is the slow step); the
tests then read the files back: the SavedModel through TensorFlow, TFLite through LiteRT
(ai-edge-litert), TF.js through @tensorflow/tfjs in Node.js.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from services.trainer import export
from shared.config import Settings
from shared.images import poster_pixels
from tests.conftest import SHARED_POSTERS, make_poster

IMAGE_SIZE = 32
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]
TOLERANCE = 1e-4


def tiny_model(seed: int = 0, years: int | None = None) -> keras.Model:
    """Pixels 0..255 -> sigmoid scores; ``years`` gives the shared layout ``[None, Y, G]``.

    The hidden Dense layer has more than 1024 weights so that dynamic-range quantisation really
    quantises something (the converter leaves smaller tensors in float).
    """
    keras.utils.set_random_seed(seed)
    pixels = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(pixels)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(96, activation="relu")(x)
    if years is None:
        scores = keras.layers.Dense(len(GENRES), activation="sigmoid")(x)
    else:
        x = keras.layers.Dense(years * len(GENRES), activation="sigmoid")(x)
        scores = keras.layers.Reshape((years, len(GENRES)))(x)
    return keras.Model(pixels, scores)


def sample_pixels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


def tfjs_converter_missing() -> str | None:
    try:
        export.tfjs_converter_path()
    except export.TfjsConverterMissing as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One model version exported in every format available here (TF.js when its env exists)."""
    model = tiny_model()
    dest = tmp_path_factory.mktemp("models") / "genre-2000" / "1"
    formats = ("savedmodel", "tflite") + (() if tfjs_converter_missing() else ("tfjs",))
    metadata = {"genres": GENRES, "years": [2000], "layout": "independent", "dataset": "ds-test"}
    result = export.export_all(model, dest, IMAGE_SIZE, sample_pixels=sample_pixels(4, seed=1),
                               formats=formats, metadata=metadata)
    return {"model": model, "dest": dest, "result": result}


def test_saved_model_has_the_contract_signatures(exported: dict[str, Any]) -> None:
    loaded = tf.saved_model.load(str(exported["dest"]))
    assert set(loaded.signatures) == {"serving_default", "pixels"}
    by_bytes = loaded.signatures["serving_default"]
    (images_spec,) = by_bytes.structured_input_signature[1].values()
    assert list(by_bytes.structured_input_signature[1]) == ["images"]
    assert images_spec.dtype == tf.string and images_spec.shape.as_list() == [None]
    by_pixels = loaded.signatures["pixels"]
    assert list(by_pixels.structured_input_signature[1]) == ["pixels"]
    pixels_spec = by_pixels.structured_input_signature[1]["pixels"]
    assert pixels_spec.dtype == tf.float32
    assert pixels_spec.shape.as_list() == [None, IMAGE_SIZE, IMAGE_SIZE, 3]
    for signature in (by_bytes, by_pixels):
        assert list(signature.structured_outputs) == ["scores"]
        assert signature.structured_outputs["scores"].shape.as_list() == [None, len(GENRES)]
        assert signature.structured_outputs["scores"].dtype == tf.float32


def test_saved_model_assets_extra(exported: dict[str, Any]) -> None:
    from tensorflow_serving.apis import prediction_log_pb2

    extra = exported["dest"] / "assets.extra"
    records = list(tf.data.TFRecordDataset(str(extra / "tf_serving_warmup_requests")).as_numpy_iterator())
    assert len(records) == 1
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    request = log.predict_log.request
    assert request.model_spec.name == "genre-2000"
    assert request.model_spec.signature_name == "pixels"
    warmup = tf.make_ndarray(request.inputs["pixels"])
    assert warmup.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and warmup.dtype == np.float32
    # The warm-up request is a valid request: the pixels signature answers it.
    loaded = tf.saved_model.load(str(exported["dest"]))
    assert loaded.signatures["pixels"](pixels=tf.constant(warmup))["scores"].shape == (1, len(GENRES))

    assert json.loads((extra / "genres.json").read_text()) == {
        "genres": GENRES, "years": [2000], "image_size": IMAGE_SIZE}
    metadata = json.loads((extra / "postergenre.json").read_text())
    assert metadata["layout"] == "independent" and metadata["dataset"] == "ds-test"


def test_export_all_reports_paths_and_differences(exported: dict[str, Any], record_property: Any) -> None:
    result = exported["result"]
    record_property("max_abs_diff", result["max_abs_diff"])
    print("max abs difference vs Keras:", result["max_abs_diff"])
    paths = result["paths"]
    assert paths["savedmodel"] == "."
    assert paths["tflite"] == "exports/model.tflite"
    assert paths["tflite_int8"] == "exports/model_int8.tflite"
    for relative in paths.values():
        assert (exported["dest"] / relative).exists()
    diffs = result["max_abs_diff"]
    for key in ("savedmodel", "savedmodel_bytes", "tflite"):
        assert diffs[key] < TOLERANCE, key
    # Quantised weights move the scores, but not far: recorded, loosely bounded.
    assert 0 < diffs["tflite_int8"] < 0.05
    if "tfjs" in paths:
        assert paths["tfjs"] == "exports/tfjs/model.json"


def test_bytes_signature_matches_keras_on_jpeg_posters(exported: dict[str, Any],
                                                       record_property: Any) -> None:
    """The in-graph decoding against shared.images.poster_pixels + Keras, on real-looking posters."""
    posters = [make_poster(seed, size) for seed, size in enumerate([(300, 450), (182, 268), (20, 30)])]
    shared_images = sorted((SHARED_POSTERS / "images").glob("*.jpg"))[:5]
    posters += [path.read_bytes() for path in shared_images]
    expected = np.asarray(exported["model"](np.stack([poster_pixels(data, IMAGE_SIZE) for data in posters])
                                            .astype(np.float32)))
    loaded = tf.saved_model.load(str(exported["dest"]))
    scores = loaded.signatures["serving_default"](images=tf.constant(posters))["scores"].numpy()
    difference = float(np.max(np.abs(scores - expected)))
    record_property("bytes_vs_poster_pixels_max_abs_diff", difference)
    print(f"bytes signature vs Keras(poster_pixels) on {len(posters)} JPEG posters "
          f"({len(shared_images)} from the shared collection): {difference:.2e}")
    # The in-graph pixels are identical to poster_pixels (test_tf_decoding.py): only float rounding remains.
    assert difference < TOLERANCE


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + checksum

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(width + 1)))
            + chunk(b"IEND", b""))


def test_bytes_signature_refuses_what_is_not_an_image(exported: dict[str, Any]) -> None:
    loaded = tf.saved_model.load(str(exported["dest"]))
    truncated_jpeg = make_poster(1)[:40]
    for data in (b"not an image at all", b"", truncated_jpeg):
        with pytest.raises(tf.errors.InvalidArgumentError):
            loaded.signatures["serving_default"](images=tf.constant([data]))
    # Refused from its header, before TF would allocate 100 million pixels.
    with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
        loaded.signatures["serving_default"](images=tf.constant([png_declaring(10_000, 10_000)]))


def test_tflite_exports_load_in_litert(exported: dict[str, Any]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    exports = exported["dest"] / "exports"
    fp32, int8 = exports / "model.tflite", exports / "model_int8.tflite"
    assert int8.stat().st_size < fp32.stat().st_size  # the weights really are int8
    pixels = sample_pixels(3, seed=2)
    expected = np.asarray(exported["model"](pixels))
    runner = Interpreter(model_path=str(fp32)).get_signature_runner("pixels")
    scores = runner(pixels=pixels)["scores"]
    assert scores.shape == expected.shape
    assert np.max(np.abs(scores - expected)) < TOLERANCE
    assert np.max(np.abs(export.run_tflite(int8, pixels) - expected)) < 0.05


def test_tfjs_graph_model_loads_in_node(exported: dict[str, Any], record_property: Any) -> None:
    missing = tfjs_converter_missing() or export.tfjs_runtime_problem()
    if missing:
        pytest.skip(f"TF.js check skipped: {missing}")
    model_json = exported["dest"] / "exports" / "tfjs" / "model.json"
    topology = json.loads(model_json.read_text())
    assert topology["format"] == "graph-model"
    assert exported["result"]["max_abs_diff"]["tfjs"] < TOLERANCE
    pixels = sample_pixels(3, seed=3)
    scores = export.run_tfjs(model_json, pixels)
    difference = float(np.max(np.abs(scores - np.asarray(exported["model"](pixels)))))
    record_property("tfjs_max_abs_diff", difference)
    assert scores.shape == (3, len(GENRES))
    assert difference < TOLERANCE


def test_shared_layout_keeps_years_axis(tmp_path: Path) -> None:
    """The shared model answers ``[None, Y, G]``; every format keeps that shape."""
    model = tiny_model(seed=4, years=3)
    dest = tmp_path / "genre-shared" / "1"
    result = export.export_all(model, dest, IMAGE_SIZE, formats=("savedmodel", "tflite"))
    for key in ("savedmodel", "savedmodel_bytes", "tflite"):
        assert result["max_abs_diff"][key] < TOLERANCE, key
    loaded = tf.saved_model.load(str(dest))
    scores = loaded.signatures["serving_default"](images=tf.constant([make_poster(1), make_poster(2)]))
    assert scores["scores"].shape == (2, 3, len(GENRES))
    assert not (dest / "assets.extra" / "genres.json").exists()  # no metadata given, none invented


def test_mixed_precision_model_is_exported_in_float32(tmp_path: Path) -> None:
    """A model trained with mixed precision (GPU) exports as its float32 twin, which TFLite accepts."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tiny_model(seed=6)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[2].dtype_policy.compute_dtype == "float16"
    dest = tmp_path / "genre-2001" / "1"
    result = export.export_all(model, dest, IMAGE_SIZE, formats=("savedmodel", "tflite"))
    diffs = result["max_abs_diff"]
    for key in ("savedmodel", "savedmodel_bytes", "tflite"):
        assert diffs[key] < TOLERANCE, key
    assert 0 < diffs["float32_twin"] < 0.01  # float16 rounding in the original, nothing more


def test_bad_requests_get_clear_errors(exported: dict[str, Any], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model = exported["model"]
    with pytest.raises(export.ExportError, match="immutable"):
        export.export_saved_model(model, exported["dest"], IMAGE_SIZE)
    with pytest.raises(export.ExportError, match="does not match"):
        export.export_saved_model(model, tmp_path / "m" / "1", 64)
    with pytest.raises(export.ExportError, match="export formats are a list of .*not onnx"):
        export.export_all(model, tmp_path / "m" / "2", IMAGE_SIZE, formats=("onnx",))
    monkeypatch.setenv("POSTERGENRE_TFJS_CONVERTER", str(tmp_path / "no-such-converter"))
    with pytest.raises(export.TfjsConverterMissing, match="scripts/make_tfjs_env.sh"):
        export.export_all(model, tmp_path / "m" / "3", IMAGE_SIZE)
    assert not (tmp_path / "m" / "3").exists()  # refused before writing anything


@pytest.mark.slow
def test_efficientnet_lite0_genre_model_exports_agree_with_keras(settings: Settings, tmp_path: Path,
                                                                   record_property: Any) -> None:
    """The pretrained backbone (``--weights package``) in a shared genre model: every format answers as
    Keras does. At 64 px working resolution to stay quick; the graph is the one trained at 224."""
    from services.trainer import models
    from shared.hyperparameters import default_hyperparameters

    keras.utils.set_random_seed(7)
    hp = default_hyperparameters("efficientnet-lite0", weights="package", resolution=64, augment=False)
    _training, serving = models.build_shared_model(IMAGE_SIZE, len(GENRES), 2, hp)
    dest = tmp_path / "genre-shared" / "1"
    formats = ("savedmodel", "tflite") + (() if tfjs_converter_missing() else ("tfjs",))
    result = export.export_all(serving, dest, IMAGE_SIZE, sample_pixels=sample_pixels(4, seed=8),
                               formats=formats, metadata={"genres": GENRES, "years": [2000, 2001]})
    diffs = result["max_abs_diff"]
    record_property("lite0_max_abs_diff", diffs)
    print("efficientnet-lite0 max abs difference vs Keras:", diffs)
    for key in ("savedmodel", "savedmodel_bytes", "tflite") + (("tfjs",) if "tfjs" in formats else ()):
        assert diffs[key] < TOLERANCE, key
    assert 0 < diffs["tflite_int8"] < 0.1  # dynamic-range int8 weights through 16 blocks: recorded, loose
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(dest / "exports" / "model.tflite")).get_signature_runner("pixels")
    pixels = sample_pixels(2, seed=9)
    scores = runner(pixels=pixels)["scores"]
    np.testing.assert_allclose(scores, serving.predict(pixels, verbose=0), atol=TOLERANCE)
    assert scores.shape == (2, 2, len(GENRES))
