"""Exporting a trained Keras model: SavedModel for TF Serving, TFLite, and a TF.js graph model.

Every model version is written once, in the layout of ``docs/contracts.md``::

    <name>/<version>/                         SavedModel (TF Serving's layout)
        saved_model.pb, variables/
        assets.extra/tf_serving_warmup_requests
        assets.extra/genres.json              (when the genre list is given)
        assets.extra/postergenre.json         (the metadata given by the trainer)
        exports/model.tflite                  fp32
        exports/model_int8.tflite             dynamic-range int8 weights
        exports/tfjs/model.json, *.bin        TF.js graph model of the ``pixels`` signature

The Keras model takes float32 pixels ``[None, S, S, 3]`` (RGB, 0..255) and returns sigmoid scores
``[None, G]`` or ``[None, Y, G]``. The SavedModel has two signatures:

* ``serving_default``: ``images`` (tf.string ``[None]``, raw JPEG/PNG bytes) -> ``scores``. The
  decoding and resizing happen in the graph and reproduce :func:`shared.images.poster_pixels` bit
  for bit (checked on all 4,632 posters of the shared collection at 128 px): JPEG decoded with
  the accurate integer DCT as Pillow's libjpeg does, EXIF orientation applied, transparency
  composited on white and 16-bit greyscale scaled in Pillow's integer arithmetic, and Pillow's
  two-pass antialiased ``BILINEAR`` resize reimplemented with its fixed-point weights. Not
  reproduced: EXIF orientation in non-JPEG files, and formats TF cannot decode.
* ``pixels``: ``pixels`` (float32 ``[None, S, S, 3]``) -> ``scores``: the model as trained.
* ``explain`` and ``explain_images`` (models built by :mod:`services.trainer.models`, whose
  backbone marks its last convolutional block): Grad-CAM (:mod:`services.trainer.explain`).
  Inputs ``pixels`` (``explain``) or ``images`` (``explain_images``), ``head`` (int32 ``[None]``:
  the year's index on a shared model's year axis, 0 for a one-year model) and ``genres`` (int32
  ``[None, K]``: the genre indices to explain, K >= 1); outputs ``heatmaps`` (float32
  ``[None, K, h, w]``, 0..1, at the feature map's resolution) and ``scores`` (float32
  ``[None, G]``: the head's scores). One backbone pass per poster whatever K.

Each export is loaded back and compared with Keras on sample inputs (:func:`check_exports`); the
largest absolute difference of each is returned and stored with the model version.

The TF.js converter (tensorflowjs 4.22.0) cannot be installed beside TensorFlow 2.21, so it runs as
a subprocess from its own environment, created by ``scripts/make_tfjs_env.sh``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from services.trainer.explain import (
    GENRES_INPUT,
    HEAD_INPUT,
    NotExplainable,
    explanation_parts,
    grad_cam,
)
from shared.images import MAX_IMAGE_PIXELS

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
TFJS_ENV_SCRIPT = "scripts/make_tfjs_env.sh"
DEFAULT_TFJS_CONVERTER = REPO_ROOT / ".venv-tfjs" / "bin" / "tensorflowjs_converter"
TFJS_CONVERTER_ENV = "POSTERGENRE_TFJS_CONVERTER"
TFJS_LOADER_SCRIPT = Path(__file__).resolve().parent / "tfjs" / "load_graph_model.mjs"

BYTES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "pixels"
BYTES_INPUT = "images"
PIXELS_INPUT = "pixels"
SCORES_OUTPUT = "scores"
EXPLAIN_SIGNATURE = "explain"
EXPLAIN_IMAGES_SIGNATURE = "explain_images"

EXPORTS_DIR = "exports"
TFLITE_FILE = "model.tflite"
TFLITE_INT8_FILE = "model_int8.tflite"
TFJS_DIR = "tfjs"
WARMUP_FILE = "tf_serving_warmup_requests"
ALL_FORMATS = ("savedmodel", "tflite", "tfjs")

# Number of generated sample images when the caller gives none: enough to catch a wrong layout,
# small enough for a quick check.
DEFAULT_SAMPLE_COUNT = 4


class ExportError(RuntimeError):
    """An export could not be written or read back; the message says which and why."""


class TfjsConverterMissing(ExportError):
    """The separate TF.js converter environment has not been created."""


class TfjsRuntimeMissing(ExportError):
    """Node.js or the @tensorflow/tfjs package is not available to load a TF.js model back."""


# ---------------------------------------------------------------------------------------------
# In-graph preprocessing: poster bytes -> pixels, exactly as shared.images.poster_pixels does it.
#
# Pillow works on uint8 images in integer arithmetic; we do the same in int32 so that the bytes
# signature gives the very pixels training saw, not pixels one grey level away.
# ---------------------------------------------------------------------------------------------

# Pillow's fixed-point precision: Resample.c (8-bit images) and AlphaComposite.c.
RESAMPLE_PRECISION_BITS = 32 - 8 - 2
COMPOSITE_PRECISION_BITS = 7


def _composite_on_white(image: tf.Tensor) -> tf.Tensor:
    """``[H, W, C]`` uint8 with C in 1..4 -> int32 ``[H, W, 3]``, alpha composited on white.

    Greyscale is repeated to RGB. With an opaque white background Pillow's ``alpha_composite``
    reduces to ``SHIFTFORDIV255(128 * (c * a + 255 * (255 - a)) + 128 * 128) >> 7``, computed here
    the same way, so the result matches bit for bit.
    """
    channels = tf.shape(image)[-1]
    has_alpha = tf.equal(channels % 2, 0)  # 2 = grey + alpha, 4 = RGB + alpha
    colour_channels = channels - tf.cast(has_alpha, tf.int32)
    pixels = tf.cast(image, tf.int32)
    colour = pixels[..., :colour_channels]
    colour = tf.cond(tf.equal(colour_channels, 1), lambda: tf.tile(colour, [1, 1, 3]), lambda: colour)

    def blend() -> tf.Tensor:
        alpha = pixels[..., -1:]
        scale = 1 << COMPOSITE_PRECISION_BITS
        total = scale * (colour * alpha + 255 * (255 - alpha)) + scale * scale
        divided = tf.bitwise.right_shift(tf.bitwise.right_shift(total, 8) + total, 8)  # SHIFTFORDIV255
        return tf.bitwise.right_shift(divided, COMPOSITE_PRECISION_BITS)

    blended = tf.cond(has_alpha, blend, lambda: colour)
    return tf.ensure_shape(blended, [None, None, 3])


# The EXIF block sits in the JPEG header; Pillow reads the first APP1 "Exif" segment before the
# image data. These bounds keep the in-graph search small and always finite.
EXIF_SEARCH_BYTES = 1 << 18
EXIF_MAX_SEGMENTS = 32
EXIF_MAX_IFD_ENTRIES = 64
EXIF_ORIENTATION_TAG = 0x0112


def jpeg_exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1..8) of JPEG bytes, 1 when absent or unreadable; int32 scalar.

    Walks the JPEG marker segments up to the image data (SOS) to the first ``APP1`` starting with
    ``Exif\\0\\0``, then reads tag 0x0112 of the TIFF block's first IFD, in either byte order.
    Reads past the end see zeros (the header is padded), so damaged bytes give 1, never an error.
    """
    header = tf.io.decode_raw(tf.strings.substr(data, 0, EXIF_SEARCH_BYTES), tf.uint8)
    header = tf.cast(tf.pad(header, [[0, 16]]), tf.int32)
    length = tf.size(header) - 16

    def byte(position: tf.Tensor) -> tf.Tensor:
        return tf.gather(header, tf.clip_by_value(position, 0, length + 15))

    def next_segment(position: tf.Tensor, exif: tf.Tensor, count: tf.Tensor) -> tuple[Any, ...]:
        segment_length = byte(position + 2) * 256 + byte(position + 3)
        signature = tf.stack([byte(position + 4 + offset) for offset in range(6)])
        is_exif = tf.logical_and(tf.equal(byte(position + 1), 0xE1),
                                 tf.reduce_all(tf.equal(signature, tf.constant(list(b"Exif\0\0")))))
        return position + 2 + segment_length, tf.where(is_exif, position + 10, exif), count + 1

    def more_segments(position: tf.Tensor, exif: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
        return tf.reduce_all(tf.stack([count < EXIF_MAX_SEGMENTS, exif < 0, position + 4 <= length,
                                       tf.equal(byte(position), 0xFF),
                                       tf.not_equal(byte(position + 1), 0xDA)]))

    _, tiff, _ = tf.while_loop(more_segments, next_segment,
                               (tf.constant(2), tf.constant(-1), tf.constant(0)))
    little_endian = tf.equal(byte(tiff), ord("I"))

    def uint(position: tf.Tensor, width: int) -> tf.Tensor:
        values = [byte(position + offset) for offset in range(width)]
        little = sum(value * (1 << (8 * index)) for index, value in enumerate(values))
        big = sum(value * (1 << (8 * index)) for index, value in enumerate(reversed(values)))
        return tf.where(little_endian, little, big)

    ifd = tiff + uint(tiff + 4, 4)
    entry = ifd + 2 + 12 * tf.range(EXIF_MAX_IFD_ENTRIES)
    tags = uint(entry, 2)
    listed = tf.range(EXIF_MAX_IFD_ENTRIES) < uint(ifd, 2)
    values = uint(entry + 8, 2)
    found = tf.logical_and(listed, tf.equal(tags, EXIF_ORIENTATION_TAG))
    orientation = tf.reduce_max(tf.where(found, values, 0))
    valid = tf.logical_and(tiff >= 0, tf.logical_and(orientation >= 1, orientation <= 8))
    return tf.where(valid, orientation, 1)


def apply_exif_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """``ImageOps.exif_transpose``: turn ``[H, W, C]`` upright for EXIF orientation 1..8."""
    transforms = {
        2: lambda: image[:, ::-1],  # FLIP_LEFT_RIGHT
        3: lambda: image[::-1, ::-1],  # ROTATE_180
        4: lambda: image[::-1],  # FLIP_TOP_BOTTOM
        5: lambda: tf.transpose(image, [1, 0, 2]),  # TRANSPOSE
        6: lambda: tf.image.rot90(image, k=3),  # ROTATE_270 (90 degrees clockwise)
        7: lambda: tf.transpose(image, [1, 0, 2])[::-1, ::-1],  # TRANSVERSE
        8: lambda: tf.image.rot90(image, k=1),  # ROTATE_90
    }
    branches = [lambda: image] + [transforms[value] for value in range(2, 9)]
    return tf.switch_case(orientation - 1, branches)


def declared_pixel_count(data: tf.Tensor) -> tf.Tensor:
    """Width x height as the header of JPEG, PNG or GIF bytes declares it (int64; 0 if unknown).

    Read before decoding, so that a decompression bomb is refused before TF allocates it.
    """
    padded = tf.strings.join([data, tf.constant(bytes(32))])
    header = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, 32), tf.uint8), tf.int64)

    def number(start: int, width: int, big_endian: bool) -> tf.Tensor:
        shifts = reversed(range(width)) if big_endian else range(width)
        pairs = zip(range(start, start + width), shifts, strict=True)
        return sum(header[position] * (1 << (8 * shift)) for position, shift in pairs)

    is_png = tf.equal(tf.strings.substr(padded, 0, 8), b"\x89PNG\r\n\x1a\n")
    is_gif = tf.equal(tf.strings.substr(padded, 0, 3), b"GIF")

    def jpeg() -> tf.Tensor:
        return tf.reduce_prod(tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64))

    return tf.case([
        (tf.io.is_jpeg(data), jpeg),
        (is_png, lambda: number(16, 4, True) * number(20, 4, True)),  # IHDR width, height
        (is_gif, lambda: number(6, 2, False) * number(8, 2, False)),  # logical screen size
    ], default=lambda: tf.constant(0, tf.int64))


