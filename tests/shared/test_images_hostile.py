"""Hostile poster bytes: every one is refused with PosterImageError or decoded into a sane RGB image.

Nothing else may escape (no crash, no other exception type), and memory stays bounded.
"""

from __future__ import annotations

import io
import resource
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from shared.images import MAX_IMAGE_PIXELS, PosterImageError, open_poster, poster_pixels
from tests.conftest import make_poster

VALID_JPEG = make_poster(7, size=(40, 60))


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but whose data is tiny (a bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def jpeg_with_size(width: int, height: int) -> bytes:
    """The valid JPEG with its SOF0 frame header patched to claim another size."""
    data = bytearray(VALID_JPEG)
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format=fmt)
    return buffer.getvalue()


def gif_bomb() -> bytes:
    return b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b";"


CORPUS = {
    "zero bytes": b"",
    "one byte": b"\xff",
    "text": b"hello, I am not a poster",
    "html": b"<html><script>alert(1)</script></html>",
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    "pdf": b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
    "zip": b"PK\x03\x04" + b"\x00" * 40,
    "jpeg header only": VALID_JPEG[:20],
    "png bomb 60000x60000": png_with_size(60000, 60000),
    "png 1x100000000": png_with_size(1, 100_000_000),
    "jpeg claiming 65000x65000": jpeg_with_size(65000, 65000),
    "gif 65535x65535": gif_bomb(),
    "polyglot jpeg+zip": VALID_JPEG + b"PK\x03\x04" + b"\x00" * 100,
    "polyglot gif+js": b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00;*/=alert(1);",
    "png truncated": png_with_size(10, 10)[:30],
    "bmp (unsupported)": encoded("BMP"),
    "tiff (unsupported)": encoded("TIFF"),
}
CUTS = (2, 100, 300, len(VALID_JPEG) // 2, len(VALID_JPEG) - 2)
CORPUS.update({f"jpeg cut at {n}": VALID_JPEG[:n] for n in CUTS})


def check(data: bytes) -> None:
    try:
        image, info = open_poster(data)
    except PosterImageError as exc:
        assert str(exc)  # every refusal says why
        return
    assert image.mode == "RGB"
    assert info.width * info.height <= MAX_IMAGE_PIXELS
    assert poster_pixels(data, 16).shape == (16, 16, 3)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_corpus(name: str) -> None:
    check(CORPUS[name])


@pytest.mark.parametrize("name", ["png bomb 60000x60000", "jpeg claiming 65000x65000", "gif 65535x65535"])
def test_bombs_refused_without_allocating(name: str) -> None:
    before = max_rss_mib()
    with pytest.raises(PosterImageError, match="too large|does not decode|not an image"):
        open_poster(CORPUS[name])
    assert max_rss_mib() - before < 200


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(VALID_JPEG) - 1), st.integers(0, 255)), min_size=1, max_size=12))
def test_bit_flipped_jpegs(flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID_JPEG)
    for position, value in flips:
        data[position] = value
    check(bytes(data))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    check(data)
