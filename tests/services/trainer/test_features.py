"""The features strategy at toy scale: cached backbone features, heads trained on them, fine-tune."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from services.trainer import checkpoints, features, metrics, models, training
from shared.dataset_manifest import DatasetNotFoundError, load_manifest
from shared.dataset_reader import load_arrays
from shared.hyperparameters import Hyperparameters, default_hyperparameters
from shared.storage import LocalObjectStore, object_store_from_settings
from tests.services.trainer.datasets import GENRES, write_dataset

if TYPE_CHECKING:
    import keras

YEARS = ["2000", "2001"]


def features_hp(**overrides: object) -> Hyperparameters:
    # The small CNN, randomly initialised (seeded): quick, and its features vary with the poster.
    values: dict[str, object] = {"weights": "none", "resolution": 32, "batch_size": 8, "width": 4,
                                 "strategy": "features", "views": "plain,flip", "head_epochs": 3, "epochs": 0,
                                 "monitor": "val_auc"}
    values.update(overrides)
    return default_hyperparameters("smallcnn", **values)


def stamps(store: LocalObjectStore, prefix: str) -> dict[str, int]:
    return {key: (store.root / key).stat().st_mtime_ns for key in store.list(prefix)}


def test_features_are_cached_once_and_reused_by_a_later_training(settings: object, tmp_path: Path) -> None:
    store = object_store_from_settings()
    assert isinstance(store, LocalObjectStore)
    write_dataset(store, "feat1", [2000, 2001], per_year=12)
    home = settings.home_dir  # type: ignore[attr-defined]
    first = training.train(training.TrainRequest("f-1", "feat1", YEARS, "shared", "genre-shared",
                                                 features_hp()), store, home, tmp_path / "w1")
    # train plain + flip, validation plain, test plain, for each of the two years
    assert first.metrics["heads"]["computed"] == 8 and first.metrics["heads"]["reused"] == 0
    assert first.metrics["heads"]["features_runtime"] == "litert"  # a CPU: the converted extractor
    written = stamps(store, "features/feat1/")
    assert len(written) == 8

    second = training.train(training.TrainRequest("f-2", "feat1", YEARS, "shared", "genre-shared",
                                                  features_hp(head_epochs=2)), store, home, tmp_path / "w2")
    assert second.metrics["heads"]["computed"] == 0 and second.metrics["heads"]["reused"] == 8
    assert second.metrics["heads"]["features_runtime"] is None  # nothing computed, nothing converted
    assert stamps(store, "features/feat1/") == written  # nothing rewritten

    # A third view is new work for its entries only.
    third = training.train(training.TrainRequest("f-3", "feat1", YEARS, "shared", "genre-shared",
                                                 features_hp(views="plain,flip,degraded")),
                           store, home, tmp_path / "w3")
    assert third.metrics["heads"]["computed"] == 2 and third.metrics["heads"]["reused"] == 8
    after = stamps(store, "features/feat1/")
    assert {key: after[key] for key in written} == written
    assert sorted(set(after) - set(written)) == [
        f"features/feat1/{first.metrics['heads']['fingerprint']}/{year}/train-degraded.npz" for year in YEARS]


def test_heads_on_features_make_a_full_model_that_scores_pixels_the_same(settings: object, tmp_path: Path
                                                                         ) -> None:
    store = object_store_from_settings()
    manifest = write_dataset(store, "feat2", [2000, 2001], per_year=12)
    outcome = training.train(training.TrainRequest("f-4", "feat2", YEARS, "shared", "genre-shared",
                                                   features_hp()), store, settings.home_dir,  # type: ignore[attr-defined]
                             tmp_path / "work")
    # The model that comes out is the ordinary full model: pixels in, [N, Y, G] scores out.
    assert outcome.model.inputs[0].shape[1:] == (32, 32, 3)
    test = training.split_arrays(store, manifest, YEARS, "test")
    pixel_scores = np.asarray(outcome.model.predict(test.pixels.astype(np.float32), verbose=0))
    assert pixel_scores.shape == (len(test.labels), len(YEARS), len(GENRES))

    # ... and its heads are the ones trained on the cached vectors: the same scores from the vectors.
    fingerprint = outcome.metrics["heads"]["fingerprint"]
    vectors = []
    for year in YEARS:
        data = store.get(features.features_key("feat2", fingerprint, year, "test", "plain"))
        with np.load(io.BytesIO(data)) as stored:
            vectors.append(stored["features"])
    _training, scoring = features.head_models(vectors[0].shape[1], len(GENRES), len(YEARS), "shared",
                                              features_hp())
    for layer in scoring.layers:
        if layer.weights:
            layer.set_weights(outcome.model.get_layer(layer.name).get_weights())
    vector_scores = np.asarray(scoring.predict(np.concatenate(vectors), verbose=0))
    np.testing.assert_allclose(vector_scores, pixel_scores, atol=1e-5)

    # The reported test metrics (computed from the vectors) are those of the exported model on pixels.
    own = pixel_scores[np.arange(len(pixel_scores)), test.heads]
    thresholds = [outcome.metrics["thresholds"][genre] for genre in GENRES]
    on_pixels = metrics.evaluate_scores(test.labels, own, GENRES, np.asarray(thresholds))
    assert on_pixels["macro_auc"] == pytest.approx(outcome.metrics["test"]["macro_auc"], abs=1e-6)
    assert on_pixels["macro_map"] == pytest.approx(outcome.metrics["test"]["macro_map"], abs=1e-6)
    assert outcome.metrics["heads"]["best_epoch"] >= 1 and outcome.epochs_run == 0


def test_flipped_view_entry_holds_the_features_of_mirrored_posters(settings: object, tmp_path: Path) -> None:
    store = object_store_from_settings()
    write_dataset(store, "feat3", [2000], per_year=12)
    outcome = training.train(training.TrainRequest("f-5", "feat3", ["2000"], "independent", "genre-2000",
                                                   features_hp()), store, settings.home_dir,  # type: ignore[attr-defined]
                             tmp_path / "work")
    fingerprint = outcome.metrics["heads"]["fingerprint"]
    manifest = load_manifest(store, "feat3")
    pixels, labels, _ids, _years = load_arrays(store, manifest, "2000", "train")
    extractor = models.feature_extractor(outcome.model, 32)
    cache = features.CacheLog()
    runner = features.FeatureRunner(extractor)
    flipped, flipped_labels = features.split_features(store, manifest, runner, fingerprint, "2000",
                                                      "train", "flip", cache)
    plain, _ = features.split_features(store, manifest, runner, fingerprint, "2000", "train", "plain",
                                       cache)
    assert cache.computed == [] and len(cache.reused) == 2
    expected = np.asarray(extractor.predict(pixels[:, :, ::-1, :].astype(np.float32), verbose=0))
    np.testing.assert_allclose(flipped, expected, atol=1e-5)
    np.testing.assert_array_equal(flipped_labels, labels)
    assert not np.allclose(flipped, plain, atol=1e-4)


def small_extractor() -> keras.Model:
    model = models.build_independent_model(32, len(GENRES), features_hp())
    return models.feature_extractor(model, 32)


def test_litert_features_are_keras_features() -> None:
    extractor = small_extractor()
    posters = np.random.default_rng(1).integers(0, 256, size=(5, 32, 32, 3)).astype(np.float32)
    litert = features.FeatureRunner(extractor, "litert")
    keras_runner = features.FeatureRunner(extractor, "keras")
    converted, reference = litert(posters), keras_runner(posters)
    assert (litert.runtime, keras_runner.runtime) == ("litert", "keras")
    assert converted.shape == reference.shape == (5, litert.dim) and converted.dtype == np.float32
    np.testing.assert_allclose(converted, reference, rtol=1e-4, atol=1e-4)
    assert np.abs(reference).max() > 1e-2  # not vectors of zeros agreeing by accident
    assert features.FeatureRunner(extractor)(posters[:0]).shape == (0, litert.dim)


def test_a_litert_conversion_that_disagrees_with_keras_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    extractor = small_extractor()
    posters = np.random.default_rng(2).integers(0, 256, size=(3, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(extractor.predict(posters, verbose=0))
    # A conversion gone wrong: the right shape, other values.
    monkeypatch.setattr(features, "litert_features", lambda model: lambda pixels: np.asarray(
        model.predict(pixels, verbose=0)) + 1.0)
    auto = features.FeatureRunner(extractor)
    np.testing.assert_allclose(auto(posters), expected, atol=1e-5)
    assert auto.runtime == "keras"
    with pytest.raises(features.FeatureCacheError, match="differ from Keras"):
        features.FeatureRunner(extractor, "litert")(posters)

    def failing(model: object) -> object:
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(features, "litert_features", failing)
    fallback = features.FeatureRunner(extractor)
    np.testing.assert_allclose(fallback(posters), expected, atol=1e-5)
    assert fallback.runtime == "keras"
    with pytest.raises(ValueError, match="feature runtime is one of"):
        features.FeatureRunner(extractor, "onnx")


def test_degraded_view_is_a_smaller_recompressed_copy_at_the_same_size() -> None:
    rng = np.random.default_rng(0)
    posters = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    degraded = features.view_pixels(posters, "degraded")
    assert degraded.shape == posters.shape and degraded.dtype == np.float32
    # Noise does not survive halving and JPEG: the copy is much smoother than the original.
    smoothness = np.abs(np.diff(degraded, axis=1)).mean()
    assert smoothness < 0.5 * np.abs(np.diff(posters.astype(float), axis=1)).mean()


def test_finetune_trains_only_the_top_blocks_and_keeps_batch_norm_frozen(settings: object, tmp_path: Path
                                                                         ) -> None:
    import keras

    store = object_store_from_settings()
    write_dataset(store, "feat4", [2000], per_year=12)
    hp = features_hp(epochs=1, finetune_blocks=1, finetune_learning_rate=1e-2, head_epochs=2)
    outcome = training.train(training.TrainRequest("f-6", "feat4", ["2000"], "independent", "genre-2000", hp),
                             store, settings.home_dir, tmp_path / "work")  # type: ignore[attr-defined]
    assert outcome.epochs_run == 1
    blocks = models.backbone_blocks(outcome.model)
    assert len(blocks) == 8 and outcome.metrics["heads"]["finetune_blocks"] == blocks[-1:]

    # The same seed builds the same starting backbone: after the fine-tune epoch (its checkpoint; the
    # model kept is the better of heads-only and fine-tuned on validation) only the top block moved.
    finetuned = keras.models.load_model(
        checkpoints.checkpoint_dir(settings.home_dir, "f-6") / checkpoints.LAST_CHECKPOINT,  # type: ignore[attr-defined]
        custom_objects=models.CUSTOM_OBJECTS)
    keras.utils.set_random_seed(hp.seed)
    start = models.build_independent_model(32, len(GENRES), hp)
    trained_layers = models.backbone_layers(finetuned)
    start_layers = models.backbone_layers(start)
    moved = set()
    for trained, initial in zip(trained_layers, start_layers, strict=True):
        for after, before in zip(trained.get_weights(), initial.get_weights(), strict=True):
            if not np.array_equal(after, before):
                moved.add(models.block_name(trained.name))
    assert moved == {blocks[-1]}
    top = [layer for layer in trained_layers if models.block_name(layer.name) == blocks[-1]]
    assert all(layer.trainable for layer in top)
    norms = [layer for layer in trained_layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(layer.trainable for layer in norms)


def off_grid_kernels(model: keras.Model) -> list[str]:
    """The backbone layers whose kernel is not on the int8 grid (127 steps per output channel)."""
    off = []
    for layer in models.backbone_layers(model):
        if not hasattr(layer, "kernel"):
            continue
        kernel = np.asarray(layer.kernel, dtype=np.float64)
        depthwise = "depthwise" in type(layer).__name__.lower()  # [h, w, channels, multiplier]
        axes = tuple(range(kernel.ndim - 2 if depthwise else kernel.ndim - 1))
        step = np.max(np.abs(kernel), axis=axes, keepdims=True) / models.INT8_LEVELS
        levels = kernel / np.where(step > 0, step, 1.0)
        if np.max(np.abs(levels - np.round(levels))) > 1e-3:
            off.append(layer.name)
    return off


def test_kernel_grid_int8_keeps_the_backbone_on_the_grid_through_training(settings: object, tmp_path: Path
                                                                         ) -> None:
    """Snapped as built (so the cached features are those of the snapped backbone), and snapped again
    after training moved the kernels (end to end here, where every epoch trains the backbone)."""
    store = object_store_from_settings()
    write_dataset(store, "grid", [2000], per_year=12)
    home = settings.home_dir  # type: ignore[attr-defined]
    heads_only = training.train(training.TrainRequest("g-1", "grid", ["2000"], "independent", "genre-2000",
                                                      features_hp(kernel_grid="int8")), store, home,
                                tmp_path / "heads")
    assert models.backbone_layers(heads_only.model) and off_grid_kernels(heads_only.model) == []
    floating = training.train(training.TrainRequest("g-2", "grid", ["2000"], "independent", "genre-2000",
                                                    features_hp()), store, home, tmp_path / "float")
    assert off_grid_kernels(floating.model)  # seeded the same: the grid is what differs
    assert heads_only.metrics["heads"]["fingerprint"] != floating.metrics["heads"]["fingerprint"]

    end_to_end = replace(features_hp(kernel_grid="int8"), strategy="end-to-end", epochs=1, learning_rate=1e-2)
    trained = training.train(training.TrainRequest("g-3", "grid", ["2000"], "independent", "genre-2000",
                                                   end_to_end), store, home, tmp_path / "e2e")
    assert off_grid_kernels(trained.model) == []
    assert trained.metrics["hyperparameters"]["kernel_grid"] == "int8"


def test_an_unknown_kernel_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="kernel grid 'int4'"):
        models.build_independent_model(32, len(GENRES), features_hp(kernel_grid="int4"))


def test_bad_requests_are_refused_with_a_reason(settings: object, tmp_path: Path) -> None:
    store = object_store_from_settings()
    write_dataset(store, "feat5", [2000], per_year=8)
    home = settings.home_dir  # type: ignore[attr-defined]

    def request(dataset: str = "feat5", **overrides: object) -> training.TrainRequest:
        return training.TrainRequest("bad", dataset, ["2000"], "independent", "genre-2000",
                                     features_hp(**overrides))

    with pytest.raises(DatasetNotFoundError, match="no-such-version"):
        training.train(request("no-such-version"), store, home, tmp_path)
    with pytest.raises(training.TrainingInputError, match="views are a comma list"):
        training.train(request(views="plain,sepia"), store, home, tmp_path)
    with pytest.raises(training.TrainingInputError, match="must include plain"):
        training.train(request(views="flip"), store, home, tmp_path)
    with pytest.raises(training.TrainingInputError, match="no block to fine-tune"):
        training.train(request(epochs=2), store, home, tmp_path)
    with pytest.raises(training.TrainingInputError, match="unknown strategy"):
        training.train(request(strategy="distil"), store, home, tmp_path)
    with pytest.raises(training.TrainingInputError, match="has 8 blocks"):
        training.train(request(epochs=1, finetune_blocks=99), store, home, tmp_path)
    assert not list(store.list("features/feat5/"))  # refused before any feature was computed
    training.train(request(), store, home, tmp_path / "ok")
    # A cache entry that does not hold the split's posters is refused, not trained on.
    fingerprint = next(iter(store.list("features/feat5/"))).split("/")[2]
    key = features.features_key("feat5", fingerprint, "2000", "train", "plain")
    manifest = load_manifest(store, "feat5")
    ok = store.get(key)
    with np.load(io.BytesIO(ok)) as stored:
        short = features._encode(stored["features"][:1], stored["labels"][:1], stored["movie_ids"][:1])
    store.put(key, short)
    with pytest.raises(features.FeatureCacheError, match="does not hold the split's 4 posters"):
        features.split_features(store, manifest, None, fingerprint, "2000", "train", "plain",  # type: ignore[arg-type]
                                features.CacheLog())


def test_heads_from_several_seeds_hold_the_average_of_each_seeds_heads() -> None:
    rng = np.random.default_rng(0)

    def toy_set(rows: int) -> features.FeatureSet:
        vectors = rng.normal(size=(rows, 16)).astype(np.float32)
        labels = (vectors[:, :len(GENRES)] + rng.normal(scale=0.5, size=(rows, len(GENRES))) > 0.5)
        return features.FeatureSet(vectors, labels.astype(np.float32), np.arange(rows, dtype=np.int32) % 2)

    train, validation = toy_set(64), toy_set(32)
    hp = features_hp(head_epochs=4, head_patience=4, seed=3)

    def head_weights(head_seeds: int, seed: int = 3) -> list[np.ndarray]:
        heads, _scoring, _history = features.train_heads(train, validation, len(GENRES), 2, "shared",
                                                         replace(hp, head_seeds=head_seeds, seed=seed))
        return [heads.get_layer(name).get_weights()[0] for name in ("common_logits", "year_logits")]

    averaged = head_weights(head_seeds=2)
    first, second = head_weights(head_seeds=1, seed=3), head_weights(head_seeds=1, seed=4)
    for mean, one, other in zip(averaged, first, second, strict=True):
        np.testing.assert_allclose(mean, (one + other) / 2, atol=1e-5)
        assert not np.allclose(mean, one, atol=1e-3)  # the seeds' heads differ, so the average is new


def test_averaged_heads_are_scored_as_they_are_for_the_fine_tune_to_beat() -> None:
    import keras

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(96, 16)).astype(np.float32)
    noise = rng.normal(scale=0.5, size=(96, len(GENRES)))
    labels = (vectors[:, :len(GENRES)] + noise > 0.5).astype(np.float32)
    heads_of = np.arange(96, dtype=np.int32) % 2
    train = features.FeatureSet(vectors[:64], labels[:64], heads_of[:64])
    validation = features.FeatureSet(vectors[64:], labels[64:], heads_of[64:])
    hp = features_hp(head_epochs=4, head_patience=4, seed=3, head_seeds=2)
    heads, scoring, history = features.train_heads(train, validation, len(GENRES), 2, "shared", hp)

    measured = features.validation_metrics(heads, validation, "shared", hp.batch_size)
    auc = keras.metrics.AUC(multi_label=True)
    auc.update_state(validation.labels, features.head_scores(scoring, validation))
    assert measured["val_auc"] == pytest.approx(float(auc.result()), abs=1e-4)
    assert measured["val_auc"] not in history["val_auc"]  # the average is neither seed's best epoch


def test_zero_head_seeds_are_refused() -> None:
    with pytest.raises(training.TrainingInputError, match="at least 1 seed"):
        training.check_strategy(features_hp(head_seeds=0))