def _refuse_too_large(pixel_count: tf.Tensor) -> tf.Tensor:
    return tf.debugging.assert_less_equal(
        pixel_count, tf.constant(MAX_IMAGE_PIXELS, tf.int64),
        message=f"image too large: more than {MAX_IMAGE_PIXELS} pixels")


def decode_poster(data: tf.Tensor) -> tf.Tensor:
    """One poster's bytes (scalar tf.string) -> int32 ``[H, W, 3]`` RGB 0..255.

    JPEG takes its own path because only ``decode_jpeg`` lets us choose the accurate integer DCT,
    which is what Pillow uses (TF's default, the fast DCT, is off by up to 7 grey levels), and
    because its EXIF orientation is applied as ``ImageOps.exif_transpose`` does. Other formats
    (PNG, GIF's first frame, BMP, WebP) keep their alpha channel for compositing; their rarely
    present EXIF orientation is not applied.
    """

    def jpeg() -> tf.Tensor:
        decoded = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
        upright = apply_exif_orientation(decoded, jpeg_exif_orientation(data))
        return tf.ensure_shape(tf.cast(upright, tf.int32), [None, None, 3])

    def other() -> tf.Tensor:
        decoded = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
        return _composite_on_white(decoded)

    def grey_16_bit_png() -> tf.Tensor:
        # Pillow keeps these as mode I;16 and shared.images scales them by their maximum, where
        # decode_image would keep the high byte (which is what Pillow does for 16-bit colour).
        grey = tf.cast(tf.io.decode_png(data, channels=1, dtype=tf.uint16), tf.float32)
        scaled = tf.cast(grey / tf.maximum(tf.reduce_max(grey), 1.0) * 255.0, tf.int32)
        return tf.ensure_shape(tf.tile(scaled, [1, 1, 3]), [None, None, 3])

    # Padded, so that short or empty bytes compare unequal instead of failing here.
    png_header = tf.strings.substr(tf.strings.join([data, tf.constant(bytes(26))]), 0, 26)
    is_grey_16_bit_png = tf.logical_and(
        tf.equal(tf.strings.substr(png_header, 0, 8), b"\x89PNG\r\n\x1a\n"),
        tf.equal(tf.strings.substr(png_header, 24, 2), b"\x10\x00"))  # bit depth 16, colour type 0
    with tf.control_dependencies([_refuse_too_large(declared_pixel_count(data))]):
        image = tf.case([(tf.io.is_jpeg(data), jpeg), (is_grey_16_bit_png, grey_16_bit_png)], default=other)
    # WebP and other formats are only measured once decoded; Pillow refuses them above the limit too.
    shape = tf.shape(image, out_type=tf.int64)
    with tf.control_dependencies([_refuse_too_large(shape[0] * shape[1])]):
        return tf.identity(image)


