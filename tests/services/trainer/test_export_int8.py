"""The full-integer LiteRT export (issue 15 item 4) at toy scale: written beside the float exports,
int8 inside, checked against the float model on labelled posters, its verdict recorded; bad input
leaves the float exports as they were."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from services.trainer import export

IMAGE_SIZE = 32
YEARS = 3
GENRE_COUNT = 8  # more than six, so that the top-6 agreement compares real choices


def tiny_shared_model(seed: int = 0) -> keras.Model:
    """Pixels -> ``[None, YEARS, GENRE_COUNT]`` sigmoid scores, the shared layout's output."""
    keras.utils.set_random_seed(seed)
    pixels = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(pixels)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(96, activation="relu")(x)
    x = keras.layers.Dense(YEARS * GENRE_COUNT, activation="sigmoid")(x)
    return keras.Model(pixels, keras.layers.Reshape((YEARS, GENRE_COUNT))(x))


def posters(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


def labelled_split(count: int = 48, seed: int = 5) -> export.AgreementSplit:
    rng = np.random.default_rng(seed)
    labels = (rng.random((count, GENRE_COUNT)) < 0.4).astype(np.float32)
    return export.AgreementSplit(posters(count, seed), labels, rng.integers(0, YEARS, count))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = tiny_shared_model()
    dest = tmp_path_factory.mktemp("models") / "genre-shared" / "1"
    result = export.export_all(model, dest, IMAGE_SIZE, formats=("savedmodel", "tflite", "tflite-full-int8"),
                               calibration_pixels=posters(64, seed=1), agreement_split=labelled_split())
    return {"model": model, "dest": dest, "result": result}


def test_full_int8_model_is_beside_the_float_ones_and_int8_inside(exported: dict[str, Any]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    dest, paths = exported["dest"], exported["result"]["paths"]
    assert paths["tflite_full_int8"] == "exports/model_full_int8.tflite"
    for key in ("tflite", "tflite_int8", "tflite_full_int8", "tflite_full_int8_check"):
        assert (dest / paths[key]).is_file(), key
    interpreter = Interpreter(model_path=str(dest / paths["tflite_full_int8"]))
    details = interpreter.get_tensor_details()
    inputs = {d["index"] for d in interpreter.get_input_details()}
    outputs = {d["index"] for d in interpreter.get_output_details()}
    floats = {d["index"] for d in details if d["dtype"] == np.float32}
    assert floats == inputs | outputs  # float only at the edges: every weight and activation is integer
    weights = [d for d in details if ("MatMul" in d["name"] or "convolution" in d["name"])
               and len(d["shape"]) >= 2 and d["index"] not in inputs | outputs]
    assert weights and all(d["dtype"] == np.int8 for d in weights)
    # Dynamic-range int8 (the older file) keeps float activations: the two really differ.
    dynamic = Interpreter(model_path=str(dest / paths["tflite_int8"])).get_tensor_details()
    assert sum(d["dtype"] == np.float32 for d in dynamic) > len(floats)
    verdict = exported["result"]["full_int8"]
    assert verdict["tensor_types"]["int8"] >= 8 and verdict["tensor_types"]["float32"] == 2
    assert verdict["calibration_posters"] == 64
    # The toy model's layers quantise at rounding level: no outlier, nothing kept float.
    assert verdict["mode"] == export.FULL_INT8_MODE and verdict["float_layers"] == []


def test_layers_whose_int8_error_is_an_outlier_stay_float_in_the_same_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ai_edge_litert.interpreter import Interpreter

    # With no tolerance every layer with any int8 error counts as an outlier and must come back float.
    monkeypatch.setattr(export, "OUTLIER_ERROR_STEPS", 0.0)
    written = export.export_tflite_full_int8(tiny_shared_model(seed=2), tmp_path, posters(16, seed=1))
    interpreter = Interpreter(model_path=str(written.path))
    dtypes = {d["name"]: d["dtype"] for d in interpreter.get_tensor_details()}
    assert len(written.float_layers) >= 3  # the convolution, the pooling, the two dense layers...
    assert all(dtypes[name] == np.float32 for name in written.float_layers)
    assert list(interpreter.get_signature_list()) == ["pixels"]  # one file, the same signature
    scores = export.run_tflite(written.path, posters(2, seed=9))
    assert scores.shape == (2, YEARS, GENRE_COUNT)


def test_agreement_check_runs_and_its_verdict_is_recorded_beside_the_model(exported: dict[str, Any]) -> None:
    dest, result = exported["dest"], exported["result"]
    verdict = result["full_int8"]
    recorded = json.loads((dest / "exports" / "model_full_int8.json").read_text())
    assert recorded == json.loads(json.dumps(verdict))
    assert verdict["posters"] == 48 and verdict["rows"] == 48 * YEARS
    assert 0.0 <= verdict["top6_agreement"] <= 1.0
    assert verdict["auc_delta"] == pytest.approx(verdict["macro_auc_int8"] - verdict["macro_auc_float"])
    expected = verdict["top6_agreement"] >= 0.99 and abs(verdict["auc_delta"]) <= 0.005
    assert verdict["passed"] is expected
    # Recomputed by hand: the int8 model's scores stay within a few quantisation steps of Keras.
    split = labelled_split()
    scores = export.run_tflite(dest / "exports" / "model_full_int8.tflite", split.pixels[:4])
    reference = np.asarray(exported["model"](split.pixels[:4]))
    assert 0 < np.max(np.abs(scores - reference)) < 0.1


def test_top_k_agreement_counts_rows_whose_six_best_genres_differ() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]] * 4, np.float32)
    assert export.top_k_agreement(scores, scores.copy()) == 1.0
    moved = scores.copy()
    moved[1, [5, 6]] = moved[1, [6, 5]]  # the 6th and 7th genres swap places in one row of four
    assert export.top_k_agreement(scores, moved) == 0.75
    reordered = scores.copy()
    reordered[2, [0, 5]] = reordered[2, [5, 0]]  # same six, another order: still agrees (sets)
    assert export.top_k_agreement(scores, reordered) == 1.0
    shared = np.stack([scores, moved], axis=1)  # [poster, year, genre]: every (poster, year) row counts
    assert export.top_k_agreement(shared, np.stack([scores, scores], axis=1)) == 7 / 8


