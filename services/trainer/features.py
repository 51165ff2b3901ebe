"""Training on cached backbone features: the ``features`` strategy (``--strategy features``).

A pretrained backbone, frozen, turns each poster into one pooled feature vector; computing it is
nearly all the cost of an epoch. So the vectors are computed *once* per (dataset version, backbone
and its weights, working resolution, view) and stored in the object store, under

    features/<dataset id>/<architecture>-<side>px-<weights digest>/<target>/<split>-<view>.npz

(``features``, ``labels`` and ``movie_ids`` arrays). The weights digest hashes the backbone's actual
weights, so a different weights file, package or random initialisation never reuses another's
vectors, and a later training on the same dataset with the same backbone reuses them all.

Then the heads (one per year for the ``shared`` layout, one for ``independent``/``window``) are
trained on the vectors in seconds, and copied by layer name into the ordinary full model (backbone +
heads, pixels in, scores out), which export, registry and serving take unchanged. An optional short
fine-tune of the backbone's top blocks follows, end to end on pixels (``services.trainer.training``).

Augmentation has to survive caching, so it is made of *views*, each cached like the plain posters
(train split only; validation and test are always scored on the plain view, as served):

- ``plain``: the poster as stored;
- ``flip``: mirrored left-right (posters have no preferred side);
- ``degraded``: shrunk to half the side, JPEG-recompressed at quality 40 and enlarged back, the kind
  of copy a poster found elsewhere on the web is; it teaches the heads features that survive it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.hyperparameters import FEATURE_VIEWS, Hyperparameters
from shared.storage import ObjectNotFoundError, ObjectStore

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

FEATURES_FORMAT = 1  # bumped when the way vectors are computed changes, so old entries are not reused
DEGRADED_JPEG_QUALITY = 40
EXTRACT_BATCH = 32
FEATURE_RUNTIMES = ("auto", "litert", "keras")
LITERT_CHECK_POSTERS = 2  # posters computed both ways before LiteRT computes the rest
# Largest allowed difference from Keras, relative to the largest vector value: float32 LiteRT differed
# by about 2e-6 on Lite0 (a wrong conversion differs by the values themselves).
LITERT_TOLERANCE = 1e-3

# stage progress: (stage name, done, total)
StageFn = Callable[[str, int, int], None]


class FeatureCacheError(ValueError):
    """A cache entry that does not belong to the split it is read for (wrong rows or shape)."""


@dataclass
class FeatureSet:
    """Vectors of one split over several targets (and views): ``heads`` is each row's target index."""

    features: np.ndarray  # float32 [N, D]
    labels: np.ndarray  # float32 [N, G]
    heads: np.ndarray  # int32 [N]


@dataclass
class CacheLog:
    """Which entries this training computed and which it found in the store (keys)."""

    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    total: int = 0  # entries this training needs, for progress reports


def parse_views(text: str) -> list[str]:
    views = [view.strip() for view in text.split(",") if view.strip()]
    unknown = [view for view in views if view not in FEATURE_VIEWS]
    if not views or unknown:
        raise ValueError(f"views are a comma list of {', '.join(FEATURE_VIEWS)}, not {text!r}")
    if "plain" not in views:
        raise ValueError(f"views {text!r} must include plain (the posters as served)")
    return list(dict.fromkeys(views))


def view_pixels(pixels: np.ndarray, view: str) -> np.ndarray:
    """The ``view`` of uint8 posters ``[N, S, S, 3]``, as float32 0..255."""
    if view == "plain":
        return pixels.astype(np.float32)
    if view == "flip":
        return pixels[:, :, ::-1, :].astype(np.float32)
    if view == "degraded":
        return np.stack([_degrade(poster) for poster in pixels]).astype(np.float32) if len(pixels) else \
            pixels.astype(np.float32)
    raise ValueError(f"unknown view {view!r}; choose one of {', '.join(FEATURE_VIEWS)}")


