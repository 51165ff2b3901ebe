"""Small real genre models built by the trainer's own code (``services.trainer.models``) and exported
by its exporter, so they carry the ``explain`` signatures; and a Grad-CAM reference computed
directly on the Keras model with a GradientTape, independent of ``services.trainer.explain``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EXPLAIN_GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller"]
EXPLAIN_IMAGE_SIZE = 32


@dataclass
class ExplainableModel:
    name: str
    version: int
    image_size: int
    genres: list[str]
    years: list[int]  # the year axis of a shared model; empty for a one-year model
    folder: Path
    keras_model: Any  # the serving model: pixels -> scores [B, G] or [B, Y, G]


def build_explainable_model(root: Path, name: str, version: int, seed: int, years: list[int] | None = None,
                            architecture: str = "smallcnn", image_size: int = EXPLAIN_IMAGE_SIZE,
                            genres: list[str] | None = None) -> ExplainableModel:
    """A randomly initialised model of the trainer's layouts, exported to ``root/name/version``."""
    import keras

    from services.trainer.export import export_saved_model
    from services.trainer.models import build_independent_model, build_shared_model
    from shared.hyperparameters import Hyperparameters

    genres = genres or EXPLAIN_GENRES
    years = years or []
    keras.utils.set_random_seed(seed)
    hp = Hyperparameters(architecture=architecture, augment=False, dropout=0.0, width=4, seed=seed)
    if years:
        _, model = build_shared_model(image_size, len(genres), len(years), hp)
        # The per-year corrections start at zero; random ones make the heads explain differently.
        layer = model.get_layer("year_logits")
        rng = np.random.default_rng(seed)
        layer.set_weights([rng.normal(0, 0.5, size=w.shape).astype(np.float32) for w in layer.get_weights()])
    else:
        model = build_independent_model(image_size, len(genres), hp)
    folder = root / name / str(version)
    metadata = {"genres": genres, "years": years}
    export_saved_model(model, folder, image_size, metadata=metadata)
    return ExplainableModel(name, version, image_size, genres, years, folder, model)


def reference_grad_cam(model: Any, pixels: np.ndarray, head: int, genre: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of one genre on one head, the textbook way: a Keras model answering the backbone's
    last convolutional block and its pooled features, then the heads' own layers by name, on a tape.

    Returns ``(heatmaps [B, h, w], scores of the head [B, G])``.
    """
    import keras
    import tensorflow as tf

    from services.trainer.models import FEATURE_MAP_LAYER, SCORES_LAYER

    backbone = model.get_layer("backbone")
    conv_and_features = keras.Model(backbone.inputs,
                                    [backbone.get_layer(FEATURE_MAP_LAYER).output, backbone.outputs[0]])
    shared = any(layer.name == "year_logits" for layer in model.layers)
    x = tf.constant(pixels, tf.float32)
    feature_map, _ = conv_and_features(x)
    with tf.GradientTape() as tape:
        tape.watch(feature_map)
        features = tf.reduce_mean(feature_map, axis=[1, 2])  # the backbone's global average pooling
        if shared:
            common = model.get_layer("common_logits")(features)
            per_year = tf.reshape(model.get_layer("year_logits")(features),
                                  (len(pixels), -1, common.shape[-1]))
            scores = tf.sigmoid(common[:, None, :] + per_year)[:, head, :]
        else:
            scores = model.get_layer(SCORES_LAYER)(features)
        score = scores[:, genre]
    gradients = tape.gradient(score, feature_map)
    weights = tf.reduce_mean(gradients, axis=[1, 2])
    cam = tf.nn.relu(tf.reduce_sum(feature_map * weights[:, None, None, :], axis=-1)).numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0.0), scores.numpy()