def pillow_bilinear_coefficients(in_size: tf.Tensor, out_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Pillow's ``precompute_coeffs`` for ``BILINEAR``, then its 8-bit fixed-point rounding.

    Returns source indices and int32 weights, both ``[out_size, K]``: output pixel ``i`` is
    ``sum_k source[index[i, k]] * weight[i, k]`` in units of ``2**RESAMPLE_PRECISION_BITS``. When
    shrinking, the triangle filter is widened by the scale factor (antialiasing).
    """
    in_length = tf.cast(in_size, tf.float64)
    scale = in_length / out_size
    filter_scale = tf.maximum(scale, 1.0)
    support = filter_scale  # the bilinear (triangle) filter's support is 1
    window = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    centre = (tf.range(out_size, dtype=tf.float64) + 0.5) * scale
    first = tf.maximum(tf.cast(tf.floor(centre - support + 0.5), tf.int32), 0)
    count = tf.minimum(tf.cast(tf.floor(centre + support + 0.5), tf.int32), in_size) - first
    offsets = tf.range(window)
    index = first[:, None] + offsets[None, :]
    distance = (tf.cast(index, tf.float64) - centre[:, None] + 0.5) * (1.0 / filter_scale)
    weight = tf.where(offsets[None, :] < count[:, None], tf.maximum(1.0 - tf.abs(distance), 0.0), 0.0)
    total = tf.reduce_sum(weight, axis=1, keepdims=True)
    weight = tf.math.divide_no_nan(weight, total)
    fixed = tf.cast(tf.floor(weight * (1 << RESAMPLE_PRECISION_BITS) + 0.5), tf.int32)
    return tf.minimum(index, in_size - 1), fixed


def _resample_axis(image: tf.Tensor, axis: int, out_size: int) -> tf.Tensor:
    """One pass of Pillow's two-pass resize along ``axis`` (1: horizontal, 0: vertical); int32.

    Accumulates one filter tap at a time, so memory stays at one output-sized buffer even for a
    large poster (gathering all taps at once would need K times as much).
    """
    index, weight = pillow_bilinear_coefficients(tf.shape(image)[axis], out_size)

    def add_tap(tap: tf.Tensor, total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        taken = tf.gather(image, index[:, tap], axis=axis)  # axis 1: [H, S, 3]; axis 0: [S, W, 3]
        tap_weight = weight[:, tap]
        tap_weight = tap_weight[None, :, None] if axis == 1 else tap_weight[:, None, None]
        return tap + 1, total + taken * tap_weight

    # Pillow starts each sum at half a unit, so the shift below rounds. int32 cannot overflow:
    # at most 255 * 2**22 plus rounding, as in Pillow's own int32 sums.
    start = tf.fill(tf.shape(tf.gather(image, index[:, 0], axis=axis)), 1 << (RESAMPLE_PRECISION_BITS - 1))
    _, total = tf.while_loop(lambda tap, _: tap < tf.shape(index)[1], add_tap, (tf.constant(0), start))
    return tf.clip_by_value(tf.bitwise.right_shift(total, RESAMPLE_PRECISION_BITS), 0, 255)


def resize_like_pillow(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """int32 ``[H, W, 3]`` -> int32 ``[S, S, 3]``: ``Image.resize((S, S), BILINEAR, reducing_gap=None)``.

    Pillow resizes in two passes, rounding to uint8 in between, so the order of the passes shows
    in the result. It goes horizontal first, except (Pillow 13) when the height shrinks much
    more than the width: ``H > S and H - S > 2 * (W - S)`` for a square target, a rule checked
    against the installed Pillow by the tests. (TF's own ``tf.image.resize(antialias=True)`` uses
    the same filter in float and lands one grey level away on up to a fifth of the pixels.)
    Aspect ratio is not kept, as in ``shared.images.resize_pixels``.
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    vertical_first = tf.logical_and(height > image_size, height - image_size > 2 * (width - image_size))
    resized = tf.cond(
        vertical_first,
        lambda: _resample_axis(_resample_axis(image, 0, image_size), 1, image_size),
        lambda: _resample_axis(_resample_axis(image, 1, image_size), 0, image_size),
    )
    return tf.ensure_shape(resized, [image_size, image_size, 3])


def poster_bytes_to_pixels(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """A batch of poster bytes ``[B]`` -> float32 pixels ``[B, S, S, 3]`` (integer values 0..255)."""
    return tf.map_fn(
        lambda data: tf.cast(resize_like_pillow(decode_poster(data), image_size), tf.float32),
        images,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )


# ---------------------------------------------------------------------------------------------
# SavedModel
# ---------------------------------------------------------------------------------------------


def _scores_from_pixels_fn(model: keras.Model) -> Any:
    def scores_from_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        # Cast: a mixed-precision model may still answer in float16; the contract says float32.
        return {SCORES_OUTPUT: tf.cast(model(pixels, training=False), tf.float32)}

    return scores_from_pixels


def serving_archive(model: keras.Model, image_size: int, with_bytes: bool = True,
                    with_explain: bool = True) -> Any:
    """Keras' ExportArchive with the signatures of docs/contracts.md.

    The ``explain`` signatures are added when ``with_explain`` and the model has a marked last
    convolutional block (every model :mod:`services.trainer.models` builds); otherwise they are
    left out with a log line, and the version simply has no explanations.

    ExportArchive, not a hand-made tf.Module holding the model: it saves the model's variables as
    plain TF variables, which the TFLite converter freezes correctly (with the Keras model as a
    tracked child, the converted model reads uninitialised variables and answers NaN).
    """
    scores_from_pixels = _scores_from_pixels_fn(model)

    def scores_from_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return scores_from_pixels(poster_bytes_to_pixels(images, image_size))

    archive = keras.export.ExportArchive()
    archive.track(model)
    if with_bytes:
        archive.add_endpoint(name=BYTES_SIGNATURE, fn=scores_from_images,
                             input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    pixels_spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=PIXELS_INPUT)
    archive.add_endpoint(name=PIXELS_SIGNATURE, fn=scores_from_pixels, input_signature=[pixels_spec])
    if with_explain:
        _add_explain_endpoints(archive, model, image_size, pixels_spec, with_bytes)
    return archive


def _add_explain_endpoints(archive: Any, model: keras.Model, image_size: int, pixels_spec: tf.TensorSpec,
                           with_bytes: bool) -> None:
    try:
        parts = explanation_parts(model)
    except NotExplainable as exc:
        logger.info("no explain signature: %s", exc)
        return
    head_spec = tf.TensorSpec([None], tf.int32, name=HEAD_INPUT)
    genres_spec = tf.TensorSpec([None, None], tf.int32, name=GENRES_INPUT)

    def explain_pixels(pixels: tf.Tensor, head: tf.Tensor, genres: tf.Tensor) -> dict[str, tf.Tensor]:
        return grad_cam(parts, pixels, head, genres)

    def explain_images(images: tf.Tensor, head: tf.Tensor, genres: tf.Tensor) -> dict[str, tf.Tensor]:
        return grad_cam(parts, poster_bytes_to_pixels(images, image_size), head, genres)

    archive.add_endpoint(name=EXPLAIN_SIGNATURE, fn=explain_pixels,
                         input_signature=[pixels_spec, head_spec, genres_spec])
    if with_bytes:
        archive.add_endpoint(name=EXPLAIN_IMAGES_SIGNATURE, fn=explain_images,
                             input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT),
                                              head_spec, genres_spec])


