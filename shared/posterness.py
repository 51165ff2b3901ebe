"""Is this image a movie poster? A cheap check that warns and never refuses (issue 16).

The models answer for any image, and a 900x300 image of noise gets a table as confident as a
poster's. Two signals say "this is probably not a poster":

- the **aspect ratio**: posters are portrait, about 2:3 (width / height 0.53-0.75 for 95 % of the
  posters of ``posters-imdb``; 99 % are at most 1.0), so an image wider than :data:`MAX_ASPECT` or
  narrower than :data:`MIN_ASPECT` is flagged;
- a **learned score**: a logistic model on cheap statistics of the image resized to 64x96 (colour
  histogram entropy, distinct colours, edge density, high-frequency energy, neighbour correlation,
  saturation, the share of the commonest colour), fitted on real posters against generated
  non-posters (uniform noise, flat two-colour images, gradients, photos shipped with scikit-image).
  Its coefficients are ``shared/posterness.json``; ``python -m shared.posterness_fit`` refits them
  (docs/benchmarks.md has the command and its precision and recall on a held-out split).

NumPy and Pillow only, so the web process runs it without Keras, on the decoded poster it already has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

COEFFICIENTS = Path(__file__).with_name("posterness.json")
# Beyond these widths per height an image is not a poster's shape (see the module's docstring).
MIN_ASPECT = 0.4
MAX_ASPECT = 1.05
# The learned statistics are computed at this size, whatever the image's own shape: the score must
# not learn the aspect ratio, which the rule above judges on its own.
THUMB_SIZE = (64, 96)
FEATURES = ("histogram_entropy", "distinct_colours", "edge_density", "high_frequency",
            "neighbour_correlation", "saturation_mean", "saturation_std", "luminance_std",
            "commonest_colour_share")


def image_features(image: Image.Image) -> np.ndarray:
    """The :data:`FEATURES` of an RGB image, each roughly in 0..1.

    It runs on every served poster (the web's poster-likeness warning), so the integer statistics are
    computed on the thumbnail's 8-bit values and the distinct colours counted with a table rather than
    a sort; every feature is the same number the float64 formulas give (tests compare them).
    """
    # An RGB poster (what open_poster decodes to) is resized as it is: convert() would copy it first.
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    thumb8 = np.asarray(rgb.resize(THUMB_SIZE, Image.Resampling.BILINEAR, reducing_gap=None))
    pixels8 = thumb8.reshape(-1, 3)
    red, green, blue = (pixels8[:, channel].astype(np.int64) for channel in range(3))
    # Colour histogram on 8 levels per channel (512 bins), entropy in bits over its maximum of 9.
    codes = (red >> 5) * 64 + (green >> 5) * 8 + (blue >> 5)
    counts = np.bincount(codes, minlength=512).astype(np.float64)
    share = counts[counts > 0] / len(codes)
    entropy = float(-(share * np.log2(share)).sum()) / 9.0
    # Distinct colours on 32 levels per channel, as a log share of the pixels (noise: all distinct).
    fine = (red >> 3) * 1024 + (green >> 3) * 32 + (blue >> 3)
    distinct = int(np.count_nonzero(np.bincount(fine, minlength=32768)))
    distinct_share = float(np.log1p(distinct) / np.log1p(len(pixels8)))
    commonest = float(counts.max() / len(codes))

    grey = thumb8.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    dx, dy = np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0))
    edges = float(((dx[:-1, :] + dy[:, :-1]) > 0.1).mean())
    laplacian = np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1]
                       - grey[1:-1, :-2] - grey[1:-1, 2:])
    high_frequency = float(min(1.0, laplacian.mean() * 4))
    left, right = grey[:, :-1].ravel(), grey[:, 1:].ravel()
    # A flat image has no variance: its neighbours are as alike as can be.
    correlation = 1.0 if left.std() < 1e-6 or right.std() < 1e-6 else float(np.corrcoef(left, right)[0, 1])

    high = np.maximum(np.maximum(pixels8[:, 0], pixels8[:, 1]), pixels8[:, 2]).astype(np.float64)
    low = np.minimum(np.minimum(pixels8[:, 0], pixels8[:, 1]), pixels8[:, 2]).astype(np.float64)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-9), 0.0)
    return np.array([entropy, distinct_share, edges, high_frequency, correlation, float(saturation.mean()),
                     float(saturation.std()), float(grey.std() * 2), commonest])


@dataclass(frozen=True)
class PosterModel:
    """A fitted logistic model: ``sigmoid(((features - mean) / scale) @ weights + bias)``."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float  # below it, "not a poster"

    def score(self, features: np.ndarray) -> np.ndarray:
        """The probability of being a poster, per row of ``features`` (or for one row)."""
        logits = ((np.asarray(features) - self.mean) / self.scale) @ self.weights + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-logits)))

    def as_json(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {"features": list(FEATURES), "mean": self.mean.round(8).tolist(),
                "scale": self.scale.round(8).tolist(), "weights": self.weights.round(8).tolist(),
                "bias": round(self.bias, 8), "threshold": round(self.threshold, 8), **extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PosterModel:
        if list(data["features"]) != list(FEATURES):
            raise ValueError(f"posterness coefficients are for features {data['features']}, not {FEATURES}: "
                             "refit them with python -m shared.posterness_fit")
        return cls(np.asarray(data["mean"], float), np.asarray(data["scale"], float),
                   np.asarray(data["weights"], float), float(data["bias"]), float(data["threshold"]))


@lru_cache(maxsize=1)
def load_model(path: Path = COEFFICIENTS) -> PosterModel:
    return PosterModel.from_json(json.loads(path.read_text()))


@dataclass(frozen=True)
class Posterness:
    aspect_ratio: float  # width / height
    score: float  # the learned probability of being a poster
    aspect_ok: bool
    score_ok: bool

    @property
    def is_poster(self) -> bool:
        return self.aspect_ok and self.score_ok

    def warning(self) -> dict[str, Any] | None:
        """The API's ``warnings`` entry, or ``None`` for what looks like a poster."""
        if self.is_poster:
            return None
        reasons = []
        if not self.aspect_ok:
            reasons.append(f"its shape ({self.aspect_ratio:.2f} wide per 1 high) is not a poster's portrait "
                           "2:3")
        if not self.score_ok:
            reasons.append(f"its colours and edges look like no poster's (poster-likeness {self.score:.2f})")
        return {"code": "not_a_poster",
                "message": "This image may not be a movie poster: " + " and ".join(reasons)
                           + ". The genres below are what the models answer anyway; read them with care.",
                "aspect_ratio": round(self.aspect_ratio, 4), "poster_score": round(self.score, 4)}


def check_image(image: Image.Image, model: PosterModel | None = None) -> Posterness:
    model = model or load_model()
    aspect = image.width / max(1, image.height)
    score = float(model.score(image_features(image)))
    return Posterness(aspect, score, MIN_ASPECT <= aspect <= MAX_ASPECT, score >= model.threshold)
