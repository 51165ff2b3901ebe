from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.images import PosterImageError, hamming_distance, open_poster, perceptual_hash, poster_pixels
from tests.conftest import make_poster


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_pixels_shape_and_type() -> None:
    pixels = poster_pixels(make_poster(1), 32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("mode", ["CMYK", "L", "RGBA", "P", "LA"])
def test_modes_become_rgb(mode: str) -> None:
    image = Image.new(mode, (20, 30))
    fmt = "JPEG" if mode in ("CMYK", "L") else "PNG"
    decoded, info = open_poster(encode(image, fmt))
    assert decoded.mode == "RGB" and (info.width, info.height) == (20, 30)


def test_alpha_composited_on_white() -> None:
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    decoded, _ = open_poster(encode(transparent, "PNG"))
    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied() -> None:
    image = Image.new("RGB", (20, 10), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    decoded, _ = open_poster(encode(image, "JPEG", exif=exif))
    assert decoded.size == (10, 20)


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded, _ = open_poster(buffer.getvalue())
    red, _, blue = decoded.convert("RGB").getpixel((0, 0))  # type: ignore[misc]
    assert red > 200 and blue < 50


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"not an image at all", "not an image"),
    (make_poster(2)[:200], "does not decode"),
    (b"%PDF-1.4 fake", "not an image"),
])
def test_bad_bytes_are_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(PosterImageError, match=message):
        open_poster(data)


def test_decompression_bomb_refused() -> None:
    huge = encode(Image.new("L", (9000, 9000)), "PNG")
    with pytest.raises(PosterImageError, match="too large"):
        open_poster(huge)


def structured_poster(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:180, 0:120]
    array = np.stack([x * 2, y, (x + y) % 256], axis=-1).astype(np.uint8)
    top, left = rng.integers(10, 100, size=2)
    array[top:top + 60, left:left + 20] = rng.integers(0, 256, size=3)
    return Image.fromarray(array)


def test_perceptual_hash_near_duplicates() -> None:
    original = structured_poster(3)
    recompressed, _ = open_poster(encode(original.resize((100, 150)), "JPEG", quality=50))
    other = structured_poster(4).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert hamming_distance(perceptual_hash(original), perceptual_hash(recompressed)) <= 6
    assert hamming_distance(perceptual_hash(original), perceptual_hash(other)) > 12
