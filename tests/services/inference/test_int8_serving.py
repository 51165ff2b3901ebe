"""Which LiteRT model the embedded server runs (issue 15 items 4 and 5): the full-integer one only
when the version's recorded agreement check passed and the operator does not prefer float; and each
version held once, in the backend that serves it (no SavedModel beside the LiteRT interpreter)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from services.inference.models import Servable, litert_model_file
from shared.inference_client import InferenceClient
from tests.conftest import make_poster
from tests.services.inference.conftest import GENRES, IMAGE_SIZE, random_pixels


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A trainer export with its full-integer model and a (real) agreement verdict."""
    import keras

    from services.trainer.export import AgreementSplit, export_all

    keras.utils.set_random_seed(0)
    pixels = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="pixels")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(
        keras.layers.Rescaling(1 / 255.0)(pixels)))
    model = keras.Model(pixels, keras.layers.Dense(len(GENRES), activation="sigmoid")(features))
    rng = np.random.default_rng(1)
    labels = (rng.random((24, len(GENRES))) < 0.5).astype(np.float32)
    split = AgreementSplit(random_pixels(24, seed=2), labels, np.zeros(24, np.int64))
    folder = tmp_path_factory.mktemp("exported") / "genre-2000" / "1"
    result = export_all(model, folder, IMAGE_SIZE, formats=("savedmodel", "tflite", "tflite-full-int8"),
                        metadata={"genres": GENRES, "years": [2000]},
                        calibration_pixels=random_pixels(32, seed=3), agreement_split=split)
    assert (folder / "exports" / "model_full_int8.tflite").is_file(), result["full_int8"]
    return folder, model


def version_with_verdict(exported: tuple[Path, object], models_dir: Path, passed: bool | None) -> Path:
    """A copy of the export whose recorded check says ``passed`` (None: no verdict file at all)."""
    source, _ = exported
    dest = models_dir / "genre-2000" / "1"
    shutil.copytree(source, dest)
    verdict_file = dest / "exports" / "model_full_int8.json"
    if passed is None:
        verdict_file.unlink()
    else:
        verdict = json.loads(verdict_file.read_text())
        verdict["passed"] = passed
        verdict_file.write_text(json.dumps(verdict))
    return dest


def servable(path: Path, backend: str = "litert", prefer_float: bool = False) -> Servable:
    return Servable("genre-2000", 1, path, max_batch_size=8, batch_timeout_s=0.001, backend=backend,
                    prefer_float=prefer_float)


@pytest.mark.parametrize(("passed", "prefer_float", "expected"), [
    (True, False, "model_full_int8.tflite"),
    (False, False, "model.tflite"),
    (None, False, "model.tflite"),
    (True, True, "model.tflite"),
])
def test_int8_is_chosen_only_when_its_recorded_check_passed(exported, tmp_path, passed, prefer_float,
                                                            expected) -> None:
    path = version_with_verdict(exported, tmp_path, passed)
    chosen = litert_model_file(path, prefer_float)
    assert chosen is not None and chosen.name == expected
    loaded = servable(path, prefer_float=prefer_float)
    try:
        assert loaded.backend == "litert" and loaded.litert_file == chosen
        assert loaded.precision == ("int8" if expected == "model_full_int8.tflite" else "float32")
    finally:
        loaded.close()


def test_a_corrupt_verdict_serves_float(exported, tmp_path) -> None:
    path = version_with_verdict(exported, tmp_path, True)
    (path / "exports" / "model_full_int8.json").write_text("{not json")
    chosen = litert_model_file(path)
    assert chosen is not None and chosen.name == "model.tflite"


def test_served_int8_answers_close_to_float_and_the_savedmodel_is_loaded_only_on_demand(
        settings, exported) -> None:
    from services.inference.server import start_server

    _, model = exported
    version_with_verdict(exported, settings.models_dir, True)
    pixels = random_pixels(4, seed=7)
    server = start_server(settings.models_dir, None, poll_seconds=0)
    try:
        served = server.manager.resolve("genre-2000")
        assert served.precision == "int8" and served._loaded is None  # LiteRT alone holds the version
        with InferenceClient(server.url, timeout=10) as client:
            scores, _ = client.predict("genre-2000", pixels)
            expected = model.predict(pixels, verbose=0)
            assert 0 < np.max(np.abs(scores - expected)) < 0.05  # quantised, so not bit-equal
            assert served._loaded is None
            # The bytes signature still answers: TensorFlow loads the SavedModel for it then.
            import tensorflow as tf
            from tensorflow_serving.apis import predict_pb2

            request = predict_pb2.PredictRequest()
            request.model_spec.name = "genre-2000"
            request.inputs["images"].CopyFrom(tf.make_tensor_proto([make_poster(3, size=(40, 60))],
                                                                   dtype=tf.string))
            response = client._predictions.Predict(request, timeout=30)
        assert tf.make_ndarray(response.outputs["scores"]).shape == (1, len(GENRES))
        assert served._loaded is not None
    finally:
        server.stop(grace=0)


def test_tensorflow_backend_ignores_the_litert_files(exported, tmp_path) -> None:
    path = version_with_verdict(exported, tmp_path, True)
    loaded = servable(path, backend="tensorflow")
    try:
        assert loaded.backend == "tensorflow" and loaded.litert_file is None and loaded._loaded is not None
        assert loaded.precision == "float32"
    finally:
        loaded.close()
