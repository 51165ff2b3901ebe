"""Refit the poster-likeness coefficients (``shared/posterness.json``), reproducibly.

    python -m shared.posterness_fit --data ../shared/data/posters-imdb --posters 1500 --seed 0

Positives are real posters of the folder (a seeded sample); negatives are generated: uniform noise,
flat two-colour images, linear and radial gradients, and crops of the photos that ship with
scikit-image (``skimage.data``, no download). Each kind is split 70/30 into fit and validation, the
photos by source photo so that no photo's crops are on both sides. The model is an L2-regularised
logistic regression fitted by Newton's method (NumPy only); its threshold keeps at most
``--max-false-warning`` of the *fit* posters below it. Precision and recall of the warning ("not a
poster") on the validation split, overall and per kind, go into the JSON next to the coefficients and
are printed (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.posterness import COEFFICIENTS, MAX_ASPECT, MIN_ASPECT, PosterModel, image_features

# skimage.data images bundled with the wheel (the others need pooch and a download).
PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
          "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina",
          "rocket", "text", "checkerboard", "microaneurysms")
CROPS_PER_PHOTO = 12
GENERATED_PER_KIND = 150


def _size(rng: np.random.Generator) -> tuple[int, int]:
    """Poster-shaped half of the time (the score must not rely on the shape), else anything."""
    if rng.random() < 0.5:
        width = int(rng.integers(150, 700))
        return width, int(width * rng.uniform(1.4, 1.6))
    return int(rng.integers(100, 1000)), int(rng.integers(100, 1000))


def noise(rng: np.random.Generator) -> Image.Image:
    width, height = _size(rng)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def two_colours(rng: np.random.Generator) -> Image.Image:
    width, height = _size(rng)
    first, second = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ys, xs = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, np.pi)
    side = ((xs - width * rng.uniform(0.2, 0.8)) * np.cos(angle)
            + (ys - height * rng.uniform(0.2, 0.8)) * np.sin(angle))
    return Image.fromarray(np.where((side > 0)[..., None], first, second).astype(np.uint8))


def gradient(rng: np.random.Generator) -> Image.Image:
    width, height = _size(rng)
    first, second = rng.integers(0, 256, 3).astype(float), rng.integers(0, 256, 3).astype(float)
    ys, xs = np.mgrid[0:height, 0:width]
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = xs / width * np.cos(angle) + ys / height * np.sin(angle)
    else:
        t = np.hypot(xs / width - rng.random(), ys / height - rng.random())
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-9)
    return Image.fromarray((first + (second - first) * t[..., None]).astype(np.uint8))


def photo_crops(rng: np.random.Generator) -> Iterator[tuple[str, Image.Image]]:
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("the fitter's photos come with scikit-image: pip install 'scikit-image>=0.24' "
                         "(in the test extras)") from None

    for name in PHOTOS:
        try:
            array = np.asarray(getattr(skimage.data, name)())
        except Exception as exc:  # noqa: BLE001 - a photo that needs a download is skipped, and said
            print(f"skipping skimage.data.{name}: {exc}", file=sys.stderr)
            continue
        if array.dtype != np.uint8:
            array = (array.astype(float) / max(float(array.max()), 1e-9) * 255).astype(np.uint8)
        photo = Image.fromarray(array[..., :3] if array.ndim == 3 else array).convert("RGB")
        yield name, photo  # the whole photo, then crops of every shape
        for _ in range(CROPS_PER_PHOTO - 1):
            width = int(photo.width * rng.uniform(0.3, 1.0))
            height = min(photo.height, int(width * rng.uniform(0.7, 1.6)))
            left = int(rng.integers(0, photo.width - width + 1))
            top = int(rng.integers(0, photo.height - height + 1))
            yield name, photo.crop((left, top, left + width, top + height))


def poster_images(folder: Path, count: int, rng: np.random.Generator) -> Iterator[tuple[str, Image.Image]]:
    with open(folder / "labels.csv", newline="") as handle:
        ids = sorted(row["imdb_id"] for row in csv.DictReader(handle))
    for imdb_id in rng.permutation(ids)[:count]:
        path = folder / "images" / f"{imdb_id}.jpg"
        if path.is_file():
            with Image.open(path) as image:
                yield str(imdb_id), image.convert("RGB")


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (the bias is not regularised)."""
    design = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-design @ theta))
        gradient_ = design.T @ (p - y) + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty) + 1e-9 * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient_)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta[:-1], float(theta[-1])


