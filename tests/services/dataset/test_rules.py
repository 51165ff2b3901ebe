"""The pure rules of a build: windows, parameters, duplicate groups, splitting and balancing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dataset.balance import (
    balance_copies,
    bound_violations,
    composite_bounds,
    composite_codes,
    composite_counts,
)
from services.dataset.duplicates import group_duplicates
from services.dataset.split import assign_splits
from shared.dataset_params import BuildParams, DatasetInputError, window_targets


def test_windows_give_each_target_its_years() -> None:
    assert window_targets("year", range(2000, 2003)) == {"2000": [2000], "2001": [2001], "2002": [2002]}
    assert window_targets("decade", range(1998, 2012)) == {
        "1990s": list(range(1990, 2000)),
        "2000s": list(range(2000, 2010)),
        "2010s": list(range(2010, 2020)),
    }
    rolling = window_targets("rolling", range(2005, 2007))
    assert rolling == {"2005": list(range(2000, 2010)), "2006": list(range(2001, 2011))}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"years": "2019-2000"}, "empty year range"),
        ({"years": "3000-3001"}, "unknown years"),
        ({"years": "20x0"}, "years must look like"),
        ({"years": "2000", "window": "week"}, "window must be one of"),
        ({"years": "2000", "val_fraction": 0.6, "test_fraction": 0.5}, "sum to less than 1"),
        ({"years": "2000", "min_composite_fraction": 0.05}, "composite bounds"),
        ({"years": "2000", "seed": "abc"}, "seed must be a number"),
        ({"years": "2000", "colour": "red"}, "unknown parameter"),
        ({}, "years are required"),
    ],
)
def test_bad_parameters_are_refused_with_the_reason(values: dict[str, object], message: str) -> None:
    with pytest.raises(DatasetInputError, match=message):
        BuildParams.from_mapping(values)


def test_parameters_from_loose_input() -> None:
    params = BuildParams.from_mapping(
        {"years": "2000-2019", "window": "rolling", "seed": "3", "image_size": 64}
    )
    assert (params.first_year, params.last_year, params.window, params.seed) == (2000, 2019, "rolling", 3)
    assert BuildParams.from_mapping(params.as_dict()) == params


def test_duplicate_groups_join_exact_and_near_copies_transitively() -> None:
    sha = ["a", "b", "a", "c", "d", "e", "f"]
    phash = [
        "0000000000000000",
        "ffffffffffffffff",
        None,
        "000000000000000f",  # 4 bits from movie 0
        "00000000000000ff",  # 4 bits from movie 3, 8 from movie 0: joined through movie 3
        "f0f0f0f0f0f0f0f0",
        "f0f0f0f0f0f0f0e1",
    ]  # 2 bits apart
    groups = group_duplicates(sha, phash, max_distance=4)
    assert groups.tolist() == [0, 1, 0, 0, 0, 2, 2]
    # Five bits apart is another poster.
    assert group_duplicates(["x", "y"], ["0000000000000000", "000000000000001f"], 4).tolist() == [0, 1]
    # Distance 0 only groups identical hashes.
    assert group_duplicates(
        ["x", "y", "z"], ["00000000000000ff", "00000000000000fe", "00000000000000ff"], 0
    ).tolist() == [0, 1, 0]


def test_near_pairs_match_brute_force_on_random_hashes() -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, 60, dtype=np.int64).astype(np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (60, 5)).astype(np.uint64)
    values = np.concatenate(
        [
            base,
            base ^ flips[:, 0] ^ flips[:, 1],
            base ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2] ^ flips[:, 3] ^ flips[:, 4],
        ]
    )
    hashes = [f"{int(v):016x}" for v in values]
    groups = group_duplicates([str(i) for i in range(len(hashes))], hashes, 4)
    # Brute force: connected components of the "within 4 bits" relation.
    parent = list(range(len(values)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            if bin(int(values[i]) ^ int(values[j])).count("1") <= 4:
                parent[root(j)] = root(i)
    for i in range(len(values)):
        for j in range(len(values)):
            assert (groups[i] == groups[j]) == (root(i) == root(j))


def random_labels(rng: np.random.Generator, count: int, genres: int = 8) -> np.ndarray:
    probabilities = np.linspace(0.03, 0.5, genres)
    labels = (rng.random((count, genres)) < probabilities).astype(np.uint8)
    labels[labels.sum(axis=1) == 0, -1] = 1
    return labels


@pytest.mark.parametrize("count, seed", [(20, 0), (90, 1), (400, 2), (3000, 3)])
def test_balancing_bounds_hold(count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    codes = composite_codes(random_labels(rng, count))
    bounds = composite_bounds(count, 0.01, 0.04)
    copies = balance_copies(codes, bounds, singleton_max_copies=3, seed=seed)
    assert bound_violations(codes, copies, bounds, 3) == []
    after = composite_counts(codes, copies)
    for code, size in composite_counts(codes).items():
        if size == 1:
            assert after[code] == min(bounds.lower, 3)
        else:
            assert bounds.lower <= after[code] <= bounds.upper
            if size > bounds.upper:  # undersampled: distinct movies, none repeated
                assert copies[codes == code].max() == 1
    assert (copies >= 0).all()
    assert np.array_equal(copies, balance_copies(codes, bounds, 3, seed=seed))


def test_balancing_over_and_undersamples_to_the_bounds() -> None:
    # 200 train movies: bounds [2, 8]. A: 100 movies, B: 8, C: 3, D: 1.
    codes = np.array([1] * 100 + [2] * 8 + [3] * 3 + [4], dtype=np.int64)
    bounds = composite_bounds(200, 0.01, 0.04)
    assert (bounds.lower, bounds.upper) == (2, 8)
    copies = balance_copies(codes, bounds, singleton_max_copies=1, seed=0)
    assert composite_counts(codes, copies) == {1: 8, 2: 8, 3: 3, 4: 1}
    bounds = composite_bounds(1000, 0.01, 0.04)  # [10, 40]
    copies = balance_copies(codes, bounds, singleton_max_copies=3, seed=0)
    assert composite_counts(codes, copies) == {1: 40, 2: 10, 3: 10, 4: 3}
    assert sorted(copies[codes == 3].tolist()) == [3, 3, 4]  # 10 copies of 3 movies, as evenly as possible


def test_composite_code_is_the_genre_vector_in_base_2() -> None:
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=np.uint8)
    assert composite_codes(labels).tolist() == [5, 2, 7]


def test_splits_follow_fractions_keep_groups_whole_and_repeat() -> None:
    rng = np.random.default_rng(5)
    count = 3000
    labels = random_labels(rng, count)
    years = rng.integers(2000, 2004, count)
    groups = np.arange(count)
    groups[1::10] = groups[0::10][: len(groups[1::10])]  # every tenth movie has a copy
    groups = np.unique(groups, return_inverse=True)[1]
    splits = assign_splits(groups, years, labels, 0.15, 0.15, seed=7)
    for group in np.unique(groups):
        assert len(set(splits[groups == group].tolist())) == 1
    shares = np.bincount(splits, minlength=3) / count
    assert np.allclose(shares, [0.7, 0.15, 0.15], atol=0.02)
    for year in range(2000, 2004):  # every year is stratified, Western-like rare genre included
        in_year = years == year
        for split in range(3):
            rows = in_year & (splits == split)
            assert np.allclose(labels[rows].mean(axis=0), labels[in_year].mean(axis=0), atol=0.05)
    assert np.array_equal(splits, assign_splits(groups, years, labels, 0.15, 0.15, seed=7))
    assert not np.array_equal(splits, assign_splits(groups, years, labels, 0.15, 0.15, seed=8))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=25),
    min_fraction=st.floats(min_value=0.001, max_value=0.2),
    spread=st.floats(min_value=1.0, max_value=8.0),
    singleton_max_copies=st.integers(min_value=1, max_value=5),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_balancing_bounds_hold_for_any_composite_sizes(
    sizes: list[int], min_fraction: float, spread: float, singleton_max_copies: int, seed: int
) -> None:
    codes = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    np.random.default_rng(seed).shuffle(codes)
    bounds = composite_bounds(len(codes), min_fraction, min(1.0, min_fraction * spread))
    copies = balance_copies(codes, bounds, singleton_max_copies, seed)
    assert bound_violations(codes, copies, bounds, singleton_max_copies) == []
    # Undersampling keeps distinct movies; oversampling spreads copies evenly (differ by at most one).
    for code, size in enumerate(sizes):
        mine = copies[codes == code]
        assert mine.max() - mine.min() <= 1
        if size > bounds.upper:
            assert mine.max() == 1
