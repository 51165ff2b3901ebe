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