def _degrade(poster: np.ndarray) -> np.ndarray:
    from PIL import Image

    side = poster.shape[0]
    small = Image.fromarray(poster).resize((max(1, side // 2), max(1, side // 2)), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=DEGRADED_JPEG_QUALITY)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB").resize((side, side), Image.Resampling.BILINEAR))


def backbone_fingerprint(extractor: keras.Model, hp: Hyperparameters, image_size: int) -> str:
    """``<architecture>-<side>px-<digest>``: the digest covers every weight of the extractor."""
    digest = hashlib.sha256(f"{FEATURES_FORMAT}:{hp.architecture}:{image_size}".encode())
    # Values and shapes, not names: Keras numbers unnamed layers per process, the weights are the same.
    for weight in extractor.weights:
        value = np.ascontiguousarray(np.asarray(weight.numpy()))
        digest.update(f"{value.shape}:{value.dtype}".encode())
        digest.update(value.tobytes())
    side = hp.resolution or image_size
    return f"{hp.architecture}-{side}px-{digest.hexdigest()[:16]}"


def features_key(dataset_id: str, fingerprint: str, target: str, split: str, view: str) -> str:
    return f"features/{dataset_id}/{fingerprint}/{target}/{split}-{view}.npz"


def _encode(features: np.ndarray, labels: np.ndarray, movie_ids: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, features=features, labels=labels, movie_ids=movie_ids)
    return buffer.getvalue()


def _decode(data: bytes, key: str, expected_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(data)) as stored:
        features, labels, ids = stored["features"], stored["labels"], stored["movie_ids"]
    # The manifest lists each split's movies; a cache entry for other rows is not this split's.
    if sorted(int(i) for i in ids) != sorted(expected_ids) or len(features) != len(ids):
        raise FeatureCacheError(f"feature cache {key} does not hold the split's {len(expected_ids)} posters "
                                f"(it holds {len(ids)}); delete it to recompute")
    return features.astype(np.float32), labels.astype(np.float32)


class FeatureRunner:
    """The pooled features of posters, computed with the weights of a Keras ``extractor``.

    On a CPU they are computed through LiteRT (XNNPACK), not Keras: for EfficientNet-Lite0 at 320 px on
    2 cores, LiteRT ran 5.7 times Keras' ``predict`` (docs/benchmarks.md, "Feature extraction"), and
    the features step is most of a features training. The extractor is converted once, on the first
    entry to compute (a training that finds every entry cached converts nothing), and its first
    posters are checked against Keras: a conversion that fails, or that disagrees, leaves Keras to
    compute every vector (logged), so a wrong conversion cannot reach the cache. With a GPU, Keras.
    The vectors of either runtime agree to about 1e-5, so they share cache entries (FEATURES_FORMAT
    is unchanged): the same demo model came out of each.
    """

    def __init__(self, extractor: keras.Model, runtime: str = "auto") -> None:
        if runtime not in FEATURE_RUNTIMES:
            raise ValueError(f"feature runtime is one of {', '.join(FEATURE_RUNTIMES)}, not {runtime!r}")
        self.extractor = extractor
        self.requested = runtime
        self.runtime = ""  # "litert" or "keras" once the first vectors are computed
        self.conversion_s = 0.0
        self._litert: Callable[[np.ndarray], np.ndarray] | None = None  # kept only when "litert"

    @property
    def dim(self) -> int:
        return int(self.extractor.outputs[0].shape[-1])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """``[N, D]`` float32 vectors of float32 posters ``[N, S, S, 3]`` (0..255)."""
        if not len(pixels):
            return np.zeros((0, self.dim), np.float32)
        if not self.runtime:
            self.runtime = self._choose(pixels[:LITERT_CHECK_POSTERS])
        if self._litert is not None:
            return self._litert(pixels)
        return np.asarray(self.extractor.predict(pixels, batch_size=EXTRACT_BATCH, verbose=0), np.float32)

    def _choose(self, sample: np.ndarray) -> str:
        if self.requested == "keras" or (self.requested == "auto" and _has_gpu()):
            return "keras"
        started = time.monotonic()
        try:
            litert = litert_features(self.extractor)
            converted = litert(sample)
        except Exception as exc:  # the converter and interpreter raise ConverterError, RuntimeError, ...
            if self.requested == "litert":
                raise
            logger.warning("features through Keras: LiteRT conversion failed (%s)", str(exc).strip()[-300:])
            return "keras"
        finally:
            self.conversion_s = time.monotonic() - started
        reference = np.asarray(self.extractor(sample, training=False), np.float32)
        error = float(np.abs(converted - reference).max())
        if error > LITERT_TOLERANCE * max(1.0, float(np.abs(reference).max())):
            if self.requested == "litert":
                raise FeatureCacheError(f"LiteRT features differ from Keras' by {error:.3g}")
            logger.warning("features through Keras: LiteRT's differ from Keras' by %.3g", error)
            return "keras"
        logger.info("features through LiteRT (converted in %.1f s; largest difference from Keras %.2g)",
                    self.conversion_s, error)
        self._litert = litert  # a rejected conversion is not kept (nor its interpreter's memory)
        return "litert"


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def litert_features(extractor: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """``extractor`` converted to a float LiteRT model, as a function of float32 posters.

    Through a SavedModel written by Keras' ExportArchive: the converter's supported path for Keras 3
    models (as ``services.trainer.export`` does for the served model).
    """
    import tempfile

    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    side = int(extractor.inputs[0].shape[1])
    with tempfile.TemporaryDirectory(prefix="features-litert-") as folder:
        archive = keras.export.ExportArchive()
        archive.track(extractor)
        archive.add_endpoint(name="features", fn=lambda pixels: extractor(pixels, training=False),
                             input_signature=[tf.TensorSpec([None, side, side, 3], tf.float32)])
        archive.write_out(folder, verbose=False)
        content = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["features"]).convert()
    interpreter = Interpreter(model_content=content, num_threads=os.cpu_count() or 1)
    runner = interpreter.get_signature_runner("features")
    (input_name,) = runner.get_input_details()
    (output_name,) = runner.get_output_details()

    def run(pixels: np.ndarray) -> np.ndarray:
        # One poster a call: on 2 cores it ran faster than batches of 8 or 32 (XNNPACK's threads
        # split each layer; a fixed shape also spares re-allocating the interpreter's tensors).
        return np.concatenate([runner(**{input_name: pixels[index:index + 1].astype(np.float32)})[output_name]
                               for index in range(len(pixels))])

    return run


def split_features(store: ObjectStore, manifest: dict[str, Any], runner: FeatureRunner, fingerprint: str,
                   target: str, split: str, view: str, log: CacheLog,
                   stage: StageFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(features [N, D], labels [N, G])`` of one split of one target in one view, cached."""
    from shared.dataset_reader import load_arrays

    key = features_key(str(manifest["id"]), fingerprint, target, split, view)
    expected = [int(i) for i in manifest["targets"][target]["splits"][split]]
    try:
        data = store.get(key)
    except ObjectNotFoundError:
        data = None
    if data is not None:
        features, labels = _decode(data, key, expected)
        log.reused.append(key)
    else:
        pixels, labels, movie_ids, _years = load_arrays(store, manifest, target, split)
        features = runner(view_pixels(pixels, view))
        # Another worker may have written it meanwhile: the same backbone on the same posters gives the
        # same vectors, so either copy will do.
        store.put(key, _encode(features, labels, movie_ids), content_type="application/octet-stream")
        log.computed.append(key)
    if stage is not None:
        stage("features", len(log.computed) + len(log.reused), log.total)
    return features, labels


def feature_set(store: ObjectStore, manifest: dict[str, Any], runner: FeatureRunner, fingerprint: str,
                targets: list[str], split: str, views: list[str], log: CacheLog,
                stage: StageFn | None = None) -> FeatureSet:
    """Vectors of ``split`` for every target (head index = position in ``targets``) and view."""
    features, labels, heads = [], [], []
    for view in views:
        for head, target in enumerate(targets):
            part_features, part_labels = split_features(store, manifest, runner, fingerprint, target,
                                                        split, view, log, stage)
            features.append(part_features)
            labels.append(part_labels)
            heads.append(np.full(len(part_labels), head, np.int32))
    return FeatureSet(np.concatenate(features), np.concatenate(labels), np.concatenate(heads))


def head_models(feature_dim: int, genres: int, years: int, layout: str, hp: Hyperparameters
                ) -> tuple[keras.Model, keras.Model]:
    """``(training, scoring)`` head-only models on feature vectors, with the full model's layer names.

    For the shared layout the training model also takes the head index and returns that head's
    scores (as the full training model does); the scoring model returns ``[N, Y, G]``.
    """
    import keras
    from keras import layers

    from services.trainer.models import SelectHead, independent_head, shared_heads

    vectors = keras.Input((feature_dim,), name="features", dtype="float32")
    x = layers.Dropout(hp.dropout, name="dropout")(vectors) if hp.dropout > 0 else vectors
    if layout != "shared":
        scores = independent_head(x, genres)
        model = keras.Model(vectors, scores, name="heads")
        return model, model
    head = keras.Input((), name="head", dtype="int32")
    scores = shared_heads(x, genres, years, hp)
    selected = SelectHead(name="own_head")(scores, head)
    training = keras.Model([vectors, head], selected, name="heads")
    return training, keras.Model(vectors, scores, name="heads_scores")


def head_scores(scoring: keras.Model, data: FeatureSet) -> np.ndarray:
    """Each row's scores under its own head, ``[N, G]``."""
    if len(data.labels) == 0:
        return np.zeros_like(data.labels)
    scores = np.asarray(scoring.predict(data.features, batch_size=1024, verbose=0))
    if scores.ndim == 3:
        scores = scores[np.arange(len(scores)), data.heads]
    return scores


def train_heads(train: FeatureSet, validation: FeatureSet, genres: int, years: int, layout: str,
                hp: Hyperparameters, progress: Callable[[int, dict[str, float]], None] | None = None
                ) -> tuple[keras.Model, keras.Model, dict[str, list[float]]]:
    """Train the heads on feature vectors; keeps the epoch with the best validation ROC-AUC.

    With ``hp.head_seeds`` > 1 the heads are trained once per seed (``hp.seed``, ``hp.seed + 1``, ...),
    each keeping its best epoch, and the returned heads hold the seeds' weights averaged. The heads are
    linear in the features, so that averages the seeds' logits: one head, as cheap to serve as each,
    with less of one run's noise (on the shared collection it gained 0.0075 validation ROC-AUC over
    one seed, docs/models.md). ``progress`` numbers the epochs of all seeds one after another.

    Returns ``(training, scoring, history)``; ``history`` is the first seed's, per epoch (the averaged
    heads' own validation metrics: :func:`validation_metrics`).
    """
    from dataclasses import replace

    import keras

    from services.trainer.models import compile_model

    # hp.epochs counts the fine-tune's epochs; the heads' learning-rate schedule spans head_epochs.
    steps = max(1, -(-len(train.labels) // hp.batch_size))

    epochs_before = 0

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if progress is not None:
                logged = {key: float(value) for key, value in (logs or {}).items()}
                progress(epochs_before + epoch + 1, logged)

    histories: list[dict[str, list[float]]] = []
    seed_weights: list[list[np.ndarray]] = []
    for offset in range(max(1, hp.head_seeds)):
        keras.utils.set_random_seed(hp.seed + offset)
        training, scoring = head_models(train.features.shape[1], genres, years, layout, hp)
        # A whole epoch per graph call: the same updates, 1.3x faster heads on 2 cores (demo: 86 -> 67 s).
        compile_model(training, replace(hp, epochs=hp.head_epochs), steps_per_epoch=steps,
                      steps_per_execution=steps)
        stop = keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=hp.head_patience,
                                             restore_best_weights=True)
        fitted = training.fit(head_inputs(train, layout), train.labels, batch_size=hp.batch_size,
                              epochs=hp.head_epochs, shuffle=True, callbacks=[stop, Report()], verbose=0,
                              validation_data=(head_inputs(validation, layout), validation.labels))
        histories.append({key: [float(v) for v in values] for key, values in fitted.history.items()})
        epochs_before += len(histories[-1].get("loss", []))
        seed_weights.append(training.get_weights())
    if len(seed_weights) > 1:
        # ``training`` and ``scoring`` share their layers: the last seed's model receives the average.
        per_layer_weight = zip(*seed_weights, strict=True)  # one tuple per weight, a value per seed
        training.set_weights([np.mean(np.stack(values), axis=0) for values in per_layer_weight])
    return training, scoring, histories[0]


def head_inputs(data: FeatureSet, layout: str) -> Any:
    """What the training head model takes: the vectors, and each row's year head for ``shared``."""
    return [data.features, data.heads] if layout == "shared" else data.features


def validation_metrics(training: keras.Model, validation: FeatureSet, layout: str, batch_size: int
                       ) -> dict[str, float]:
    """The training metrics of ``training`` as it is now, on validation, named as Keras names them in a
    fit's history (``val_auc``...): after several seeds the averaged heads are scored by the same
    measure as a fine-tune epoch, which must beat them to be kept."""
    scores = training.evaluate(head_inputs(validation, layout), validation.labels, batch_size=batch_size,
                               verbose=0, return_dict=True)
    return {f"val_{name}": float(value) for name, value in scores.items()}


def copy_head_weights(heads: keras.Model, model: keras.Model) -> list[str]:
    """Load the head layers' weights into the full model, by layer name; returns the names copied."""
    copied = []
    for layer in heads.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
            copied.append(layer.name)
    if not copied:
        raise ValueError("the head model has no weights to copy")
    return copied
