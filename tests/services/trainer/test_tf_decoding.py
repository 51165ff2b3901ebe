"""The in-graph decoding of the bytes signatures: Pillow's decoding and resize in TensorFlow ops,
compared with :func:`shared.images.poster_pixels` and Pillow bit for bit."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from services.trainer import tf_decoding
from shared.images import poster_pixels
from tests.conftest import make_poster


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def poster_variants() -> dict[str, bytes]:
    """One poster in every colour layout and format the bytes signature must handle."""
    rgb = Image.open(io.BytesIO(make_poster(7, (120, 180))))
    alpha = Image.fromarray(np.random.default_rng(7).integers(0, 256, (180, 120), dtype=np.uint8))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    turned = {}
    for orientation in range(2, 9):  # every EXIF orientation, as phone photos carry them
        exif = Image.Exif()
        exif[0x0112] = orientation
        turned[f"jpeg exif orientation {orientation}"] = _encode(rgb, "JPEG", exif=exif.tobytes())
    return turned | {
        "jpeg": make_poster(7, (120, 180)),
        "jpeg enlarged": make_poster(8, (20, 30)),
        "jpeg greyscale": _encode(rgb.convert("L"), "JPEG"),
        "jpeg cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "png rgb": _encode(rgb, "PNG"),
        "png rgba on white": _encode(rgba, "PNG"),
        "png grey + alpha": _encode(rgba.convert("LA"), "PNG"),
        "png greyscale": _encode(rgb.convert("L"), "PNG"),
        "png palette": _encode(rgb.convert("P"), "PNG"),
        "png palette transparent": _encode(rgb.convert("P"), "PNG", transparency=0),
        "gif": _encode(rgb.convert("P"), "GIF"),
        "png 16-bit greyscale": _encode(Image.fromarray(
            np.random.default_rng(7).integers(0, 40000, (180, 120)).astype(np.uint16)), "PNG"),
        "png 16-bit rgb": tf.io.encode_png(
            np.random.default_rng(7).integers(0, 65536, (180, 120, 3)).astype(np.uint16)).numpy(),
    }


@pytest.mark.parametrize("size", [32, 96])
def test_in_graph_preprocessing_reproduces_poster_pixels(size: int) -> None:
    """Every colour layout and format gives the very pixels training saw, bit for bit."""
    for name, data in poster_variants().items():
        expected = poster_pixels(data, size).astype(np.float32)
        pixels = tf_decoding.poster_bytes_to_pixels(tf.constant([data]), size).numpy()[0]
        assert np.array_equal(pixels, expected), (name, float(np.abs(pixels - expected).max()))


def test_resize_follows_pillow_on_every_aspect_ratio() -> None:
    """Shrinking and enlarging, wide and tall: the order of Pillow's two passes shows in the result."""
    rng = np.random.default_rng(5)
    size = 24
    for width, height in [(60, 90), (40, 120), (47, 70), (47, 71), (120, 40), (30, 200), (10, 15),
                          (10, 60), (24, 100), (100, 24), (24, 24), (25, 23), (7, 5)]:
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.BILINEAR,
                                                            reducing_gap=None))
        resized = tf_decoding.resize_like_pillow(tf.constant(array.astype(np.int32)), size).numpy()
        assert np.array_equal(resized, expected), (width, height)
