"""Balancing the train split by composite genre.

A movie's *composite genre* is its genre vector read as a base-2 integer (Drama|Romance is one
composite, Drama alone another). With ``N`` movies in the original train split, a composite with
``n`` movies gets ``t`` copies in the balanced split:

- ``n > upper = floor(max_fraction * N)``: undersampled to ``upper`` distinct movies (a random subset);
- ``1 < n < lower = ceil(min_fraction * N)``: oversampled to ``lower`` (each movie ``lower // n`` times,
  ``lower % n`` random ones once more);
- ``n == 1`` (a singleton composite): ``min(lower, singleton_max_copies)`` copies. Repeating one poster
  ``lower`` times would teach the model that poster, not the composite;
- otherwise unchanged.

``upper`` is at least ``lower`` (tiny splits), so the rules never contradict. Movies repeated more than
once are listed for augmentation (the trainer should not show identical copies). Validation and test
are never resampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_GENRES = 62  # composite codes are int64


@dataclass(frozen=True)
class Bounds:
    lower: int
    upper: int


def composite_codes(labels: np.ndarray) -> np.ndarray:
    """The genre vector of each row as a base-2 integer (genre ``j`` is bit ``j``)."""
    if labels.shape[1] > MAX_GENRES:
        raise ValueError(f"at most {MAX_GENRES} genres can be balanced by composite, not {labels.shape[1]}")
    weights = np.left_shift(np.int64(1), np.arange(labels.shape[1], dtype=np.int64))
    return (
        (labels.astype(np.int64) * weights).sum(axis=1)
        if labels.shape[1]
        else np.zeros(len(labels), np.int64)
    )


def composite_bounds(train_size: int, min_fraction: float, max_fraction: float) -> Bounds:
    lower = max(1, math.ceil(min_fraction * train_size))
    upper = max(lower, math.floor(max_fraction * train_size))
    return Bounds(lower, upper)


def composite_target(size: int, bounds: Bounds, singleton_max_copies: int) -> int:
    """Copies a composite with ``size`` train movies gets in the balanced split."""
    if size == 1:
        return min(bounds.lower, singleton_max_copies)
    return min(max(size, bounds.lower), bounds.upper)


def balance_copies(codes: np.ndarray, bounds: Bounds, singleton_max_copies: int, seed: int) -> np.ndarray:
    """How many times each train movie (row of ``codes``) appears in the balanced split."""
    count = len(codes)
    if count == 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    # Random order inside each composite: rank 0 is kept first, gets the extra copy first.
    order = np.lexsort((rng.random(count), codes))
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sizes = np.diff(np.r_[starts, count])
    targets = np.array([composite_target(int(s), bounds, singleton_max_copies) for s in sizes], np.int64)
    per_row_size = np.repeat(sizes, sizes)
    per_row_target = np.repeat(targets, sizes)
    rank = np.arange(count) - np.repeat(starts, sizes)
    copies_sorted = per_row_target // per_row_size + (rank < per_row_target % per_row_size)
    copies = np.empty(count, np.int64)
    copies[order] = copies_sorted
    return copies


def composite_counts(codes: np.ndarray, copies: np.ndarray | None = None) -> dict[int, int]:
    """Examples per composite (weighted by ``copies`` when given)."""
    weights = np.ones(len(codes), np.int64) if copies is None else copies
    unique, inverse = np.unique(codes, return_inverse=True)
    totals = np.bincount(inverse, weights=weights, minlength=len(unique)).astype(np.int64)
    return {int(code): int(total) for code, total in zip(unique, totals, strict=True) if total > 0}


def bound_violations(
    codes: np.ndarray, copies: np.ndarray, bounds: Bounds, singleton_max_copies: int
) -> list[str]:
    """Composites whose balanced count breaks the rules (empty when the build is right)."""
    before = composite_counts(codes)
    after = composite_counts(codes, copies)
    problems = []
    for code, size in before.items():
        got = after.get(code, 0)
        if size == 1:
            if got != min(bounds.lower, singleton_max_copies):
                problems.append(f"singleton composite {code}: {got} copies")
        elif not bounds.lower <= got <= bounds.upper:
            problems.append(f"composite {code}: {got} outside [{bounds.lower}, {bounds.upper}]")
    return problems