def _all_layers(layer: Any) -> list[Any]:
    children = list(getattr(layer, "layers", []) or [])
    return children + [grandchild for child in children for grandchild in _all_layers(child)]


def _with_float32_policies(config: Any) -> Any:
    if isinstance(config, list):
        return [_with_float32_policies(item) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy" and isinstance(config.get("config"), dict):
        return {**config, "config": {**config["config"], "name": "float32"}}
    return {key: _with_float32_policies(value) for key, value in config.items()}


def export_network(model: keras.Model) -> keras.Model:
    """The network that is exported: ``model`` itself, or its float32 twin if it computes in float16.

    A model trained in mixed precision (on a GPU) computes in float16, which neither the TFLite
    converter nor TF.js accept and which CPUs serve slowly; its weights are float32 already, so a
    float32 copy of the architecture takes them as they are.
    """
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in _all_layers(model)):
        return model
    try:
        config = _with_float32_policies(keras.saving.serialize_keras_object(model))
        twin = keras.saving.deserialize_keras_object(config)
        twin.set_weights(model.get_weights())
    except (TypeError, ValueError) as exc:
        raise ExportError(f"cannot rebuild the mixed-precision model in float32 for export: {exc}") from exc
    return twin


def model_image_size(model: keras.Model) -> int:
    """The side S of the model's square ``[None, S, S, 3]`` input."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or shape[1] is None:
        raise ExportError(f"the model must take pixels [None, S, S, 3]; its input is {list(shape)}")
    return int(shape[1])


def write_warmup_requests(saved_model_dir: Path, model_name: str, sample_pixels: np.ndarray) -> Path:
    """TF Serving replays these ``pixels`` requests before serving, so the first user does not wait."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=PIXELS_SIGNATURE))
    request.inputs[PIXELS_INPUT].CopyFrom(tf.make_tensor_proto(sample_pixels.astype(np.float32)))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    path = saved_model_dir / "assets.extra" / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(log.SerializeToString())
    return path


