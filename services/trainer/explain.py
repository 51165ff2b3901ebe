"""Grad-CAM: where a genre model looked, for one year's head and one or more genres.

For a poster, a head (the year's index on a shared model's year axis; 0 for a one-year model) and a
genre, the class activation map is ``ReLU(sum_k alpha_k A_k)``, where ``A_k`` are the channels of
the backbone's last convolutional block (the layer ``FEATURE_MAP_LAYER`` that
:mod:`services.trainer.models` puts there for every architecture) and ``alpha_k`` is the spatial mean
of the gradient of the genre's score with respect to ``A_k``. Each map is divided by its maximum
(0..1; all zeros when no location raises the score) and stays at the feature map's resolution.

Cost: the model is split at the feature map, so an explanation is one backbone pass up to ``A`` plus
the gradient of the few layers after it (pooling and the heads), never a second backbone pass; the
gradients of several genres of one poster come from one Jacobian of those layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from services.trainer.models import FEATURE_MAP_LAYER

BACKBONE_LAYER = "backbone"
HEATMAPS_OUTPUT = "heatmaps"
EXPLAIN_SCORES_OUTPUT = "scores"
HEAD_INPUT = "head"
GENRES_INPUT = "genres"


class NotExplainable(ValueError):
    """The model has no marked last convolutional block to explain."""


@dataclass(frozen=True)
class ExplanationParts:
    """The serving model cut at the feature map: ``pixels -> A`` and ``A -> scores``.

    Both share the model's layers and weights; ``to_feature_map(pixels)`` followed by
    ``from_feature_map(A)`` computes exactly what the model does.
    """

    to_feature_map: keras.Model
    from_feature_map: keras.Model
    years: int  # the size of the year axis of the scores; 0 for scores [B, G]
    genres: int


def _only_call(layer: keras.layers.Layer, model: keras.Model) -> Any:
    # A layer keeps every call made on it, also those of other models built on it (the feature
    # extractor of ``--strategy features`` calls the backbone again): only this model's count.
    own = {node for depth in model._nodes_by_depth.values() for node in depth}  # noqa: SLF001
    nodes = [node for node in layer._inbound_nodes if node in own]  # noqa: SLF001
    if len(nodes) != 1:
        raise NotExplainable(f"layer {layer.name!r} is called {len(nodes)} times in the model; expected once")
    return nodes[0]


def explanation_parts(model: keras.Model) -> ExplanationParts:
    """Split a serving model (pixels ``[B, S, S, 3]`` -> scores ``[B, G]`` or ``[B, Y, G]``) built by
    :mod:`services.trainer.models` at its backbone's ``FEATURE_MAP_LAYER``."""
    try:
        backbone = model.get_layer(BACKBONE_LAYER)
        marked = backbone.get_layer(FEATURE_MAP_LAYER)
    except ValueError:
        raise NotExplainable(
            f"model {model.name!r} has no layer {BACKBONE_LAYER}/{FEATURE_MAP_LAYER} (its last convolutional "
            "block): it was built before explanations existed or not by services.trainer.models") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise NotExplainable("explanations need the serving model: one pixels input, one scores output")
    call = _only_call(backbone, model)
    pixels = model.inputs[0]
    backbone_input, backbone_output = call.input_tensors[0], call.output_tensors[0]
    # Backbone input up to its feature map, after whatever the model does first (resizing).
    inner = keras.Model(backbone.inputs, marked.output, name="to_feature_map_inner")
    before = pixels if backbone_input is pixels else keras.Model(
        pixels, backbone_input, name="before_backbone")(pixels)
    to_feature_map = keras.Model(pixels, inner(before), name="to_feature_map")
    # The feature map through the backbone's pooling, then the model's heads.
    pooling = keras.Model(marked.output, backbone.outputs[0], name="pooling")
    heads = keras.Model(backbone_output, model.outputs[0], name="heads")
    feature_map = keras.Input(tuple(marked.output.shape[1:]), name="feature_map")
    from_feature_map = keras.Model(feature_map, heads(pooling(feature_map)), name="from_feature_map")
    shape = tuple(model.outputs[0].shape)
    if len(shape) == 3:
        return ExplanationParts(to_feature_map, from_feature_map, int(shape[1]), int(shape[2]))
    return ExplanationParts(to_feature_map, from_feature_map, 0, int(shape[1]))


def grad_cam(parts: ExplanationParts, pixels: tf.Tensor, head: tf.Tensor, genres: tf.Tensor
             ) -> dict[str, tf.Tensor]:
    """Heatmaps ``[B, K, h, w]`` (0..1) of genres ``[B, K]`` on head ``[B]``; the head's scores ``[B, G]``.

    Out-of-range indices fail with InvalidArgument (TF's ``gather`` would silently give zeros on a GPU).
    """
    head = tf.cast(head, tf.int32)
    genres = tf.cast(genres, tf.int32)
    heads = max(parts.years, 1)
    checks = [
        tf.debugging.assert_greater_equal(head, 0, message="head index must be >= 0"),
        tf.debugging.assert_less(head, heads, message=f"head index must be < {heads}"),
        tf.debugging.assert_greater_equal(genres, 0, message="genre index must be >= 0"),
        tf.debugging.assert_less(genres, parts.genres, message=f"genre index must be < {parts.genres}"),
    ]
    with tf.control_dependencies(checks):
        feature_map = tf.cast(parts.to_feature_map(pixels, training=False), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(feature_map)
        scores = tf.cast(parts.from_feature_map(feature_map, training=False), tf.float32)
        row = tf.gather(scores, head, axis=1, batch_dims=1) if parts.years else scores  # [B, G]
        chosen = tf.gather(row, genres, axis=1, batch_dims=1)  # [B, K]
    gradients = tape.batch_jacobian(chosen, feature_map)  # [B, K, h, w, C]
    weights = tf.reduce_mean(gradients, axis=[2, 3])  # alpha: [B, K, C]
    cam = tf.nn.relu(tf.einsum("bkc,bhwc->bkhw", weights, feature_map))
    peak = tf.reduce_max(cam, axis=[2, 3], keepdims=True)
    return {HEATMAPS_OUTPUT: tf.math.divide_no_nan(cam, peak), EXPLAIN_SCORES_OUTPUT: row}
