"""Metrics on hand-made arrays whose values are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.trainer import metrics

GENRES = ["A", "B", "C", "D"]
LABELS = np.array([
    [1, 0, 0, 0],
    [0, 1, 1, 0],
    [1, 1, 0, 0],
    [0, 0, 0, 0],  # a poster without a genre
], dtype=np.float32)
SCORES = np.array([
    [0.9, 0.2, 0.1, 0.0],  # top: A (true)
    [0.3, 0.6, 0.7, 0.1],  # top: C (true), then B (true)
    [0.2, 0.8, 0.1, 0.4],  # top: B (true), then D, then A (true)
    [0.6, 0.1, 0.2, 0.3],
])


def test_binary_accuracy_counts_cells() -> None:
    # Predictions > 0.5: row0 A; row1 B, C; row2 B; row3 A. Wrong cells: row2 A (missed), row3 A (extra).
    assert metrics.binary_accuracy(LABELS, SCORES) == pytest.approx(14 / 16)
    # No genre at all is right on every negative cell: 5 of the 16 cells are positive.
    assert metrics.binary_accuracy(LABELS, np.zeros_like(SCORES)) == pytest.approx(11 / 16)


def test_top_k_categorical_accuracy_is_keras_on_multi_hot() -> None:
    # Keras takes argmax(labels): A, B, A, and A for the empty row.
    # Rank of that genre: row0 A first; row1 B second; row2 A third; row3 A first.
    assert metrics.top_k_categorical_accuracy(LABELS, SCORES, 1) == pytest.approx(2 / 4)
    assert metrics.top_k_categorical_accuracy(LABELS, SCORES, 2) == pytest.approx(3 / 4)
    assert metrics.top_k_categorical_accuracy(LABELS, SCORES, 3) == pytest.approx(1.0)


def test_top_k_matches_keras_itself() -> None:
    import keras

    for k in (1, 2, 3):
        keras_values = keras.metrics.top_k_categorical_accuracy(LABELS, SCORES.astype(np.float32), k=k)
        expected = float(np.mean(np.asarray(keras_values)))
        assert metrics.top_k_categorical_accuracy(LABELS, SCORES, k) == pytest.approx(expected)


def test_ranking_metrics_per_poster() -> None:
    # top1 hit: rows 0, 1, 2 hit; row 3 has no genre -> 3/4.
    assert metrics.top1_hit(LABELS, SCORES) == pytest.approx(3 / 4)
    # precision@3: row0 1/3, row1 2/3 (C, B), row2 2/3 (B, D, A), row3 0 -> (1+2+2)/12.
    assert metrics.precision_at_k(LABELS, SCORES, 3) == pytest.approx(5 / 12)
    # recall@1 over posters with genres: row0 1/1, row1 1/2 (C), row2 1/2 (B).
    assert metrics.recall_at_k(LABELS, SCORES, 1) == pytest.approx((1 + 0.5 + 0.5) / 3)
    # recall@6 with 4 genres: everything found.
    assert metrics.recall_at_k(LABELS, SCORES, 6) == pytest.approx(1.0)
    # True share at 1, pooled: 3 true genres found at rank 1 of 5 true genres in all.
    assert metrics.true_share_at_k(LABELS, SCORES, 1) == pytest.approx(3 / 5)


def test_per_genre_auc_and_average_precision_skip_genres_without_positive() -> None:
    per_genre = metrics.per_genre_ranking(LABELS, SCORES, GENRES)
    assert set(per_genre) == {"A", "B", "C"}  # D has no positive
    # A: positives 0.9, 0.2; negatives 0.3, 0.6. Pairs won: 0.9 beats both, 0.2 beats none -> AUC 0.5.
    assert per_genre["A"]["roc_auc"] == pytest.approx(0.5)
    # A ranking: 0.9(+), 0.6(-), 0.3(-), 0.2(+): AP = (1/1 + 2/4) / 2 = 0.75.
    assert per_genre["A"]["average_precision"] == pytest.approx(0.75)
    # B: positives 0.6, 0.8 above negatives 0.2, 0.1 -> 1.0; C: 0.7 above all -> 1.0.
    assert per_genre["B"]["roc_auc"] == pytest.approx(1.0)
    assert per_genre["C"]["average_precision"] == pytest.approx(1.0)
    result = metrics.evaluate_scores(LABELS, SCORES, GENRES)
    assert result["macro_auc"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert result["macro_map"] == pytest.approx((0.75 + 1 + 1) / 3)
    assert set(metrics.METRIC_NAMES) <= set(result)


def test_thresholds_are_tuned_for_f1_and_f1_uses_them() -> None:
    thresholds = metrics.tune_thresholds(LABELS, SCORES)
    # A: cutting at 0.2 predicts all four (F1 2*2/(4+2)=0.667); at 0.9 only row0 (F1 2/3=0.667, first
    # best in score order wins: 0.9). B: 0.6 keeps both positives and nothing else (F1 1).
    assert thresholds[0] == pytest.approx(0.9)
    assert thresholds[1] == pytest.approx(0.6)
    assert thresholds[2] == pytest.approx(0.7)
    assert thresholds[3] == pytest.approx(0.5)  # no positive: default
    micro, macro = metrics.f1_scores(LABELS, SCORES, thresholds)
    # Predicted: A row0 (tp) ; B rows 1,2 (tp, tp); C row1 (tp); D none. FN: A row2. TP=4, FP=0, FN=1.
    assert micro == pytest.approx(8 / 9)
    # Per genre F1: A 2/3, B 1, C 1; D has neither positive nor prediction -> left out.
    assert macro == pytest.approx((2 / 3 + 1 + 1) / 3)


def test_baselines_no_genre_and_year_prior() -> None:
    train = np.array([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=np.float32)
    priors = {2000: metrics.genre_frequencies(train)}  # A 1.0, B 0.5, C 0, D 0
    years = np.full(len(LABELS), 2000)
    result = metrics.baselines(LABELS, years, priors, priors[2000], GENRES)
    none, prior = result["no_genre"], result["year_prior"]
    assert none["binary_accuracy"] == pytest.approx(11 / 16)
    assert none["micro_f1"] == 0.0 and none["macro_auc"] == pytest.approx(0.5)
    # The prior gives every poster the same scores: AUC 0.5 for every genre.
    assert prior["macro_auc"] == pytest.approx(0.5)
    # Its top genre is always A: hits on rows 0 and 2.
    assert prior["top1_hit"] == pytest.approx(2 / 4)


def test_shapes_are_checked_and_empty_is_nan() -> None:
    with pytest.raises(ValueError, match="same"):
        metrics.evaluate_scores(LABELS, SCORES[:, :3], GENRES)
    empty = np.zeros((0, 4))
    assert math.isnan(metrics.top1_hit(empty, empty))