def write_metadata(saved_model_dir: Path, metadata: dict[str, Any], image_size: int) -> None:
    """``postergenre.json`` holds the trainer's metadata; ``genres.json`` the output layout."""
    extra = saved_model_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    (extra / "postergenre.json").write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
    if "genres" in metadata:
        layout = {"genres": list(metadata["genres"]), "years": list(metadata.get("years") or []),
                  "image_size": image_size}
        (extra / "genres.json").write_text(json.dumps(layout, indent=2))


def export_saved_model(model: keras.Model, dest: Path, image_size: int,
                       metadata: dict[str, Any] | None = None,
                       warmup_pixels: np.ndarray | None = None) -> Path:
    """Write the SavedModel to ``dest`` (``.../<name>/<version>``) with signatures and warm-up file.

    ``dest`` must not hold a SavedModel already: versions are immutable.
    """
    dest = Path(dest)
    if (dest / "saved_model.pb").exists():
        raise ExportError(f"{dest} already holds a SavedModel; model versions are immutable")
    if model_image_size(model) != image_size:
        raise ExportError(f"image_size {image_size} does not match the model's input "
                          f"{model_image_size(model)}")
    dest.mkdir(parents=True, exist_ok=True)
    serving_archive(export_network(model), image_size).write_out(str(dest), verbose=False)
    if warmup_pixels is None:
        warmup_pixels = np.full((1, image_size, image_size, 3), 127.0, np.float32)
    write_warmup_requests(dest, dest.parent.name or "model", warmup_pixels[:1])
    if metadata is not None:
        write_metadata(dest, metadata, image_size)
    return dest


