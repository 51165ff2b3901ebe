"""``postergenre bench train``: training and prediction throughput of one architecture on random pixels.

The numbers go in docs/benchmarks.md with the machine they were measured on; they size the CPU recipe
(how many epochs fit in an hour) and the serving cost of each layout.
"""

from __future__ import annotations

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
