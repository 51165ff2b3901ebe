"""Honest multi-label metrics for genre scores, as pure numpy/scikit-learn functions.

``labels`` is a multi-hot float/int array ``[N, G]``, ``scores`` a float array ``[N, G]`` of sigmoid
scores. Binary accuracy is reported because the method reports it, but it is nearly meaningless here:
predicting no genre at all already scores about 0.9. The ranking metrics (macro mAP, macro ROC-AUC),
F1 at thresholds tuned on validation and the top-k metrics are the ones to read, always next to the
two baselines computed on the same split: no genre at all, and the year's genre frequencies in train.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

DEFAULT_THRESHOLD = 0.5
METRIC_NAMES: tuple[str, ...] = (
    "macro_map", "macro_auc", "micro_f1", "macro_f1", "recall_at_6", "precision_at_3", "top1_hit",
    "binary_accuracy", "top1_accuracy", "top3_accuracy", "top5_accuracy", "true_share_at_6",
)


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be the same [N, G] shape")
    return labels > 0.5, scores


def binary_accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Share of (poster, genre) cells where ``score > threshold`` equals the label (as Keras)."""
    truth, scores = _check(labels, scores)
    if truth.size == 0:
        return float("nan")
    return float(np.mean((scores > threshold) == truth))


def top_k_categorical_accuracy(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """As ``keras.metrics.top_k_categorical_accuracy`` on multi-hot labels.

    Keras takes ``argmax(labels)`` (the *first* true genre; genre 0 for a poster without genres) and
    counts a hit when that genre is among the ``k`` highest scores, ties at the boundary included
    (``tf.math.in_top_k``).
    """
    truth, scores = _check(labels, scores)
    if len(truth) == 0:
        return float("nan")
    first_true = np.argmax(truth, axis=1)
    target_scores = scores[np.arange(len(scores)), first_true]
    higher = np.sum(scores > target_scores[:, None], axis=1)
    return float(np.mean(higher < k))


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row (stable: lower genre index first on ties)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, : min(k, scores.shape[1])]


