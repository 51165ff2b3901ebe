"""Grad-CAM served like predictions: the trainer's ``explain`` signatures, through the real embedded
gRPC server, against the textbook Keras computation (:func:`reference_grad_cam`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.inference.server import EmbeddedServer
from shared.inference_client import InferenceClient, InvalidInferenceInput, SignatureNotFound
from tests.conftest import make_poster
from tests.services.inference.conftest import random_pixels, write_pixels_model
from tests.services.inference.explainable import (
    EXPLAIN_GENRES,
    EXPLAIN_IMAGE_SIZE,
    ExplainableModel,
    build_explainable_model,
    reference_grad_cam,
)

YEARS = [2000, 2001, 2002]
# float32 gradients of the same graph taken two ways (Jacobian of the split model vs. a tape on the
# layers): equal to rounding, far below what would move a heatmap's colour.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def explainable(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, ExplainableModel]]:
    root = tmp_path_factory.mktemp("explainable")
    models = [build_explainable_model(root, "genre-shared", 1, seed=3, years=YEARS),
              build_explainable_model(root, "genre-2005", 1, seed=5)]
    write_pixels_model(root / "genre-2010" / "1", seed=7, image_size=EXPLAIN_IMAGE_SIZE)  # no explain
    return root, {model.name: model for model in models}


@pytest.fixture(scope="module")
def server(explainable: tuple[Path, dict[str, ExplainableModel]]) -> Iterator[EmbeddedServer]:
    from services.inference.server import start_server

    server = start_server(explainable[0], None, grpc_port=0, poll_seconds=0)
    try:
        yield server
    finally:
        server.stop(grace=0)


@pytest.mark.parametrize("name", ["genre-shared", "genre-2005"])
def test_explain_signature_matches_a_keras_grad_cam_through_grpc(explainable, server, name):
    model = explainable[1][name]
    pixels = random_pixels(3, seed=11, image_size=EXPLAIN_IMAGE_SIZE)
    heads = [0, 2, 1] if model.years else [0, 0, 0]
    genres = [[0, 4], [2, 6], [5, 1]]
    with InferenceClient(server.url, timeout=30) as client:
        answer = client.explain(name, pixels, heads, genres)
    assert answer.version == 1
    assert answer.heatmaps.shape == (3, 2, 4, 4)  # 32 px through three poolings of smallcnn
    assert answer.scores.shape == (3, len(EXPLAIN_GENRES))
    lit = 0
    for row, (head, chosen) in enumerate(zip(heads, genres, strict=True)):
        for position, genre in enumerate(chosen):
            expected, scores = reference_grad_cam(model.keras_model, pixels[row:row + 1], head, genre)
            np.testing.assert_allclose(answer.heatmaps[row, position], expected[0], atol=TOLERANCE)
            np.testing.assert_allclose(answer.scores[row], scores[0], atol=1e-5)
            lit += int(expected.max() == 1.0)
    assert lit >= 3  # the maps compared are real maps, not the all-zero case
    assert 0.0 <= answer.heatmaps.min() and answer.heatmaps.max() <= 1.0


def test_heads_of_a_shared_model_explain_differently(server):
    pixels = random_pixels(1, seed=12, image_size=EXPLAIN_IMAGE_SIZE)
    with InferenceClient(server.url, timeout=30) as client:
        first = client.explain("genre-shared", np.repeat(pixels, 3, axis=0), [0, 1, 2], [[3]] * 3)
    assert not np.allclose(first.scores[0], first.scores[1])
    assert not np.allclose(first.heatmaps[0], first.heatmaps[2])


def test_explain_images_takes_poster_bytes(explainable):
    import tensorflow as tf

    from shared.images import poster_pixels

    model = explainable[1]["genre-2005"]
    poster = make_poster(3, size=(50, 80))
    loaded = tf.saved_model.load(str(model.folder))
    answer = loaded.signatures["explain_images"](images=tf.constant([poster]), head=tf.constant([0]),
                                                 genres=tf.constant([[2]]))
    pixels = poster_pixels(poster, EXPLAIN_IMAGE_SIZE)[None].astype(np.float32)
    expected, _ = reference_grad_cam(model.keras_model, pixels, 0, 2)
    np.testing.assert_allclose(answer["heatmaps"].numpy()[:, 0], expected, atol=1e-3)


def test_bad_indices_and_models_without_explanations_are_refused_by_name(server):
    pixels = random_pixels(1, seed=13, image_size=EXPLAIN_IMAGE_SIZE)
    with InferenceClient(server.url, timeout=30) as client:
        with pytest.raises(InvalidInferenceInput, match="genre index must be < 7"):
            client.explain("genre-2005", pixels, [0], [[7]])
        with pytest.raises(InvalidInferenceInput, match="head index must be < 3"):
            client.explain("genre-shared", pixels, [3], [[0]])
        with pytest.raises(InvalidInferenceInput, match="head index must be < 1"):
            client.explain("genre-2005", pixels, [1], [[0]])
        with pytest.raises(SignatureNotFound, match='"explain" not found'):
            client.explain("genre-2010", pixels, [0], [[0]])
        with pytest.raises(InvalidInferenceInput, match="genres"):
            client.explain("genre-2005", pixels, [0], [[]])