def test_no_calibration_posters_is_a_clear_error_and_keeps_the_float_exports(tmp_path: Path) -> None:
    model = tiny_shared_model(seed=3)
    with pytest.raises(export.ExportError, match="calibration posters"):
        export.export_tflite_full_int8(model, tmp_path / "direct", None)
    with pytest.raises(export.ExportError, match="calibration pixels must be"):
        export.export_tflite_full_int8(model, tmp_path / "direct", posters(4, seed=0)[:, :16])
    dest = tmp_path / "genre-shared" / "1"
    result = export.export_all(model, dest, IMAGE_SIZE, formats=("tflite", "tflite-full-int8"),
                               calibration_pixels=np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32),
                               agreement_split=labelled_split())
    verdict = result["full_int8"]
    assert verdict["passed"] is False and "calibration posters" in verdict["error"]
    assert not (dest / "exports" / "model_full_int8.tflite").exists()
    assert "tflite_full_int8" not in result["paths"]
    assert json.loads((dest / "exports" / "model_full_int8.json").read_text())["passed"] is False
    for relative in ("exports/model.tflite", "exports/model_int8.tflite"):
        assert (dest / relative).is_file(), relative
    assert result["max_abs_diff"]["tflite"] < 1e-4


def test_the_full_integer_model_is_only_written_when_its_format_is_asked(tmp_path: Path) -> None:
    """The demo asks for savedmodel,tflite: calibration posters alone do not start the int8 pass."""
    dest = tmp_path / "genre-shared" / "1"
    result = export.export_all(tiny_shared_model(seed=5), dest, IMAGE_SIZE, formats=("tflite",),
                               calibration_pixels=posters(16, seed=2), agreement_split=labelled_split())
    assert "full_int8" not in result and set(result["paths"]) == {"tflite", "tflite_int8"}
    assert sorted(path.name for path in (dest / "exports").iterdir()) == ["model.tflite", "model_int8.tflite"]


def test_without_test_posters_the_int8_model_is_kept_but_not_passed(tmp_path: Path) -> None:
    dest = tmp_path / "genre-shared" / "1"
    verdict = export.export_full_int8(tiny_shared_model(seed=4), dest, posters(16, seed=2), None)
    assert verdict["passed"] is False and "test posters" in verdict["error"]
    assert (dest / "exports" / "model_full_int8.tflite").is_file()


@pytest.mark.slow
def test_a_training_records_the_int8_verdict_with_the_version(settings: Any) -> None:
    """The trainer's own path: calibrated on the dataset's training posters, checked on its test
    posters, the verdict in the registry (metrics and exports) and in the uploaded version folder."""
    from services.trainer.tasks import run_training
    from shared import registry
    from shared.db import upgrade_database
    from shared.hyperparameters import default_hyperparameters
    from shared.storage import object_store_from_settings
    from tests.services.trainer.datasets import write_dataset

    upgrade_database(settings.effective_database_url)
    store = object_store_from_settings()
    write_dataset(store, "int8-tiny", [2000, 2001], per_year=8)
    hp = default_hyperparameters("smallcnn", epochs=1, batch_size=8, width=4, weights="none", patience=50)
    params = {"model_name": "genre-shared", "dataset_id": "int8-tiny", "targets": ["2000", "2001"],
              "layout": "shared", "hyperparameters": hp.as_dict(), "formats": ["tflite", "tflite-full-int8"],
              "bless": False}
    run_training("int8-job", params, settings)
    [row] = registry.list_versions("genre-shared")
    check = row["metrics"]["int8_check"]
    assert check == row["exports"]["full_int8"]
    # 4 training posters per year calibrate; 2 test posters per year, each under both years' heads.
    assert check["calibration_posters"] == 8 and check["posters"] == 4 and check["rows"] == 8
    assert isinstance(check["passed"], bool) and "error" not in check
    assert {"top6_agreement", "auc_delta", "macro_auc_float", "macro_auc_int8"} <= set(check)
    stored = json.loads(store.get(f"models/genre-shared/{row['version']}/exports/model_full_int8.json"))
    assert stored == check
    assert store.get(f"models/genre-shared/{row['version']}/exports/model_full_int8.tflite")


