"""Grad-CAM's split of every architecture at the layer the model code marks (never a guessed name)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.hyperparameters import ARCHITECTURES, Hyperparameters


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("layout", ["independent", "shared"])
def test_every_architecture_splits_at_its_marked_last_conv_block(architecture, layout):
    import keras

    from services.trainer.explain import explanation_parts
    from services.trainer.models import FEATURE_MAP_LAYER, build_independent_model, build_shared_model

    keras.utils.set_random_seed(0)
    # 40 px in, resized to 32 inside for the ImageNet backbones: the split must keep the resize.
    hp = Hyperparameters(architecture=architecture, augment=False, dropout=0.0, width=4,
                         resolution=None if architecture == "smallcnn" else 32)
    model = build_shared_model(40, 5, 3, hp)[1] if layout == "shared" else build_independent_model(40, 5, hp)
    parts = explanation_parts(model)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3)).astype(np.float32)
    feature_map = parts.to_feature_map(pixels, training=False)
    marked = model.get_layer("backbone").get_layer(FEATURE_MAP_LAYER)
    assert feature_map.shape[1:] == tuple(marked.output.shape[1:]) and len(feature_map.shape) == 4
    # training=False on both sides: EfficientNet's call with training=None is not deterministic.
    rebuilt = parts.from_feature_map(feature_map, training=False)
    np.testing.assert_allclose(rebuilt, model(pixels, training=False), atol=1e-5)
    assert (parts.years, parts.genres) == ((3, 5) if layout == "shared" else (0, 5))


def test_a_model_without_the_mark_is_not_explainable():
    import keras

    from services.trainer.explain import NotExplainable, explanation_parts

    pixels = keras.Input((8, 8, 3))
    model = keras.Model(pixels, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(pixels)))
    with pytest.raises(NotExplainable, match="last_conv_block"):
        explanation_parts(model)


def test_a_model_whose_backbone_also_feeds_a_feature_extractor_is_explainable():
    """``--strategy features`` calls the model's backbone again in its feature extractor: the serving
    model still has one call of it, so its explain signature is exported (the demo's model had none)."""
    import keras

    from services.trainer.explain import explanation_parts
    from services.trainer.models import build_shared_model, feature_extractor

    keras.utils.set_random_seed(0)
    hp = Hyperparameters(architecture="smallcnn", augment=False, dropout=0.0, width=4)
    training, serving = build_shared_model(32, 5, 3, hp)
    extractor = feature_extractor(serving, 32)
    parts = explanation_parts(serving)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    rebuilt = parts.from_feature_map(parts.to_feature_map(pixels, training=False), training=False)
    np.testing.assert_allclose(rebuilt, serving(pixels, training=False), atol=1e-5)
    assert extractor(pixels, training=False).shape == (2, 32)
