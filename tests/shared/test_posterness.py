"""The poster-likeness check (shared/posterness.py) with its committed coefficients: it flags noise
and flat images, it does not flag real posters it was not fitted on, and its fitter refits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.posterness import FEATURES, PosterModel, check_image, image_features, load_model
from shared.posterness_fit import fit, gradient, noise, two_colours

# The coefficients were fitted on this many posters drawn with this seed (posterness.json says so).
FITTED = json.loads((Path(__file__).resolve().parents[2] / "shared" / "posterness.json").read_text())


def test_a_wide_image_of_random_noise_is_flagged_on_both_counts() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 900, 3), dtype=np.uint8))
    result = check_image(image)
    assert not result.aspect_ok and not result.score_ok
    warning = result.warning()
    assert warning is not None and warning["code"] == "not_a_poster"
    assert "shape" in warning["message"] and "poster-likeness" in warning["message"]


def test_a_flat_two_colour_image_of_a_posters_shape_is_flagged_by_its_score() -> None:
    array = np.zeros((600, 400, 3), np.uint8)
    array[:, :200] = (200, 30, 30)
    array[:, 200:] = (20, 20, 120)
    result = check_image(Image.fromarray(array))
    assert result.aspect_ok and not result.score_ok and result.warning() is not None


@pytest.mark.parametrize("make", [noise, two_colours, gradient])
def test_generated_non_posters_of_another_seed_are_flagged(make: object) -> None:
    rng = np.random.default_rng(1234)
    flagged = [not check_image(make(rng)).is_poster for _ in range(20)]  # type: ignore[operator]
    assert all(flagged)


def held_out_posters(folder: Path, count: int) -> list[Path]:
    """Posters the committed coefficients never saw: those after the fit's seeded sample."""
    with open(folder / "labels.csv", newline="") as handle:
        ids = sorted(row["imdb_id"] for row in csv.DictReader(handle))
    order = np.random.default_rng(FITTED["fitted_on"]["seed"]).permutation(ids)
    unseen = order[FITTED["fitted_on"]["posters"]:]
    return [path for imdb_id in unseen[:count] if (path := folder / "images" / f"{imdb_id}.jpg").is_file()]


def test_real_posters_the_fit_never_saw_are_rarely_flagged(shared_posters: Path) -> None:
    posters = held_out_posters(shared_posters, 300)
    assert len(posters) >= 250
    flagged = []
    for path in posters:
        with Image.open(path) as image:
            if not check_image(image.convert("RGB")).is_poster:
                flagged.append(path.name)
    rate = len(flagged) / len(posters)
    assert rate <= 0.04, (rate, flagged)


def test_the_coefficients_round_trip_and_refuse_other_features() -> None:
    model = load_model()
    again = PosterModel.from_json(model.as_json({}))
    features = image_features(Image.new("RGB", (60, 90), (10, 200, 30)))
    assert float(again.score(features)) == pytest.approx(float(model.score(features)))
    with pytest.raises(ValueError, match="refit"):
        PosterModel.from_json({**model.as_json({}), "features": list(FEATURES[:-1])})


def test_the_fitter_separates_posters_from_generated_images(shared_posters: Path) -> None:
    result = fit(shared_posters, posters=80, seed=3, max_false_warning=0.02)
    model = PosterModel.from_json(result)
    assert result["validation"]["with_aspect"]["recall"] >= 0.8
    assert result["validation"]["recall_by_kind"]["noise"] == 1.0
    array = np.random.default_rng(9).integers(0, 256, (600, 400, 3), dtype=np.uint8)
    assert float(model.score(image_features(Image.fromarray(array)))) < model.threshold


def float64_features(image: Image.Image) -> np.ndarray:
    """The features as first written (float64 thumbnail, sorted distinct colours): the fitted
    coefficients were learned on these numbers, so the served check must give exactly them."""
    thumb = np.asarray(image.convert("RGB").resize((64, 96), Image.Resampling.BILINEAR, reducing_gap=None),
                       dtype=np.float64)
    pixels = thumb.reshape(-1, 3)
    bins = (pixels // 32).astype(np.int64)
    codes = bins[:, 0] * 64 + bins[:, 1] * 8 + bins[:, 2]
    counts = np.bincount(codes, minlength=512).astype(np.float64)
    share = counts[counts > 0] / len(codes)
    entropy = float(-(share * np.log2(share)).sum()) / 9.0
    fine = (pixels // 8).astype(np.int64)
    distinct = len(np.unique(fine[:, 0] * 1024 + fine[:, 1] * 32 + fine[:, 2]))
    grey = thumb @ np.array([0.299, 0.587, 0.114]) / 255.0
    dx, dy = np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0))
    laplacian = np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1]
                       - grey[1:-1, :-2] - grey[1:-1, 2:])
    left, right = grey[:, :-1].ravel(), grey[:, 1:].ravel()
    correlation = 1.0 if left.std() < 1e-6 or right.std() < 1e-6 else float(np.corrcoef(left, right)[0, 1])
    high, low = pixels.max(axis=1), pixels.min(axis=1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-9), 0.0)
    return np.array([entropy, float(np.log1p(distinct) / np.log1p(len(pixels))),
                     float(((dx[:-1, :] + dy[:, :-1]) > 0.1).mean()), float(min(1.0, laplacian.mean() * 4)),
                     correlation, float(saturation.mean()), float(saturation.std()), float(grey.std() * 2),
                     float(counts.max() / len(codes))])


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA"])
def test_the_served_features_are_exactly_the_fitted_formulas(mode: str) -> None:
    rng = np.random.default_rng(5)
    images = [noise(rng), two_colours(rng), gradient(rng), Image.new("RGB", (300, 450)),
              Image.new("RGB", (300, 450), (255, 255, 255))]
    for source in images:
        image = source.convert(mode)
        assert image_features(image).tolist() == float64_features(image).tolist()


def test_an_rgb_poster_is_not_copied_before_its_thumbnail(monkeypatch: pytest.MonkeyPatch) -> None:
    """The served poster is RGB already (open_poster): a convert() would copy it whole, per request."""
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (450, 300, 3), dtype=np.uint8))
    expected = float64_features(image)

    def no_copy(*args: object, **kwargs: object) -> Image.Image:
        raise AssertionError("an RGB image was converted")

    monkeypatch.setattr(Image.Image, "convert", no_copy)
    assert image_features(image).tolist() == expected.tolist()
