"""Model builders: output layouts, the shared model's head selection, local weights files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.trainer import models
from shared.hyperparameters import Hyperparameters, default_hyperparameters


def hp(**overrides: object) -> Hyperparameters:
    return default_hyperparameters("smallcnn", width=4, weights="none", **overrides)


def test_independent_model_maps_pixels_to_one_score_per_genre() -> None:
    model = models.build_independent_model(32, 5, hp())
    scores = model.predict(np.full((3, 32, 32, 3), 128.0, np.float32), verbose=0)
    assert scores.shape == (3, 5) and np.all((scores >= 0) & (scores <= 1))


def test_shared_model_trains_each_example_on_its_own_year_head() -> None:
    training, serving = models.build_shared_model(32, 4, 3, hp(augment=False, dropout=0.0))
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3)).astype(np.float32)
    heads = np.array([0, 1, 2, 1, 0], np.int32)
    all_heads = serving.predict(pixels, verbose=0)
    assert all_heads.shape == (5, 3, 4)
    selected = training.predict([pixels, heads], verbose=0)
    np.testing.assert_allclose(selected, all_heads[np.arange(5), heads], atol=1e-6)
    assert models.serving_model_of(training).output_shape == (None, 3, 4)


def test_weights_from_a_local_file(tmp_path: Path) -> None:
    source = models.backbone("smallcnn", 32, "none", width=4)
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    loaded = models.backbone("smallcnn", 32, str(path), width=4)
    for left, right in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        models.backbone("mobilenetv3small", 32, str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="no ImageNet weights"):
        models.backbone("smallcnn", 32, "imagenet")


def test_keras_application_backbones_build_without_downloads() -> None:
    model = models.build_independent_model(32, 3, default_hyperparameters(
        "mobilenetv3small", resolution=32, weights="none"))
    assert model.output_shape == (None, 3)


def test_method_hyperparameters_are_the_resnet50_defaults() -> None:
    method = default_hyperparameters("resnet50")
    assert (method.resolution, method.batch_size, method.epochs, method.learning_rate, method.patience,
            method.monitor, method.optimizer) == (256, 32, 100, 1e-3, 20, "val_binary_accuracy", "adam")
    with pytest.raises(ValueError, match="unknown architecture"):
        default_hyperparameters("vgg16")
