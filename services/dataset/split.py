"""Splitting movies into train/validation/test: by duplicate group, year by year, multi-label stratified.

Iterative stratification (Sechidis, Tsoumakas & Vlahavas 2011, as implemented by the
``iterative-stratification`` package) assigns the rarest genre's examples first, each to the split
that most lacks that genre, so every split keeps about the same share of every genre, even Western.

The unit is a duplicate group (:mod:`services.dataset.duplicates`), never a single movie, so copies of a
poster land in one split. Each release year is stratified on its own: a movie's split is then the same
in every target (year, decade, rolling window) of the build, and every window, a union of years, is
itself stratified. A group whose members span years is split with the year of its first member.
"""

from __future__ import annotations

import numpy as np
from iterstrat.ml_stratifiers import IterativeStratification

from shared.dataset_params import SPLITS

TRAIN, VALIDATION, TEST = 0, 1, 2


def split_fractions(val_fraction: float, test_fraction: float) -> np.ndarray:
    return np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])


def stratify(labels: np.ndarray, fractions: np.ndarray, seed: int) -> np.ndarray:
    """Split index (0 train, 1 validation, 2 test) of each row of a multi-hot ``labels`` matrix."""
    count = labels.shape[0]
    if count == 0:
        return np.zeros(0, np.int64)
    rng = np.random.RandomState(seed)
    # Shuffle first (as the package's ShuffleSplit does) so ties do not follow database order.
    order = rng.permutation(count)
    folds = IterativeStratification(
        labels=labels[order].astype(bool), r=fractions.astype(float), random_state=rng
    )
    result = np.empty(count, np.int64)
    result[order] = folds
    return result


def assign_splits(
    groups: np.ndarray,
    years: np.ndarray,
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> np.ndarray:
    """Split index of every movie: all members of a duplicate group share the split of the group."""
    count = len(groups)
    if count == 0:
        return np.zeros(0, np.int64)
    fractions = split_fractions(val_fraction, test_fraction)
    group_count = int(groups.max()) + 1
    # A group's labels: every genre of any member; its year: the year of its first member.
    group_labels = np.zeros((group_count, labels.shape[1]), dtype=bool)
    np.logical_or.at(group_labels, groups, labels.astype(bool))
    first_member = np.full(group_count, count, np.int64)
    np.minimum.at(first_member, groups, np.arange(count))
    group_years = years[first_member]
    group_split = np.zeros(group_count, np.int64)
    for year in np.unique(group_years):
        members = np.flatnonzero(group_years == year)
        # One seed per year, so adding a year to a build does not reshuffle the others.
        group_split[members] = stratify(group_labels[members], fractions, seed * 100_003 + int(year))
    return group_split[groups]


def split_names(split_index: np.ndarray) -> list[str]:
    return [SPLITS[int(i)] for i in split_index]