# ---------------------------------------------------------------------------------------------
# TFLite
# ---------------------------------------------------------------------------------------------


def export_tflite(model: keras.Model, out_dir: Path) -> dict[str, Path]:
    """fp32 ``model.tflite`` and dynamic-range int8 ``model_int8.tflite`` (weights int8, math fp32).

    Converted from a pixels-only SavedModel in a temporary folder: the converter's supported path
    for Keras 3 models (``from_keras_model`` and bare concrete functions do not freeze Keras 3
    variables reliably).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="tflite-src-") as folder:
        network = export_network(model)
        serving_archive(network, model_image_size(network), with_bytes=False,
                        with_explain=False).write_out(folder, verbose=False)
        for key, filename, optimize in (("tflite", TFLITE_FILE, False),
                                        ("tflite_int8", TFLITE_INT8_FILE, True)):
            converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[PIXELS_SIGNATURE])
            if optimize:
                # No representative dataset: dynamic-range quantisation (int8 weights, float math).
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            path = out_dir / filename
            path.write_bytes(converter.convert())
            paths[key] = path
    return paths


def run_tflite(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Scores of a TFLite model through the LiteRT interpreter (ai-edge-litert)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    input_index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, list(pixels.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_index, pixels.astype(np.float32))
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


# ---------------------------------------------------------------------------------------------
# TF.js
# ---------------------------------------------------------------------------------------------


def tfjs_converter_path() -> Path:
    """The converter of the separate environment; raises :class:`TfjsConverterMissing` if absent."""
    configured = os.environ.get(TFJS_CONVERTER_ENV)
    path = Path(configured) if configured else DEFAULT_TFJS_CONVERTER
    if not path.is_file() or not os.access(path, os.X_OK):
        raise TfjsConverterMissing(
            f"TF.js converter not found at {path}: run `bash {TFJS_ENV_SCRIPT}` (or `make tfjs-env`) to "
            f"create .venv-tfjs, or set {TFJS_CONVERTER_ENV} to a tensorflowjs_converter 4.22.0")
    return path


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # The converter needs no GPU; keep it off the one the trainer is using.
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def export_tfjs(saved_model_dir: Path, out_dir: Path) -> Path:
    """Convert the SavedModel's ``pixels`` signature to a TF.js graph model; returns ``model.json``."""
    converter = tfjs_converter_path()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} is not empty; model versions are immutable")
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [str(converter), "--input_format=tf_saved_model", f"--signature_name={PIXELS_SIGNATURE}",
               "--saved_model_tags=serve", "--output_format=tfjs_graph_model",
               str(saved_model_dir), str(out_dir)]
    result = subprocess.run(command, capture_output=True, text=True, env=_subprocess_env(), check=False)
    model_json = out_dir / "model.json"
    if result.returncode != 0 or not model_json.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ExportError(f"tensorflowjs_converter failed (exit {result.returncode}):\n{tail}")
    return model_json


