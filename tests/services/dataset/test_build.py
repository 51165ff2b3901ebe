"""Building dataset versions from movies imported into the database, and reading them back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from services.crawler.importer import import_folder
from services.dataset.balance import bound_violations, composite_bounds
from services.dataset.pipeline import build_dataset
from services.dataset.report import load_report, load_report_png
from shared.dataset_manifest import load_manifest
from shared.dataset_params import SPLITS, BuildParams
from shared.dataset_reader import load_arrays, split_dataset
from shared.db import DatasetVersion, Movie, session_scope, upgrade_database
from shared.images import hamming_distance
from shared.storage import ObjectStore, object_store_from_settings
from tests.conftest import write_poster_folder

PARAMS = {"min_posters": 10, "image_size": 16, "min_genre_posters": 2, "shard_size": 8}


def import_collection(folder: Path) -> ObjectStore:
    upgrade_database()
    store = object_store_from_settings()
    report = import_folder(folder, store)
    assert not report.errors
    return store


def movies_by_id() -> dict[int, Movie]:
    with session_scope() as session:
        return {m.id: m for m in session.scalars(select(Movie)).all()}


def assert_leak_free(manifest: dict[str, Any], movies: dict[int, Movie]) -> None:
    """No poster (same sha256 or perceptual hash within 4 bits) in two splits of a target."""
    for target in manifest["targets"].values():
        split_of: dict[int, str] = {}
        for split in SPLITS:
            for movie_id in target["splits"][split]:
                assert movie_id not in split_of
                split_of[movie_id] = split
        ids = sorted(split_of)
        for i, first in enumerate(ids):
            for second in ids[i + 1 :]:
                a, b = movies[first], movies[second]
                same = (
                    a.poster_sha256 == b.poster_sha256
                    or hamming_distance(a.poster_phash or "", b.poster_phash or "") <= 4
                )
                if same:
                    assert split_of[first] == split_of[second], (first, second)


def assert_balanced(manifest: dict[str, Any], movies: dict[int, Movie]) -> None:
    genres = manifest["genres"]
    params = manifest["params"]
    for target in manifest["targets"].values():
        train = target["splits"]["train"]
        code = {m: sum(1 << genres.index(g) for g in movies[m].genre_names if g in genres) for m in train}
        copies = Counter(target["train_balanced"])
        assert set(copies) <= set(train)
        codes = np.array([code[m] for m in train], dtype=np.int64)
        bounds = composite_bounds(
            len(train), params["min_composite_fraction"], params["max_composite_fraction"]
        )
        assert (
            bound_violations(
                codes, np.array([copies[m] for m in train]), bounds, params["singleton_max_copies"]
            )
            == []
        )
        assert sorted(target["augment"]) == sorted(m for m, n in copies.items() if n > 1)


def test_build_is_leak_free_balanced_reproducible_and_readable(
    settings: Any, collection: Callable[..., Path]
) -> None:
    store = import_collection(collection())
    movies = movies_by_id()
    exact = [m for m in movies.values() if m.source_id in ("tt2000000", "tt2000017")]
    near = [m for m in movies.values() if m.source_id in ("tt2000002", "tt2000003")]
    assert exact[0].poster_sha256 == exact[1].poster_sha256 and exact[0].year != exact[1].year
    assert near[0].poster_sha256 != near[1].poster_sha256
    assert hamming_distance(near[0].poster_phash or "", near[1].poster_phash or "") <= 4

    params = BuildParams.from_mapping({"years": "2000-2003", "window": "year", **PARAMS})
    result = build_dataset(params, store, decode_workers=2)
    assert not result.reused
    manifest = load_manifest(store, result.dataset_id)
    assert manifest == result.manifest
    assert sorted(manifest["targets"]) == ["2000", "2001", "2002", "2003"]
    assert manifest["genres"] == sorted({g for m in movies.values() for g in m.genre_names})
    assert manifest["duplicates"] == {"groups": 2, "movies": 4}
    assert_leak_free(manifest, movies)
    assert_balanced(manifest, movies)
    for name, target in manifest["targets"].items():
        assert {movies[m].year for s in SPLITS for m in target["splits"][s]} == {int(name)}
        assert sum(len(target["splits"][s]) for s in SPLITS) == 16
        assert target["counts"]["genres"]["train"] == {
            g: sum(g in movies[m].genre_names for m in target["splits"]["train"]) for g in manifest["genres"]
        }
    with session_scope() as session:
        version = session.get(DatasetVersion, result.dataset_id)
        assert version is not None and version.content_hash == manifest["content_hash"]
        assert version.manifest_key == f"datasets/{result.dataset_id}/manifest.json"

    # The report: JSON and a PNG chart.
    report = load_report(store, result.dataset_id)
    assert report["posters_per_year"] == {"2000": 16, "2001": 16, "2002": 16, "2003": 16}
    assert (
        report["targets"]["2000"]["genres_after"]
        == manifest["targets"]["2000"]["counts"]["genres"]["train_balanced"]
    )
    assert sum(report["targets"]["2001"]["composites_after"].values()) == len(
        manifest["targets"]["2001"]["train_balanced"]
    )
    assert load_report_png(store, result.dataset_id).startswith(b"\x89PNG\r\n\x1a\n")

    # The reader: arrays equal what poster_pixels gives, labels equal the database's genres.
    from shared.images import poster_pixels

    pixels, labels, movie_ids, years = load_arrays(store, manifest, "2001", "test")
    assert pixels.shape == (len(manifest["targets"]["2001"]["splits"]["test"]), 16, 16, 3)
    assert sorted(movie_ids.tolist()) == sorted(manifest["targets"]["2001"]["splits"]["test"])
    for row, movie_id in enumerate(movie_ids.tolist()):
        movie = movies[movie_id]
        assert labels[row].tolist() == [float(g in movie.genre_names) for g in manifest["genres"]]
        assert years[row] == movie.year == 2001
        assert np.array_equal(pixels[row], poster_pixels(store.get(movie.poster_key or ""), 16))
    batches = list(
        split_dataset(
            store,
            manifest,
            "2001",
            "train",
            batch_size=4,
            shuffle=True,
            balanced=True,
            with_year=True,
            seed=1,
        )
    )
    (first_pixels, first_years), first_labels = batches[0]
    assert first_pixels.dtype.name == "float32" and tuple(first_pixels.shape[1:]) == (16, 16, 3)
    assert tuple(first_labels.shape[1:]) == (len(manifest["genres"]),)
    assert set(np.concatenate([y.numpy() for (_, y), _ in batches]).tolist()) == {2001}
    assert sum(int(lab.shape[0]) for _, lab in batches) == len(manifest["targets"]["2001"]["train_balanced"])
    plain = list(split_dataset(store, manifest, "2001", "train", batch_size=64))
    assert sum(int(p.shape[0]) for p, _ in plain) == len(manifest["targets"]["2001"]["splits"]["train"])

    # Same inputs and seed: same hash, the version is reused; another seed is another version.
    again = build_dataset(params, store)
    assert again.reused and again.dataset_id == result.dataset_id
    other = build_dataset(BuildParams.from_mapping({"years": "2000-2003", **PARAMS, "seed": 1}), store)
    assert other.dataset_id != result.dataset_id
    assert load_manifest(store, other.dataset_id)["content_hash"] != manifest["content_hash"]


@pytest.mark.parametrize(
    "window, targets",
    [
        ("decade", {"2000s": list(range(2000, 2010))}),
        ("rolling", {"2006": list(range(2001, 2011)), "2007": list(range(2002, 2012))}),
    ],
)
def test_windows_select_the_right_years(
    settings: Any, collection: Callable[..., Path], window: str, targets: dict[str, list[int]]
) -> None:
    store = import_collection(collection(years=range(1999, 2012), per_year=4))
    movies = movies_by_id()
    years = "2006-2007" if window == "rolling" else "2003-2005"
    result = build_dataset(BuildParams.from_mapping({"years": years, "window": window, **PARAMS}), store)
    manifest = result.manifest
    assert {name: t["years"] for name, t in manifest["targets"].items()} == targets
    for name, target in manifest["targets"].items():
        selected = sorted(m for s in SPLITS for m in target["splits"][s])
        expected = sorted(m.id for m in movies.values() if m.year in targets[name])
        assert selected == expected
    assert_leak_free(manifest, movies)
    assert_balanced(manifest, movies)


def test_small_years_are_reported_and_skipped(settings: Any, collection: Callable[..., Path]) -> None:
    store = import_collection(collection(years=range(2000, 2002), per_year=6))
    params = BuildParams.from_mapping({"years": "2000-2001", "window": "decade", **PARAMS})
    result = build_dataset(params, store)
    assert list(result.manifest["targets"]) == ["2000s"]
    year_params = BuildParams.from_mapping({"years": "2000-2001", **PARAMS, "min_posters": 6})
    assert sorted(build_dataset(year_params, store).manifest["targets"]) == ["2000", "2001"]
    from shared.dataset_params import DatasetInputError

    with pytest.raises(DatasetInputError, match="fewer than --min-posters 10"):
        build_dataset(BuildParams.from_mapping({"years": "2000-2001", **PARAMS}), store)


def test_rare_genres_leave_the_vocabulary(settings: Any, tmp_path: Path) -> None:
    rows = [(f"tt30000{i:02d}", 2000, f"M{i}", "Drama" if i % 2 else "Comedy") for i in range(20)]
    rows += [
        ("tt3000020", 2000, "W1", "Drama|Western"),
        ("tt3000021", 2000, "W2", "Comedy|Western"),
        ("tt3000022", 2000, "W3", "Western"),
    ]
    store = import_collection(write_poster_folder(tmp_path / "rare", rows))
    params = BuildParams.from_mapping({"years": "2000", **PARAMS, "min_genre_posters": 4})
    manifest = build_dataset(params, store).manifest
    assert manifest["genres"] == ["Comedy", "Drama"]
    assert manifest["dropped_genres"] == {"Western": 3}
    # The movie whose only genre left the vocabulary is left out (listed), the others keep their other genre.
    only_western = [m.id for m in movies_by_id().values() if m.source_id == "tt3000022"]
    assert manifest["excluded_movies"] == only_western
    selected = {m for s in SPLITS for m in manifest["targets"]["2000"]["splits"][s]}
    assert len(selected) == 22 and only_western[0] not in selected


def test_build_in_stack_mode(stack_settings: Any, collection: Callable[..., Path]) -> None:
    store = import_collection(collection(years=range(2000, 2002), per_year=12))
    result = build_dataset(BuildParams.from_mapping({"years": "2000-2001", **PARAMS}), store)
    manifest = load_manifest(store, result.dataset_id)
    assert_leak_free(manifest, movies_by_id())
    keys = set(store.list(f"datasets/{result.dataset_id}/"))
    assert {
        f"datasets/{result.dataset_id}/{name}" for name in ("manifest.json", "report.json", "report.png")
    } <= keys
    pixels, labels, _, _ = load_arrays(store, manifest, "2000", "train")
    assert pixels.shape[0] == labels.shape[0] == len(manifest["targets"]["2000"]["splits"]["train"])
    assert build_dataset(BuildParams.from_mapping({"years": "2000-2001", **PARAMS}), store).reused
