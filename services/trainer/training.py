"""Training one model from a dataset version, resumable from its last epoch, with honest metrics.

The recipe, step by step:

1. Read the dataset version's manifest and stream its TFRecord shards with ``tf.data`` (the shared
   dataset reader, ``shared.dataset_reader``; shuffled, optionally genre-balanced, prefetched).
2. Build the network (:mod:`services.trainer.models`) or, when a checkpoint of this task exists, locally
   or in the object store, reload it with its optimizer state and continue from the next epoch.
3. After every epoch: write ``last.keras`` (weights + optimizer), keep ``best.weights.h5`` (by the
   monitored metric), apply early stopping on ``val_loss``, and upload the checkpoint under
   ``checkpoints/<task_id>/`` so that another worker can resume if this one dies
   (:mod:`services.trainer.checkpoints`).
4. Reload the best weights and compute every metric of :mod:`services.trainer.metrics` on validation
   and test, next to the two baselines on the same splits. F1 thresholds are tuned on validation only.
5. Write ``history.json``, ``metrics.json``, PNG plots (:mod:`services.trainer.reports`) and
   TensorBoard logs in the work folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.trainer import metrics as metric_fns
from services.trainer.checkpoints import (
    BEST_WEIGHTS,
    LAST_CHECKPOINT,
    checkpoint_dir,
    fetch_checkpoint,
    make_epoch_checkpoint,
)
from services.trainer.reports import write_reports
from shared.files import replace_atomically
from shared.hyperparameters import LAYOUTS, STRATEGIES, Hyperparameters
from shared.storage import ObjectStore

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

logger = logging.getLogger(__name__)

SHARED_SHUFFLE_BUFFER = 4096
CALIBRATION_POSTERS = 256  # training posters that calibrate the full-integer LiteRT export

# progress(epoch (1-based), batch (1-based, 0 at an epoch end), batches per epoch, logs)
ProgressFn = Callable[[int, int, int, dict[str, float]], None]
# stage(name, done, total, logs): the steps before the epochs of the features strategy
# ("features": cache entries ready of total; "heads": head epochs run of at most total)
StageFn = Callable[[str, int, int, dict[str, float]], None]


class TrainingInputError(ValueError):
    """The request cannot be trained (unknown target, empty split, wrong layout); the message says why."""


@dataclass(frozen=True)
class TrainRequest:
    """One model to train: which dataset targets, how, and under which task id (its checkpoint key)."""

    task_id: str
    dataset_id: str
    targets: list[str]
    layout: str
    model_name: str
    hp: Hyperparameters

    def as_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "dataset_id": self.dataset_id, "targets": list(self.targets),
                "layout": self.layout, "model_name": self.model_name, "hyperparameters": self.hp.as_dict()}


@dataclass
class TrainOutcome:
    """What training leaves for the export and the registry."""

    model: keras.Model  # pixels -> scores, the model to export
    genres: list[str]
    years: list[int]
    image_size: int
    window: str
    metrics: dict[str, Any]
    history: dict[str, list[float]]
    work_dir: Path
    sample_pixels: np.ndarray
    resumed_from_epoch: int
    epochs_run: int
    files: dict[str, str] = field(default_factory=dict)
    # For the full-integer LiteRT export: training posters to calibrate on, test posters to check on.
    calibration_pixels: np.ndarray | None = None
    test_split: SplitArrays | None = None


# --- data ----------------------------------------------------------------------------------------------


def check_request(manifest: dict[str, Any], targets: list[str], layout: str,
                  hp: Hyperparameters | None = None) -> None:
    if layout not in LAYOUTS:
        raise TrainingInputError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if hp is not None:
        check_strategy(hp)
    if not targets:
        raise TrainingInputError("no target to train")
    missing = [t for t in targets if str(t) not in manifest["targets"]]
    if missing:
        raise TrainingInputError(f"targets {missing} are not in dataset {manifest['id']} "
                                 f"(it has {sorted(manifest['targets'])})")
    if layout == "shared" and manifest.get("window") == "decade":
        raise TrainingInputError("the shared layout has one head per year: build the dataset with "
                                 "--window year (or rolling), not decade")
    if layout != "shared" and len(targets) != 1:
        raise TrainingInputError(f"layout {layout} trains one model per target, got {len(targets)} targets")
    for target in targets:
        counts = {split: len(ids) for split, ids in manifest["targets"][str(target)]["splits"].items()}
        empty = [split for split in ("train", "validation") if counts.get(split, 0) == 0]
        if empty:
            raise TrainingInputError(f"target {target} of dataset {manifest['id']} has an empty "
                                     f"{' and '.join(empty)} split: build it with more posters")


def check_strategy(hp: Hyperparameters) -> None:
    """The training strategy's own parameters (see ``shared.hyperparameters``)."""
    from services.trainer.features import parse_views

    if hp.strategy not in STRATEGIES:
        raise TrainingInputError(f"unknown strategy {hp.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if hp.strategy != "features":
        return
    try:
        parse_views(hp.views)
    except ValueError as exc:
        raise TrainingInputError(str(exc)) from None
    if hp.head_epochs < 1:
        raise TrainingInputError(f"the features strategy trains the heads for at least 1 epoch, not "
                                 f"{hp.head_epochs}")
    if hp.head_seeds < 1:
        raise TrainingInputError(f"the heads are trained from at least 1 seed, not {hp.head_seeds}")
    if hp.finetune_blocks < 0 or hp.epochs < 0:
        raise TrainingInputError("finetune blocks and epochs cannot be negative")
    if hp.epochs > 0 and hp.finetune_blocks == 0:
        raise TrainingInputError(f"{hp.epochs} fine-tune epochs with no block to fine-tune: "
                                 "set --finetune-blocks N, or --epochs 0 for the heads only")


def batches_per_epoch(manifest: dict[str, Any], targets: list[str], batch_size: int, balanced: bool) -> int:
    total = 0
    for target in targets:
        info = manifest["targets"][str(target)]
        total += len(info["train_balanced"]) if balanced else len(info["splits"]["train"])
    return max(1, -(-total // batch_size))


def training_datasets(store: ObjectStore, manifest: dict[str, Any], targets: list[str], layout: str,
                      hp: Hyperparameters) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """``(train, validation)`` pipelines; for the shared layout each example carries its head index."""
    import tensorflow as tf

    from shared.dataset_reader import split_dataset

    if layout != "shared":
        target = targets[0]
        train = split_dataset(store, manifest, target, "train", hp.batch_size, shuffle=True,
                              balanced=hp.balanced, seed=hp.seed)
        validation = split_dataset(store, manifest, target, "validation", hp.batch_size)
        return train, validation

    def with_head(split: str, shuffle: bool) -> tf.data.Dataset:
        parts = []
        for head, target in enumerate(targets):
            part = split_dataset(store, manifest, target, split, 256, shuffle=shuffle,
                                 balanced=hp.balanced and split == "train", seed=hp.seed + head).unbatch()
            parts.append(part.map(
                lambda pixels, labels, h=head: ((pixels, tf.constant(h, tf.int32)), labels)))
        dataset = parts[0]
        for part in parts[1:]:
            dataset = dataset.concatenate(part)
        if shuffle:
            dataset = dataset.shuffle(SHARED_SHUFFLE_BUFFER, seed=hp.seed, reshuffle_each_iteration=True)
        return dataset.batch(hp.batch_size).prefetch(tf.data.AUTOTUNE)

    return with_head("train", True), with_head("validation", False)


@dataclass
class SplitArrays:
    pixels: np.ndarray
    labels: np.ndarray
    heads: np.ndarray  # index of the target (head) each example belongs to


def split_arrays(store: ObjectStore, manifest: dict[str, Any], targets: list[str], split: str,
                 with_pixels: bool = True) -> SplitArrays:
    from shared.dataset_reader import load_arrays

    pixels, labels, heads = [], [], []
    for head, target in enumerate(targets):
        part_pixels, part_labels, _ids, _years = load_arrays(store, manifest, target, split)
        if with_pixels:
            pixels.append(part_pixels)
        labels.append(part_labels)
        heads.append(np.full(len(part_labels), head, np.int32))
    size, genres = int(manifest["image_size"]), len(manifest["genres"])
    return SplitArrays(
        np.concatenate(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8),
        np.concatenate(labels) if labels else np.zeros((0, genres), np.float32),
        np.concatenate(heads) if heads else np.zeros((0,), np.int32))


def calibration_pixels(store: ObjectStore, manifest: dict[str, Any], targets: list[str],
                       limit: int = CALIBRATION_POSTERS, seed: int = 0) -> np.ndarray:
    """At most ``limit`` training posters, spread over the targets, to calibrate int8 activations.

    One target's training split is in memory at a time (the whole split of a shared model would be
    hundreds of MB at 256 px), and only the drawn posters are kept.
    """
    from shared.dataset_reader import load_arrays

    rng = np.random.default_rng(seed)
    share = max(1, -(-limit // max(1, len(targets))))
    parts = []
    for target in targets:
        pixels = load_arrays(store, manifest, target, "train")[0]
        if len(pixels):
            parts.append(pixels[np.sort(rng.choice(len(pixels), min(share, len(pixels)), replace=False))])
    size = int(manifest["image_size"])
    drawn = np.concatenate(parts) if parts else np.zeros((0, size, size, 3), np.uint8)
    return drawn[:limit]


def predict_scores(model: keras.Model, arrays: SplitArrays, batch_size: int) -> np.ndarray:
    """Scores ``[N, G]`` of each example under its own head (the serving model's ``[N, Y, G]`` picked)."""
    if len(arrays.labels) == 0:
        return np.zeros_like(arrays.labels)
    scores = np.asarray(model.predict(arrays.pixels.astype(np.float32), batch_size=batch_size, verbose=0))
    if scores.ndim == 3:
        scores = scores[np.arange(len(scores)), arrays.heads]
    return scores


# --- progress ----------------------------------------------------------------------------------------


def _make_progress_callback(progress: ProgressFn, batches: int, min_interval_s: float = 1.0) -> Any:
    import keras

    class Progress(keras.callbacks.Callback):
        """Reports epoch, batch and metrics; batch updates at most once per ``min_interval_s``."""

        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.last = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            now = time.monotonic()
            if now - self.last >= min_interval_s:
                self.last = now
                progress(self.epoch, batch + 1, batches, {k: float(v) for k, v in (logs or {}).items()})

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            progress(epoch + 1, 0, batches, {k: float(v) for k, v in (logs or {}).items()})

    return Progress()


# --- the model -----------------------------------------------------------------------------------------


def build_or_resume(request: TrainRequest, image_size: int, genre_count: int, folder: Path,
                    state: dict[str, Any] | None, steps_per_epoch: int) -> tuple[keras.Model, int]:
    """The compiled training model and the epoch to start from (0, or the checkpoint's epoch)."""
    import keras

    from services.trainer import models

    strategy = models.configure_devices()
    with strategy.scope():
        if state is not None and state.get("epoch", 0) > 0 and (folder / LAST_CHECKPOINT).is_file():
            model = keras.models.load_model(folder / LAST_CHECKPOINT, custom_objects=models.CUSTOM_OBJECTS)
            logger.info("resuming %s from epoch %d", request.task_id, state["epoch"])
            return model, int(state["epoch"])
        keras.utils.set_random_seed(request.hp.seed)
        if request.layout == "shared":
            model, _serving = models.build_shared_model(image_size, genre_count, len(request.targets),
                                                        request.hp)
        else:
            model = models.build_independent_model(image_size, genre_count, request.hp)
        models.compile_model(model, request.hp, steps_per_epoch)
        return model, 0


def fit_heads_on_features(request: TrainRequest, store: ObjectStore, manifest: dict[str, Any],
                          model: keras.Model, image_size: int, state: dict[str, Any], folder: Path,
                          stage: StageFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The features strategy's first step: cached features, heads trained on them, copied into
    ``model``. Returns the validation and test scores (the full model's, computed from the features).

    ``state`` receives the heads' history and best epoch, ``folder`` the best weights so far (the
    fine-tune that may follow only replaces them when it does better on validation).
    """
    from services.trainer import features, models

    hp = request.hp
    targets = [str(t) for t in request.targets]
    views = features.parse_views(hp.views)
    extractor = models.feature_extractor(model, image_size)
    fingerprint = features.backbone_fingerprint(extractor, hp, image_size)
    runner = features.FeatureRunner(extractor)
    log = features.CacheLog(total=len(targets) * (len(views) + 2))

    def entry_done(name: str, done: int, total: int) -> None:
        if stage is not None:
            stage(name, done, total, {})

    started = time.monotonic()
    train_set = features.feature_set(store, manifest, runner, fingerprint, targets, "train", views, log,
                                     entry_done)
    validation = features.feature_set(store, manifest, runner, fingerprint, targets, "validation",
                                      ["plain"], log, entry_done)
    test = features.feature_set(store, manifest, runner, fingerprint, targets, "test", ["plain"], log,
                                entry_done)
    features_s = time.monotonic() - started
    logger.info("features %s: %d entries computed (%s), %d reused, in %.1f s", fingerprint, len(log.computed),
                runner.runtime or "nothing to compute", len(log.reused), features_s)

    def head_epoch(epoch: int, logs: dict[str, float]) -> None:
        if stage is not None:
            stage("heads", epoch, hp.head_epochs * hp.head_seeds, logs)  # the seeds run one after another

    started = time.monotonic()
    heads, scoring, history = features.train_heads(train_set, validation, len(manifest["genres"]),
                                                   len(targets), request.layout, hp, head_epoch)
    features.copy_head_weights(heads, model)
    best = int(np.argmax(history.get("val_auc", [0.0])))
    # One seed's heads are its best epoch; averaged seeds' heads are a new model: score them as they are.
    kept = (features.validation_metrics(heads, validation, request.layout, hp.batch_size) if hp.head_seeds > 1
            else {key: values[best] for key, values in history.items() if values})
    state["heads"] = {
        "fingerprint": fingerprint, "views": views, "computed": len(log.computed), "reused": len(log.reused),
        "features_runtime": runner.runtime or None, "features_s": round(features_s, 2),
        "heads_s": round(time.monotonic() - started, 2),
        "epochs_run": len(history.get("loss", [])), "best_epoch": best + 1,
        "val_auc": kept.get("val_auc"), "train_examples": len(train_set.labels),
    }
    state["heads_history"] = history
    # The heads alone are the first candidate for "best": a fine-tune epoch must beat them on validation.
    state["best_value"] = kept.get(hp.monitor)
    state["best_epoch"] = 0
    replace_atomically(folder / BEST_WEIGHTS, model.save_weights)
    return features.head_scores(scoring, validation), features.head_scores(scoring, test)


def prepare_finetune(model: keras.Model, hp: Hyperparameters, steps_per_epoch: int) -> list[str]:
    """Unfreeze the backbone's top ``finetune_blocks`` blocks and compile for the fine-tune."""
    from dataclasses import replace

    from services.trainer import models

    with models.configure_devices().scope():
        try:
            unfrozen = models.freeze_backbone(model, hp.finetune_blocks)
        except ValueError as exc:
            raise TrainingInputError(str(exc)) from None
        models.compile_model(model, replace(hp, learning_rate=hp.finetune_learning_rate), steps_per_epoch)
    return unfrozen


def train(request: TrainRequest, store: ObjectStore, home: Path, work_dir: Path,
          progress: ProgressFn | None = None, stage: StageFn | None = None) -> TrainOutcome:
    """Train (or resume) one model and evaluate it. ``work_dir`` receives history, metrics and plots."""
    import keras

    from services.trainer import models
    from shared.dataset_manifest import load_manifest

    manifest = load_manifest(store, request.dataset_id)
    targets = [str(t) for t in request.targets]
    hp = request.hp
    check_request(manifest, targets, request.layout, hp)
    genres = [str(g) for g in manifest["genres"]]
    image_size = int(manifest["image_size"])

    folder = checkpoint_dir(home, request.task_id)
    folder.mkdir(parents=True, exist_ok=True)
    state = fetch_checkpoint(store, folder, request.task_id)
    batches = batches_per_epoch(manifest, targets, hp.batch_size, hp.balanced)
    model, initial_epoch = build_or_resume(request, image_size, len(genres), folder, state, batches)
    if initial_epoch > 0 and state is not None:
        state.setdefault("resumed_from", []).append(initial_epoch)
    else:
        state = {"request": request.as_dict()}

    precomputed: tuple[np.ndarray, np.ndarray] | None = None
    if hp.strategy == "features" and initial_epoch == 0:
        if hp.epochs > 0:  # refused before the features are computed, not after
            blocks = models.backbone_blocks(model)
            if hp.finetune_blocks > len(blocks):
                raise TrainingInputError(f"--finetune-blocks {hp.finetune_blocks}: the {hp.architecture} "
                                         f"backbone has {len(blocks)} blocks with weights")
        precomputed = fit_heads_on_features(request, store, manifest, model, image_size, state, folder, stage)
        if hp.epochs > 0:
            state["finetune_blocks"] = prepare_finetune(model, hp, batches)

    work_dir.mkdir(parents=True, exist_ok=True)
    callbacks: list[Any] = [
        make_epoch_checkpoint(store, folder, request.task_id, hp, state),
        keras.callbacks.TensorBoard(log_dir=str(work_dir / "tensorboard"), update_freq="epoch"),
    ]
    if progress is not None:
        callbacks.append(_make_progress_callback(progress, batches))
    finished = state.get("stopped_early") or initial_epoch >= hp.epochs
    if not finished:
        train_data, validation_data = training_datasets(store, manifest, targets, request.layout, hp)
        model.fit(train_data, validation_data=validation_data, epochs=hp.epochs, initial_epoch=initial_epoch,
                  callbacks=callbacks, verbose=0)
    if (folder / BEST_WEIGHTS).is_file():
        model.load_weights(folder / BEST_WEIGHTS)
    backbone_trained = state.get("best_epoch") != 0  # 0: the heads on cached features were kept
    if hp.kernel_grid == "int8" and backbone_trained:
        # Training moved the kernels it trained off the int8 grid: put them back, so that the model
        # evaluated, registered and exported is the one its full-integer export quantises exactly.
        models.snap_kernels_to_int8(models.backbone_layers(model))
    serving = models.serving_model_of(model)

    years = [int(t) for t in targets] if request.layout == "shared" else \
        [int(y) for y in manifest["targets"][targets[0]]["years"]]
    history = {key: list(values) for key, values in state.get("history", {}).items()}
    if not history and state.get("heads_history"):
        history = {key: list(values) for key, values in state["heads_history"].items()}
    # Scores from the cached features are the full model's own only while the backbone is the one that
    # computed them: after a fine-tune whose epoch was kept, score the pixels again.
    if backbone_trained:
        precomputed = None
    evaluation = evaluate_model(serving, store, manifest, targets, hp.batch_size, precomputed)
    evaluation.update({
        "best_epoch": state.get("best_epoch"), "epochs_run": int(state.get("epoch", 0)),
        "stopped_early": bool(state.get("stopped_early", False)), "monitor": hp.monitor,
        "resumed_from_epochs": list(state.get("resumed_from", [])), "hyperparameters": hp.as_dict(),
        "layout": request.layout, "targets": targets,
    })
    if "heads" in state:
        evaluation["heads"] = {**state["heads"], "finetune_blocks": state.get("finetune_blocks", [])}
    test_split = split_arrays(store, manifest, targets, "test")
    samples = (test_split.pixels[:4] if len(test_split.pixels) else np.zeros((1, image_size, image_size, 3)))
    files = write_reports(work_dir, history, evaluation, genres, targets)
    return TrainOutcome(model=serving, genres=genres, years=years, image_size=image_size,
                        window=str(manifest.get("window", "year")), metrics=evaluation, history=history,
                        work_dir=work_dir, sample_pixels=samples.astype(np.float32),
                        resumed_from_epoch=initial_epoch, epochs_run=int(state.get("epoch", 0)), files=files,
                        calibration_pixels=calibration_pixels(store, manifest, targets),
                        test_split=test_split)


# --- evaluation ----------------------------------------------------------------------------------------


def evaluate_model(model: keras.Model, store: ObjectStore, manifest: dict[str, Any], targets: list[str],
                   batch_size: int, scores: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Metrics on validation and test (thresholds tuned on validation), the baselines, and per target.

    ``scores``: the model's validation and test scores when already known (computed from cached
    features, in split order), so the pixels do not pass the backbone again.
    """
    genres = [str(g) for g in manifest["genres"]]
    train = split_arrays(store, manifest, targets, "train", with_pixels=False)
    validation = split_arrays(store, manifest, targets, "validation", with_pixels=scores is None)
    test = split_arrays(store, manifest, targets, "test", with_pixels=scores is None)
    if scores is None:
        validation_scores = predict_scores(model, validation, batch_size)
        test_scores = predict_scores(model, test, batch_size)
    else:
        validation_scores, test_scores = scores
    thresholds = metric_fns.tune_thresholds(validation.labels, validation_scores)

    # The year prior of each head is its own target's genre frequencies in train.
    priors = {head: metric_fns.genre_frequencies(train.labels[train.heads == head])
              for head in range(len(targets))}
    fallback = metric_fns.genre_frequencies(train.labels)
    result: dict[str, Any] = {
        "validation": metric_fns.evaluate_scores(validation.labels, validation_scores, genres, thresholds),
        "test": metric_fns.evaluate_scores(test.labels, test_scores, genres, thresholds),
        "baselines": {
            "validation": metric_fns.baselines(validation.labels, validation.heads, priors, fallback, genres,
                                               (validation.labels, validation.heads)),
            "test": metric_fns.baselines(test.labels, test.heads, priors, fallback, genres,
                                         (validation.labels, validation.heads)),
        },
        "thresholds": {genre: float(t) for genre, t in zip(genres, thresholds, strict=True)},
    }
    if len(targets) > 1:
        per_target: dict[str, Any] = {}
        for head, target in enumerate(targets):
            mask = test.heads == head
            if mask.any():
                per_target[target] = metric_fns.summary(metric_fns.evaluate_scores(
                    test.labels[mask], test_scores[mask], genres, thresholds, with_per_genre=False))
        result["per_target_test"] = per_target
    return result