def tfjs_runtime_problem() -> str | None:
    """Why a TF.js model cannot be loaded back here (no node, no @tensorflow/tfjs), or None."""
    node = shutil.which("node")
    if node is None:
        return "Node.js (node) is not on PATH"
    probe = subprocess.run([node, "--input-type=module", "-e", "await import('@tensorflow/tfjs');"],
                           cwd=TFJS_LOADER_SCRIPT.parent, capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return "the npm package @tensorflow/tfjs is not installed: run `npm ci` in the repository root"
    return None


def run_tfjs(model_json: Path, pixels: np.ndarray) -> np.ndarray:
    """Scores of a TF.js graph model, computed by @tensorflow/tfjs (CPU backend) in Node.js."""
    problem = tfjs_runtime_problem()
    if problem is not None:
        raise TfjsRuntimeMissing(problem)
    with tempfile.TemporaryDirectory(prefix="tfjs-input-") as folder:
        input_path = Path(folder) / "pixels.f32"
        input_path.write_bytes(np.ascontiguousarray(pixels, dtype="<f4").tobytes())
        shape = ",".join(str(dim) for dim in pixels.shape)
        result = subprocess.run(["node", str(TFJS_LOADER_SCRIPT), str(model_json), str(input_path), shape],
                                capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ExportError(f"loading {model_json} with TF.js failed: {result.stderr.strip()[-2000:]}")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return np.asarray(answer["scores"], dtype=np.float32).reshape(answer["shape"])


# ---------------------------------------------------------------------------------------------
# Checks and the whole export
# ---------------------------------------------------------------------------------------------


def sample_inputs(image_size: int, count: int = DEFAULT_SAMPLE_COUNT, seed: int = 0) -> np.ndarray:
    """Deterministic integer-valued pixels ``[count, S, S, 3]`` for checks when none are given."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, image_size, image_size, 3)).astype(np.float32)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless bytes of one ``[S, S, 3]`` image, to check the bytes signature exactly."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _max_abs_diff(actual: np.ndarray, expected: np.ndarray, what: str) -> float:
    if actual.shape != expected.shape:
        raise ExportError(f"{what} answers with shape {actual.shape}, Keras with {expected.shape}")
    return float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))


def check_exports(model: keras.Model, dest: Path, sample_pixels: np.ndarray) -> dict[str, float]:
    """Max absolute score difference of every export present under ``dest`` vs Keras.

    Keys: ``savedmodel`` (pixels signature), ``savedmodel_bytes`` (bytes signature on the samples
    encoded as PNG, so decoding is exact and only the graph's preprocessing is tested),
    ``tflite``, ``tflite_int8`` (quantised: recorded, not expected below 1e-4), ``tfjs`` (only
    where Node.js and @tensorflow/tfjs are available; otherwise logged and left out). For a
    mixed-precision model the exports are compared with its float32 twin, and ``float32_twin``
    records how far that twin is from the model itself.
    """
    dest = Path(dest)
    pixels = np.asarray(sample_pixels, dtype=np.float32)
    network = export_network(model)
    expected = np.asarray(network(pixels, training=False), dtype=np.float32)
    diffs: dict[str, float] = {}
    if network is not model:
        original = np.asarray(model(pixels, training=False), dtype=np.float32)
        diffs["float32_twin"] = _max_abs_diff(expected, original, "the float32 twin")
    if (dest / "saved_model.pb").is_file():
        loaded = tf.saved_model.load(str(dest))
        by_pixels = loaded.signatures[PIXELS_SIGNATURE](**{PIXELS_INPUT: tf.constant(pixels)})
        diffs["savedmodel"] = _max_abs_diff(by_pixels[SCORES_OUTPUT].numpy(), expected, "SavedModel pixels")
        rounded = np.clip(np.round(pixels), 0, 255)
        expected_rounded = np.asarray(network(rounded, training=False), dtype=np.float32)
        images = tf.constant([encode_png(image) for image in rounded])
        by_bytes = loaded.signatures[BYTES_SIGNATURE](**{BYTES_INPUT: images})
        diffs["savedmodel_bytes"] = _max_abs_diff(by_bytes[SCORES_OUTPUT].numpy(), expected_rounded,
                                                  "SavedModel bytes")
    exports = dest / EXPORTS_DIR
    for key, filename in (("tflite", TFLITE_FILE), ("tflite_int8", TFLITE_INT8_FILE)):
        if (exports / filename).is_file():
            diffs[key] = _max_abs_diff(run_tflite(exports / filename, pixels), expected, filename)
    model_json = exports / TFJS_DIR / "model.json"
    if model_json.is_file():
        problem = tfjs_runtime_problem()
        if problem is None:
            diffs["tfjs"] = _max_abs_diff(run_tfjs(model_json, pixels), expected, "TF.js")
        else:
            logger.warning("TF.js export not checked: %s", problem)
    return diffs


def export_all(model: keras.Model, dest: Path, image_size: int, sample_pixels: np.ndarray | None = None,
               formats: Sequence[str] = ALL_FORMATS,
               metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every requested format of one model version under ``dest`` and check each against Keras.

    ``formats`` is a subset of ``("savedmodel", "tflite", "tfjs")``; TF.js needs the SavedModel.
    Returns ``{"paths": {"savedmodel": ".", "tflite": "exports/model.tflite", "tflite_int8": ...,
    "tfjs": "exports/tfjs/model.json"}, "max_abs_diff": {...from check_exports...},
    "image_size": S}`` with paths relative to ``dest`` (the layout the object store keeps).
    """
    dest = Path(dest)
    unknown = set(formats) - set(ALL_FORMATS)
    if unknown:
        raise ExportError(f"unknown export formats {sorted(unknown)}; choose from {list(ALL_FORMATS)}")
    if "tfjs" in formats and "savedmodel" not in formats:
        raise ExportError("the TF.js export is converted from the SavedModel: include 'savedmodel'")
    if "tfjs" in formats:
        tfjs_converter_path()  # fail before the slow steps, not after them
    samples = sample_inputs(image_size) if sample_pixels is None else np.asarray(sample_pixels, np.float32)
    network = export_network(model)  # rebuilt once here, not in every step
    written: dict[str, Path] = {}
    if "savedmodel" in formats:
        written["savedmodel"] = export_saved_model(network, dest, image_size, metadata=metadata,
                                                   warmup_pixels=samples[:1])
    if "tflite" in formats:
        written.update(export_tflite(network, dest / EXPORTS_DIR))
    if "tfjs" in formats:
        written["tfjs"] = export_tfjs(dest, dest / EXPORTS_DIR / TFJS_DIR)
    diffs = check_exports(model, dest, samples)
    logger.info("exports of %s checked against Keras: %s", dest, diffs)
    paths = {key: path.relative_to(dest).as_posix() for key, path in written.items()}
    return {"paths": paths, "max_abs_diff": diffs, "image_size": image_size}
