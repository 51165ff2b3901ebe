"""``postergenre bench inference-memory`` at toy scale: a trainer export copied into versions, each
mode loaded in its own process with its RSS read, and the table timed in float and int8 in one run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.memory import MemoryBenchConfig, format_memory_markdown, run_memory_benchmark
from tests.services.inference.conftest import GENRES, IMAGE_SIZE, random_pixels


@pytest.fixture(scope="module")
def trainer_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    from services.trainer.export import AgreementSplit, export_all

    keras.utils.set_random_seed(0)
    pixels = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="pixels")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(
        keras.layers.Rescaling(1 / 255.0)(pixels)))
    scores = keras.layers.Reshape((2, len(GENRES)))(keras.layers.Dense(2 * len(GENRES), activation="sigmoid")(
        features))
    labels = (np.random.default_rng(1).random((12, len(GENRES))) < 0.5).astype(np.float32)
    folder = tmp_path_factory.mktemp("exported") / "genre-shared" / "1"
    export_all(keras.Model(pixels, scores), folder, IMAGE_SIZE,
               formats=("savedmodel", "tflite", "tflite-full-int8"),
               metadata={"genres": GENRES, "years": [2000, 2001]}, calibration_pixels=random_pixels(16, 2),
               agreement_split=AgreementSplit(random_pixels(12, 3), labels, np.zeros(12, np.int64)))
    return folder


def test_memory_and_latency_of_a_trainer_export(trainer_export: Path, tmp_path: Path) -> None:
    config = MemoryBenchConfig(versions=2, repeats=2, modes=("litert-int8", "litert+savedmodel"),
                               export=str(trainer_export), workdir=str(tmp_path))
    report = run_memory_benchmark(config)
    int8, both = report["memory"]["litert-int8"], report["memory"]["litert+savedmodel"]
    assert int8["served_file"] == "model_full_int8.tflite" and both["served_file"] == "model.tflite"
    for value in (int8, both):
        assert len(value["after_each_bytes"]) == 2 and len(value["delta_bytes"]) == 2
        assert value["baseline_bytes"] > 50e6  # TensorFlow is imported before the baseline
        assert value["served_file_bytes"] == (tmp_path / "models" / "genre-shared" / "1" / "exports" /
                                              value["served_file"]).stat().st_size
    assert (tmp_path / "models" / "genre-shared" / "2" / "exports" / "model_full_int8.tflite").is_file()
    p50 = report["latency"]["table_p50_s"]
    assert set(p50) == {"float32", "int8"} and all(value > 0 for value in p50.values())
    assert report["config"]["image_size"] == 256 and report["image_size"] == IMAGE_SIZE  # the export's side
    shown = format_memory_markdown(report)
    assert "litert-int8" in shown and "int8 / float" in shown


def test_a_folder_without_litert_exports_is_refused(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    with pytest.raises(ValueError, match="not a trainer version folder"):
        run_memory_benchmark(MemoryBenchConfig(export=str(tmp_path / "export"), workdir=str(tmp_path / "w")))
    with pytest.raises(ValueError, match="unknown modes"):
        run_memory_benchmark(MemoryBenchConfig(modes=("fp16",)))