def _hits_at_k(truth: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    top = _top_k(scores, k)
    return np.take_along_axis(truth, top, axis=1).sum(axis=1)


def precision_at_k(labels: np.ndarray, scores: np.ndarray, k: int = 3) -> float:
    """Mean over posters of (true genres among the top ``k``) / ``k``."""
    truth, scores = _check(labels, scores)
    if len(truth) == 0:
        return float("nan")
    return float(np.mean(_hits_at_k(truth, scores, k) / k))


def recall_at_k(labels: np.ndarray, scores: np.ndarray, k: int = 6) -> float:
    """Mean over posters with at least one genre of (true genres among the top ``k``) / (true genres)."""
    truth, scores = _check(labels, scores)
    counts = truth.sum(axis=1)
    has = counts > 0
    if not has.any():
        return float("nan")
    return float(np.mean(_hits_at_k(truth[has], scores[has], k) / counts[has]))


def top1_hit(labels: np.ndarray, scores: np.ndarray) -> float:
    """Share of posters whose highest-scored genre is one of its genres."""
    truth, scores = _check(labels, scores)
    if len(truth) == 0:
        return float("nan")
    return float(np.mean(_hits_at_k(truth, scores, 1) > 0))


def true_share_at_k(labels: np.ndarray, scores: np.ndarray, k: int = 6) -> float:
    """The method's proposed metric: of all true genres of all posters, the share found in the top ``k``.

    Pooled over posters (a poster with four genres weighs four times a poster with one), unlike
    :func:`recall_at_k`, which averages per poster.
    """
    truth, scores = _check(labels, scores)
    total = truth.sum()
    if total == 0:
        return float("nan")
    return float(_hits_at_k(truth, scores, k).sum() / total)


def per_genre_ranking(labels: np.ndarray, scores: np.ndarray, genres: list[str]
                      ) -> dict[str, dict[str, float]]:
    """ROC-AUC and average precision of each genre; genres without a positive (AUC: or a negative)
    in ``labels`` are left out, since neither is defined for them."""
    truth, scores = _check(labels, scores)
    if len(genres) != truth.shape[1]:
        raise ValueError(f"{len(genres)} genre names for {truth.shape[1]} columns")
    result: dict[str, dict[str, float]] = {}
    for index, genre in enumerate(genres):
        positives = int(truth[:, index].sum())
        if positives == 0:
            continue
        entry = {"positives": float(positives),
                 "average_precision": float(average_precision_score(truth[:, index], scores[:, index]))}
        if positives < len(truth):
            entry["roc_auc"] = float(roc_auc_score(truth[:, index], scores[:, index]))
        result[genre] = entry
    return result


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def tune_thresholds(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-genre thresholds that maximise F1 on (validation) ``labels``; 0.5 for a genre without positives.

    A candidate threshold ``t`` predicts ``score >= t``; the candidates are the genre's distinct scores.
    """
    truth, scores = _check(labels, scores)
    thresholds = np.full(truth.shape[1], DEFAULT_THRESHOLD)
    for genre in range(truth.shape[1]):
        column, positive = scores[:, genre], truth[:, genre]
        if not positive.any():
            continue
        order = np.argsort(-column, kind="stable")
        sorted_scores, sorted_truth = column[order], positive[order]
        true_positives = np.cumsum(sorted_truth)
        predicted = np.arange(1, len(column) + 1)
        # Only the last position of a run of equal scores is a real cut.
        last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
        f1 = 2 * true_positives / (predicted + positive.sum())
        f1 = np.where(last_of_run, f1, -1.0)
        thresholds[genre] = float(sorted_scores[int(np.argmax(f1))])
    return thresholds


def f1_scores(labels: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """Micro and macro F1 of ``score >= threshold`` per genre (macro over genres with a positive
    or a prediction; a genre with neither has no defined F1)."""
    truth, scores = _check(labels, scores)
    predicted = scores >= np.asarray(thresholds)[None, :]
    tp = (predicted & truth).sum(axis=0).astype(np.float64)
    fp = (predicted & ~truth).sum(axis=0).astype(np.float64)
    fn = (~predicted & truth).sum(axis=0).astype(np.float64)
    denominator = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / denominator) if denominator else 0.0
    defined = (2 * tp + fp + fn) > 0
    macro = float(np.mean(2 * tp[defined] / (2 * tp + fp + fn)[defined])) if defined.any() else 0.0
    return micro, macro


def evaluate_scores(labels: np.ndarray, scores: np.ndarray, genres: list[str],
                    thresholds: np.ndarray | None = None, with_per_genre: bool = True) -> dict[str, Any]:
    """Every metric of one split. ``thresholds`` come from validation (default 0.5 everywhere)."""
    truth, scores = _check(labels, scores)
    if thresholds is None:
        thresholds = np.full(truth.shape[1], DEFAULT_THRESHOLD)
    ranking = per_genre_ranking(truth, scores, genres)
    micro_f1, macro_f1 = f1_scores(truth, scores, thresholds)
    result: dict[str, Any] = {
        "examples": int(len(truth)),
        "macro_map": _mean([entry["average_precision"] for entry in ranking.values()]),
        "macro_auc": _mean([entry["roc_auc"] for entry in ranking.values() if "roc_auc" in entry]),
        "micro_f1": micro_f1,
        "macro_f1": macro_f1,
        "recall_at_6": recall_at_k(truth, scores, 6),
        "precision_at_3": precision_at_k(truth, scores, 3),
        "top1_hit": top1_hit(truth, scores),
        "binary_accuracy": binary_accuracy(truth, scores),
        "top1_accuracy": top_k_categorical_accuracy(truth, scores, 1),
        "top3_accuracy": top_k_categorical_accuracy(truth, scores, 3),
        "top5_accuracy": top_k_categorical_accuracy(truth, scores, 5),
        "true_share_at_6": true_share_at_k(truth, scores, 6),
    }
    if with_per_genre:
        result["per_genre"] = ranking
    return result


def genre_frequencies(labels: np.ndarray) -> np.ndarray:
    """Share of posters having each genre (the year-prior baseline's scores)."""
    labels = np.asarray(labels, dtype=np.float64)
    if len(labels) == 0:
        return np.zeros(labels.shape[1] if labels.ndim == 2 else 0)
    return labels.mean(axis=0)


def no_genre_scores(count: int, genres: int) -> np.ndarray:
    return np.zeros((count, genres))


def year_prior_scores(years: np.ndarray, priors: dict[int, np.ndarray], fallback: np.ndarray) -> np.ndarray:
    """Each poster scored with its year's genre frequencies in train (``fallback`` for unseen years)."""
    return np.stack([priors.get(int(year), fallback) for year in years]) if len(years) else \
        np.zeros((0, len(fallback)))


def baselines(labels: np.ndarray, years: np.ndarray, priors: dict[int, np.ndarray], fallback: np.ndarray,
              genres: list[str], validation: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """The two baselines on one split.

    ``no_genre`` scores 0 everywhere with thresholds 0.5, so it predicts no genre at all. ``year_prior``
    scores each poster with its year's train frequencies; its F1 thresholds are tuned on ``validation``
    (``(labels, years)``) like a model's.
    """
    labels = np.asarray(labels, dtype=np.float64)
    none = evaluate_scores(labels, no_genre_scores(len(labels), labels.shape[1]), genres,
                           with_per_genre=False)
    thresholds = None
    if validation is not None and len(validation[0]):
        thresholds = tune_thresholds(validation[0], year_prior_scores(validation[1], priors, fallback))
    prior = evaluate_scores(labels, year_prior_scores(years, priors, fallback), genres, thresholds,
                            with_per_genre=False)
    return {"no_genre": none, "year_prior": prior}


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    """Only the headline numbers (no per-genre table), rounded for display."""
    return {name: round(float(metrics[name]), 4) for name in METRIC_NAMES if name in metrics}
