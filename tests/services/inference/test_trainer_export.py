"""The trainer's real export (``services.trainer.export``) served by the embedded server: both
signatures of the contract, the ``pixels`` one through the client and ``serving_default`` (poster
bytes) through a raw TF Serving ``PredictRequest``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.inference_client import InferenceClient
from tests.conftest import make_poster
from tests.services.inference.conftest import GENRES, IMAGE_SIZE, random_pixels


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    import keras

    from services.trainer.export import export_all

    keras.utils.set_random_seed(0)
    pixels = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="pixels")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(pixels))
    model = keras.Model(pixels, keras.layers.Dense(len(GENRES), activation="sigmoid")(features))
    folder = tmp_path_factory.mktemp("exported") / "genre-2000" / "1"
    export_all(
        model,
        folder,
        IMAGE_SIZE,
        formats=("savedmodel", "tflite"),
        metadata={"genres": GENRES, "years": [2000]},
    )
    return folder, model


def test_trainer_export_is_served_through_both_signatures(settings, exported):
    import shutil

    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from services.inference.server import start_embedded
    from shared.images import poster_pixels

    folder, model = exported
    shutil.copytree(folder, settings.models_dir / "genre-2000" / "1")
    server = start_embedded(settings)
    try:
        assert server.manager.resolve("genre-2000").genres == GENRES
        pixels = random_pixels(3, seed=4)
        with InferenceClient(server.url, timeout=10) as client:
            scores, version = client.predict("genre-2000", pixels)
            np.testing.assert_allclose(scores, model.predict(pixels, verbose=0), atol=1e-5)

            poster = make_poster(8, size=(40, 60))
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "genre-2000"
            request.inputs["images"].CopyFrom(tf.make_tensor_proto([poster], dtype=tf.string))
            # The first bytes request loads the SavedModel (LiteRT alone holds the version until then).
            response = client._predictions.Predict(request, timeout=120)
        from_bytes = tf.make_ndarray(response.outputs["scores"])
        expected = model.predict(poster_pixels(poster, IMAGE_SIZE)[np.newaxis].astype(np.float32), verbose=0)
        np.testing.assert_allclose(from_bytes, expected, atol=1e-2)  # in-graph resize: within a grey level
        assert (
            response.model_spec.signature_name == "serving_default" and response.model_spec.version.value == 1
        )
    finally:
        server.stop(grace=0)


def test_litert_backend_answers_as_tensorflow_within_1e4(settings, exported):
    import shutil

    from services.inference.server import start_server

    folder, model = exported
    shutil.copytree(folder, settings.models_dir / "genre-2000" / "1")
    pixels = random_pixels(5, seed=6)
    answers: dict[str, np.ndarray] = {}
    for backend in ("tensorflow", "litert"):
        server = start_server(settings.models_dir, None, poll_seconds=0, backend=backend)
        try:
            assert server.manager.resolve("genre-2000").backend == backend
            with InferenceClient(server.url, timeout=10) as client:
                answers[backend] = client.predict("genre-2000", pixels)[0]
                answers[backend + "-one"] = client.predict("genre-2000", pixels[:1])[0]
        finally:
            server.stop(grace=0)
    np.testing.assert_allclose(answers["litert"], answers["tensorflow"], atol=1e-4)
    np.testing.assert_allclose(answers["litert-one"], answers["tensorflow"][:1], atol=1e-4)


def test_efficientnet_lite0_model_is_served_alike_by_both_backends(settings):
    """A genre model on the pretrained EfficientNet-Lite0 backbone (``--weights package``): LiteRT and
    TensorFlow serve it as Keras computes it."""
    import shutil

    from services.inference.server import start_server
    from services.trainer import models
    from services.trainer.export import export_all
    from shared.hyperparameters import default_hyperparameters

    hp = default_hyperparameters("efficientnet-lite0", weights="package", resolution=32, augment=False)
    model = models.build_independent_model(IMAGE_SIZE, len(GENRES), hp)
    folder = settings.models_dir / "genre-2000" / "1"
    export_all(model, folder.parent / "staging", IMAGE_SIZE, formats=("savedmodel", "tflite"),
               metadata={"genres": GENRES, "years": [2000]})
    shutil.move(folder.parent / "staging", folder)
    pixels = random_pixels(4, seed=7)
    expected = model.predict(pixels, verbose=0)
    for backend in ("tensorflow", "litert"):
        server = start_server(settings.models_dir, None, poll_seconds=0, backend=backend)
        try:
            assert server.manager.resolve("genre-2000").backend == backend
            with InferenceClient(server.url, timeout=10) as client:
                scores = client.predict("genre-2000", pixels)[0]
        finally:
            server.stop(grace=0)
        np.testing.assert_allclose(scores, expected, atol=1e-4, err_msg=backend)
