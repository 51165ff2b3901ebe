"""Tiny real Keras models exported as SavedModels in the contract's layout (a ``pixels`` signature
answering ``scores``), and what they should answer, for the web service's tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller"]


@dataclass
class TinyModel:
    name: str
    version: int
    image_size: int
    genres: list[str]
    years: list[int]  # the year axis of a shared model; empty for a one-year model
    folder: Path  # the SavedModel (``<name>/<version>/``)
    weights: tuple[np.ndarray, np.ndarray]

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """What the model computes, in NumPy: sigmoid(mean colour of the top half / 255 @ W + b)."""
        top = pixels[:, : self.image_size // 2].astype(np.float64)
        features = top.reshape(len(pixels), -1, 3).mean(axis=1) / 255.0
        kernel, bias = self.weights
        logits = features @ kernel + bias
        scores = 1.0 / (1.0 + np.exp(-logits))
        return scores.reshape(len(pixels), len(self.years), len(self.genres)) if self.years else scores


def build_tiny_model(root: Path, name: str, version: int, image_size: int, seed: int,
                     years: list[int] | None = None, genres: list[str] | None = None) -> TinyModel:
    """A top-half mean colour -> dense -> sigmoid model; distinct seeds give distinct, spread-out scores."""
    import keras
    import tensorflow as tf

    genres = genres or GENRES
    years = years or []
    outputs = len(genres) * max(1, len(years))
    rng = np.random.default_rng(seed)
    kernel = rng.normal(0, 4.0, size=(3, outputs)).astype(np.float32)
    bias = rng.normal(0, 1.0, size=(outputs,)).astype(np.float32)

    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    x = keras.layers.Rescaling(1.0 / 255)(pixels)
    # The top half only: a model that sees which way up the poster is (EXIF orientation matters).
    x = keras.layers.Cropping2D(((0, image_size - image_size // 2), (0, 0)))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(outputs, activation="sigmoid")
    x = dense(x)
    if years:
        x = keras.layers.Reshape((len(years), len(genres)))(x)
    model = keras.Model(pixels, x)
    dense.set_weights([kernel, bias])

    folder = root / name / str(version)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="pixels", fn=lambda p: {"scores": model(p, training=False)},
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="pixels")])
    archive.write_out(str(folder), verbose=False)
    return TinyModel(name, version, image_size, genres, years, folder, (kernel, bias))
