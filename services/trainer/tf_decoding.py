"""Pillow's poster decoding re-implemented in TensorFlow ops: poster bytes -> pixels in the graph.

The ``serving_default`` and ``explain_images`` signatures of an exported model
(:mod:`services.trainer.export`) take raw JPEG/PNG bytes, so the decoding and resizing happen in the
graph, and they must give the very pixels training saw: :func:`shared.images.poster_pixels` bit for
bit (checked on all 4,632 posters of the shared collection at 128 px). Pillow works on uint8 images
in integer arithmetic; so do these ops, in int32: JPEG decoded with the accurate integer DCT as
Pillow's libjpeg does, EXIF orientation applied, transparency composited on white and 16-bit
greyscale scaled as Pillow does, and Pillow's two-pass antialiased ``BILINEAR`` resize with its
fixed-point weights. Not reproduced: EXIF orientation in non-JPEG files, and formats TF cannot
decode.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from shared.images import MAX_IMAGE_PIXELS

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
