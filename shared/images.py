"""Poster decoding and the one preprocessing function shared by training and serving.

Every path that turns poster bytes into model input goes through :func:`poster_pixels`:
the dataset build (training shards), the web service (before inference), ``evaluate`` and the
benchmarks. The exported SavedModel's bytes signature reproduces it in-graph for TF Serving clients.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow raises DecompressionBombError above twice this many pixels and warns above it;
# 40 Mpx is far beyond any poster (TMDB's "original" posters are about 2000x3000).
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


class PosterImageError(ValueError):
    """The bytes are not a usable poster image; the message says why."""


@dataclass(frozen=True)
class PosterInfo:
    format: str
    content_type: str
    width: int
    height: int
    sha256: str
    size_bytes: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_poster(data: bytes) -> tuple[Image.Image, PosterInfo]:
    """Decode poster bytes safely into an RGB image.

    The type is decided by content, not by name. EXIF orientation is applied, animated images are
    reduced to their first frame, and CMYK, greyscale, palette and alpha images become RGB
    (transparency composited on white), the same way for training and serving.
    """
    if not data:
        raise PosterImageError("empty file")
    try:
        # Not closed with `with`: a closed image is unusable, and keeping the decoded one (its file is
        # only these bytes in memory) spares two full-size copies per poster on the serving path.
        image: Image.Image = Image.open(io.BytesIO(data))
        fmt = image.format or ""
        if fmt not in ACCEPTED_FORMATS:
            raise PosterImageError(f"unsupported image type {fmt or 'unknown'}")
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise PosterImageError(f"image too large: {width}x{height} pixels")
        image.seek(0)  # first frame of an animation
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        image = _to_rgb(image)
    except PosterImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise PosterImageError(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise PosterImageError("not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise PosterImageError(f"image does not decode: {exc}") from None
    info = PosterInfo(fmt, ACCEPTED_FORMATS[fmt], image.width, image.height, sha256_hex(data), len(data))
    return image, info


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "I;16" or image.mode == "I":
        # 16-bit greyscale PNGs: scale to 8 bits before converting.
        array = np.asarray(image, dtype=np.float32)
        return Image.fromarray((array / max(array.max(), 1.0) * 255).astype(np.uint8)).convert("RGB")
    if image.mode == "RGB":
        return image  # convert() would only copy it
    return image.convert("RGB")


def resize_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Resize to ``size`` x ``size`` (no aspect kept, as the method's ``load_img(target_size)``)."""
    resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(resized, dtype=np.uint8)


def poster_pixels(data: bytes, size: int) -> np.ndarray:
    """The model input of a poster: ``uint8`` array of shape ``(size, size, 3)``, RGB 0..255."""
    image, _ = open_poster(data)
    return resize_pixels(image, size)


def perceptual_hash(image: Image.Image) -> str:
    """64-bit difference hash (dHash) as 16 hex digits; near-duplicate posters differ in few bits."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return f"{value:016x}"


def hamming_distance(hash_a: str, hash_b: str) -> int:
    return bin(int(hash_a, 16) ^ int(hash_b, 16)).count("1")