def _rates(flagged: np.ndarray, not_poster: np.ndarray) -> dict[str, float]:
    true_positive = float((flagged & not_poster).sum())
    return {"precision": true_positive / max(1.0, float(flagged.sum())),
            "recall": true_positive / max(1.0, float(not_poster.sum())),
            "false_warning_rate_on_posters":
                float((flagged & ~not_poster).sum()) / max(1.0, float((~not_poster).sum()))}


def fit(data: Path, posters: int, seed: int, max_false_warning: float) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, np.ndarray, float]] = []  # (kind, group, features, aspect)
    for imdb_id, image in poster_images(data, posters, rng):
        rows.append(("poster", imdb_id, image_features(image), image.width / image.height))
    for kind, make in (("noise", noise), ("two_colours", two_colours), ("gradient", gradient)):
        for index in range(GENERATED_PER_KIND):
            image = make(rng)
            rows.append((kind, f"{kind}-{index}", image_features(image), image.width / image.height))
    for name, image in photo_crops(rng):
        rows.append(("photo", name, image_features(image), image.width / image.height))

    # A group (a poster, a generated image, a source photo) goes wholly to fit or to validation.
    groups = sorted({(kind, group) for kind, group, _, _ in rows})
    validation_groups = {groups[i] for i in rng.permutation(len(groups))[: int(0.3 * len(groups))]}
    kinds = np.array([kind for kind, _, _, _ in rows])
    features = np.stack([feature for _, _, feature, _ in rows])
    aspects = np.array([aspect for _, _, _, aspect in rows])
    is_validation = np.array([(kind, group) in validation_groups for kind, group, _, _ in rows])
    not_poster = kinds != "poster"

    fit_rows = ~is_validation
    mean, scale = features[fit_rows].mean(axis=0), features[fit_rows].std(axis=0) + 1e-6
    # Weigh the classes equally, whatever the sample sizes.
    weights, bias = fit_logistic((features[fit_rows] - mean) / scale, (~not_poster[fit_rows]).astype(float))
    model = PosterModel(mean, scale, weights, bias, 0.5)
    scores = model.score(features)
    fit_poster_scores = np.sort(scores[fit_rows & ~not_poster])
    threshold = min(0.5, float(fit_poster_scores[int(np.floor(max_false_warning * len(fit_poster_scores)))]))
    model = PosterModel(mean, scale, weights, bias, threshold)

    score_flag = scores < threshold
    aspect_flag = (aspects < MIN_ASPECT) | (aspects > MAX_ASPECT)
    validation: dict[str, Any] = {
        "examples": {kind: int(((kinds == kind) & is_validation).sum()) for kind in sorted(set(kinds))},
        "score_only": _rates(score_flag[is_validation], not_poster[is_validation]),
        "with_aspect": _rates((score_flag | aspect_flag)[is_validation], not_poster[is_validation]),
        "recall_by_kind": {kind: float((score_flag | aspect_flag)[is_validation & (kinds == kind)].mean())
                           for kind in sorted(set(kinds)) if kind != "poster"},
    }
    return model.as_json({"fitted_on": {"data": data.name, "posters": posters, "seed": seed,
                                        "max_false_warning": max_false_warning,
                                        "fit_examples": int(fit_rows.sum())},
                          "validation": validation})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.posterness_fit",
                                     description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/posters-imdb"),
                        help="a poster folder: labels.csv and images/<imdb_id>.jpg")
    parser.add_argument("--posters", type=int, default=1500, help="posters sampled from the folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-false-warning", type=float, default=0.01,
                        help="the share of fit posters allowed below the threshold")
    parser.add_argument("--out", type=Path, default=COEFFICIENTS)
    args = parser.parse_args(argv)
    if not (args.data / "labels.csv").is_file():
        parser.error(f"{args.data} has no labels.csv")
    result = fit(args.data, args.posters, args.seed, args.max_false_warning)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["validation"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
