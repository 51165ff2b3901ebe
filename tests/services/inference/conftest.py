"""Real SavedModels for the inference tests: tiny models with the trainer's ``pixels`` signature.

Each model maps the mean colour of a poster to sigmoid scores with its own weights (a seed), so two
versions or two years give different, checkable answers. The signature is the exported models' one
(``docs/contracts.md``): input ``pixels`` float32 ``[None, S, S, 3]``, output ``scores`` ``[None, G]``
or ``[None, Y, G]`` for the shared-backbone layout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.inference.server import EmbeddedServer
from shared.config import Settings

IMAGE_SIZE = 16
GENRES = ["Action", "Comedy", "Drama", "Horror"]
YEARS = [2000, 2001, 2002]


def model_weights(seed: int, outputs: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 2, size=(3, outputs)).astype(np.float32), rng.normal(0, 1, size=outputs).astype(
        np.float32
    )


def expected_scores(pixels: np.ndarray, seed: int, years: int | None = None) -> np.ndarray:
    """What the model of ``seed`` answers, computed with NumPy."""
    outputs = len(GENRES) * (years or 1)
    weights, bias = model_weights(seed, outputs)
    means = pixels.astype(np.float32).mean(axis=(1, 2)) / 255.0
    scores = 1.0 / (1.0 + np.exp(-(means @ weights + bias)))
    return scores.reshape(len(pixels), years, len(GENRES)) if years else scores


def write_pixels_model(dest: Path, seed: int, image_size: int = IMAGE_SIZE, years: int | None = None) -> Path:
    """Save a SavedModel with the ``pixels`` signature at ``dest`` (a ``<name>/<version>`` folder)."""
    import tensorflow as tf

    outputs = len(GENRES) * (years or 1)
    weights, bias = model_weights(seed, outputs)

    class PixelsModel(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = tf.Variable(weights)
            self.bias = tf.Variable(bias)

        @tf.function(
            input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="pixels")]
        )
        def pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
            means = tf.reduce_mean(pixels / 255.0, axis=[1, 2])
            scores = tf.sigmoid(tf.matmul(means, self.weights) + self.bias)
            if years:
                scores = tf.reshape(scores, [-1, years, len(GENRES)])
            return {"scores": scores}

    module = PixelsModel()
    tf.saved_model.save(module, str(dest), signatures={"pixels": module.pixels})
    (dest / "assets.extra").mkdir(exist_ok=True)
    (dest / "assets.extra" / "genres.json").write_text(json.dumps(GENRES))
    return dest


def random_pixels(count: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, image_size, image_size, 3)).astype(np.float32)


@pytest.fixture
def models_dir(settings: Settings) -> Path:
    path = settings.models_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def yearly_models(models_dir: Path) -> dict[str, int]:
    """``genre-<year>`` version 1 for every year in YEARS; returns name -> weight seed."""
    seeds = {}
    for index, year in enumerate(YEARS):
        name = f"genre-{year}"
        write_pixels_model(models_dir / name / "1", seed=100 + index)
        seeds[name] = 100 + index
    return seeds


@pytest.fixture
def embedded(settings: Settings, yearly_models: dict[str, int]) -> Iterator[EmbeddedServer]:
    """The embedded server over the yearly models (gRPC and REST), polling fast for hot reload."""
    from services.inference.server import start_server

    server = start_server(
        settings.models_dir,
        settings.models_config_path,
        grpc_port=0,
        rest_port=0,
        poll_seconds=0.2,
        batch_timeout_ms=5.0,
    )
    try:
        yield server
    finally:
        server.stop(grace=0.5)
