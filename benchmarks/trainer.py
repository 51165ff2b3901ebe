"""``postergenre bench train``: training and prediction throughput of one architecture on random pixels.

The numbers go in docs/benchmarks.md with the machine they were measured on; they size the CPU recipe
(how many epochs fit in an hour) and the serving cost of each layout.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


def run_training_benchmark(architecture: str, image_size: int, resolution: int | None, batch_size: int,
                           steps: int, genres: int = 20, seed: int = 0) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from services.trainer.models import build_independent_model, compile_model
    from shared.hyperparameters import default_hyperparameters

    hp = default_hyperparameters(architecture, resolution=resolution or image_size, batch_size=batch_size,
                                 weights="none")
    model = build_independent_model(image_size, genres, hp)
    compile_model(model, hp)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(batch_size, image_size, image_size, 3)).astype(np.float32)
    labels = (rng.random((batch_size, genres)) < 0.15).astype(np.float32)
    data = tf.data.Dataset.from_tensors((pixels, labels)).repeat()
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)  # build and trace outside the timing
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    train_seconds = time.perf_counter() - started
    model.predict(pixels, batch_size=batch_size, verbose=0)
    started = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(pixels)
    predict_seconds = time.perf_counter() - started
    single = pixels[:1]
    model.predict_on_batch(single)
    started = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(single)
    single_seconds = (time.perf_counter() - started) / steps
    return {
        "architecture": architecture, "image_size": image_size, "resolution": hp.resolution,
        "batch_size": batch_size, "steps": steps, "parameters": int(model.count_params()),
        "train_images_per_s": round(steps * batch_size / train_seconds, 1),
        "predict_images_per_s": round(steps * batch_size / predict_seconds, 1),
        "predict_one_ms": round(1000 * single_seconds, 2),
        "keras": keras.__version__, "tensorflow": tf.__version__,
        "devices": [d.device_type for d in tf.config.list_physical_devices()],
    }


def run_features_benchmark(architecture: str, weights: str, side: int, posters: int, seed: int = 0
                           ) -> dict[str, Any]:
    """Pooled features of ``posters`` random posters: Keras' ``predict`` against the LiteRT runner the
    features strategy uses on a CPU (conversion timed apart), in one run."""
    import tensorflow as tf

    from services.trainer.features import EXTRACT_BATCH, FeatureRunner
    from services.trainer.models import build_independent_model, feature_extractor
    from shared.hyperparameters import default_hyperparameters

    hp = default_hyperparameters(architecture, resolution=side, weights=weights)
    extractor = feature_extractor(build_independent_model(side, 20, hp), side)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(posters, side, side, 3)).astype(np.float32)
    extractor.predict(pixels[:EXTRACT_BATCH], batch_size=EXTRACT_BATCH, verbose=0)  # trace outside the timing
    started = time.perf_counter()
    reference = np.asarray(extractor.predict(pixels, batch_size=EXTRACT_BATCH, verbose=0))
    keras_seconds = time.perf_counter() - started
    runner = FeatureRunner(extractor, "litert")
    runner(pixels[:1])  # converts and checks against Keras
    started = time.perf_counter()
    converted = runner(pixels)
    litert_seconds = time.perf_counter() - started
    return {
        "architecture": architecture, "weights": weights, "side": side, "posters": posters,
        "keras_posters_per_s": round(posters / keras_seconds, 1),
        "litert_posters_per_s": round(posters / litert_seconds, 1),
        "litert_over_keras": round(keras_seconds / litert_seconds, 2),
        "litert_conversion_s": round(runner.conversion_s, 1),
        "largest_difference": float(np.abs(converted - reference).max()),
        "tensorflow": tf.__version__, "cpus": os.cpu_count(),
    }
