"""The in-browser preprocessing (static/preprocess.js) gives the same pixels as shared.images, byte for
byte: Pillow's bilinear resize (both pass orders) and the composite of transparency on white."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.images import _to_rgb, resize_pixels

PREPROCESS_JS = Path(__file__).resolve().parents[3] / "services" / "web" / "static" / "preprocess.js"
RUNNER = """
const P = require(process.argv[1]);
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = cases.map((c) => c.rgba
  ? Array.from(P.compositeOnWhite(Uint8Array.from(c.rgba), c.w * c.h))
  : Array.from(P.resizeBilinear(Uint8Array.from(c.rgb), c.w, c.h, c.size, c.size)));
process.stdout.write(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.skip("needs Node.js to run static/preprocess.js")
    return found


def run_js(node: str, cases: list[dict[str, object]]) -> list[list[int]]:
    result = subprocess.run([node, "-e", RUNNER, str(PREPROCESS_JS)], input=json.dumps(cases),
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


# Posters taller than wide (vertical pass first in Pillow), wider, square, upscaled, barely resized.
SHAPES = [(60, 90, 32), (64, 96, 32), (33, 200, 32), (200, 33, 32), (300, 450, 128), (20, 30, 64),
          (7, 5, 32), (32, 32, 32), (129, 130, 128), (1000, 1500, 224)]


def test_resize_matches_pillow_exactly(node: str) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h, _ in SHAPES]
    cases = [{"w": w, "h": h, "size": s, "rgb": image.ravel().tolist()}
             for (w, h, s), image in zip(SHAPES, images, strict=True)]
    for (w, h, size), image, got in zip(SHAPES, images, run_js(node, cases), strict=True):
        expected = resize_pixels(Image.fromarray(image), size)
        assert np.array_equal(np.asarray(got, dtype=np.uint8).reshape(size, size, 3), expected), (w, h, size)


def test_transparency_is_composited_on_white_like_training(node: str) -> None:
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (12, 9, 4), dtype=np.uint8)
    rgba[0, :, 3] = 0
    rgba[1, :, 3] = 255
    [got] = run_js(node, [{"w": 9, "h": 12, "rgba": rgba.ravel().tolist()}])
    expected = np.asarray(_to_rgb(Image.fromarray(rgba, "RGBA")))
    assert np.array_equal(np.asarray(got, dtype=np.uint8).reshape(12, 9, 3), expected)