def int8_kernels_against_float(model: keras.Model, int8_path: Path) -> dict[str, float]:
    """For each int8 kernel of the export, matched to its float layer by shape: the largest relative
    spread, over output channels, of dequantised int8 / float weight. 0 when the export holds the float
    kernel exactly up to one factor per output channel (what folding a rescale or a batch
    normalisation into the kernel multiplies it by)."""
    from ai_edge_litert.interpreter import Interpreter

    from services.trainer.models import leaf_layers

    interpreter = Interpreter(model_path=str(int8_path))
    floats = {layer.name: np.asarray(layer.kernel)
              for layer in leaf_layers(model) if hasattr(layer, "kernel")}
    spreads: dict[str, float] = {}
    for detail in interpreter.get_tensor_details():
        scales = detail["quantization_parameters"]["scales"]
        if detail["dtype"] != np.int8 or len(detail["shape"]) < 2 or len(scales) < 2:
            continue
        assert detail["quantization_parameters"]["quantized_dimension"] == 0  # output channel first
        steps = interpreter.get_tensor(detail["index"]).astype(np.float64)
        dequantised = steps * scales.reshape([-1] + [1] * (steps.ndim - 1))
        for name, kernel in floats.items():
            # Keras keeps the output channel last: [in, out] and [h, w, in, out]
            layout = kernel.T if kernel.ndim == 2 else kernel.transpose(3, 0, 1, 2)
            if layout.shape != dequantised.shape:
                continue
            rows_int8 = dequantised.reshape(len(dequantised), -1)
            rows_float = layout.reshape(len(layout), -1).astype(np.float64)
            factors = np.sum(rows_int8 * rows_float, axis=1) / np.sum(rows_float ** 2, axis=1)
            spread = np.abs(rows_int8 - factors[:, np.newaxis] * rows_float)
            spreads[name] = float(np.max(spread / np.max(np.abs(rows_int8), axis=1, keepdims=True)))
    return spreads


def test_kernels_on_the_int8_grid_are_kept_exactly_by_the_full_integer_export(tmp_path: Path) -> None:
    """``--kernel-grid int8``: after snapping, the export's int8 kernels are the float model's own (up to
    the per-channel factor of the rescale folded into the convolution); without it they are not."""
    from services.trainer.models import leaf_layers, snap_kernels_to_int8

    model = tiny_shared_model()
    before = export.export_tflite_full_int8(model, tmp_path / "float", posters(64, seed=1))
    spreads_before = int8_kernels_against_float(model, before.path)

    assert snap_kernels_to_int8(leaf_layers(model)) == 3  # the convolution and the two dense layers
    snapped = [np.asarray(layer.kernel) for layer in leaf_layers(model) if hasattr(layer, "kernel")]
    assert snap_kernels_to_int8(leaf_layers(model)) == 3
    for kernel, again in zip(snapped, [np.asarray(layer.kernel) for layer in leaf_layers(model)
                                       if hasattr(layer, "kernel")], strict=True):
        np.testing.assert_allclose(again, kernel, rtol=1e-6)  # a kernel on the grid stays there
    after = export.export_tflite_full_int8(model, tmp_path / "grid", posters(64, seed=1))
    spreads_after = int8_kernels_against_float(model, after.path)

    assert len(spreads_after) == 3 and after.float_layers == []
    assert max(spreads_after.values()) < 1e-5
    assert min(spreads_before.values()) > 1e-3  # rounding moved every kernel of the float model


def test_snapping_rounds_each_output_channel_to_127_steps_of_its_own_scale() -> None:
    from services.trainer.models import snap_kernels_to_int8

    depthwise = keras.layers.DepthwiseConv2D(3)
    depthwise.build((None, 8, 8, 4))
    kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 1)).astype(np.float32)
    kernel[..., 2, :] = 0.0  # a channel of zeros stays zeros
    depthwise.kernel.assign(kernel)
    assert snap_kernels_to_int8([depthwise, keras.layers.ReLU()]) == 1
    snapped = np.asarray(depthwise.kernel)
    for channel in (0, 1, 3):
        step = np.max(np.abs(kernel[..., channel, 0])) / 127
        levels = snapped[..., channel, 0] / step
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
        assert np.max(np.abs(levels)) == pytest.approx(127)
        assert np.max(np.abs(snapped[..., channel, 0] - kernel[..., channel, 0])) <= step / 2 + 1e-7
    assert not snapped[..., 2, :].any()
