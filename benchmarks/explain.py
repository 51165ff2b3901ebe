"""``postergenre bench explain``: an explanation's latency against one prediction of the same model.

One model (random weights; built by :mod:`services.trainer.models`, exported by the trainer's
exporter, so it has the ``explain`` signature), served by the embedded gRPC server with TensorFlow
(both signatures run by the same engine), asked from one client in the same run, interleaved:

* ``predict``: the ``pixels`` signature, one poster (what one model costs a table);
* ``explain_one``: the ``explain`` signature, one poster, one genre (a click on the page);
* ``explain_all``: the ``explain`` signature, one poster, every genre (the API without ``genre``).

The ratio ``explain_one / predict`` is what an explanation costs over a prediction: one backbone pass
plus the gradient of the layers after the feature map.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.hyperparameters import Hyperparameters
from shared.machine import machine_info


def _p(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 2)


def run_explain_benchmark(architecture: str, layout: str, image_size: int, years: int, genres: int,
                          repeats: int, seed: int = 0) -> dict[str, Any]:
    import keras

    from services.inference.server import start_server
    from services.trainer.export import export_saved_model
    from services.trainer.models import build_independent_model, build_shared_model
    from shared.inference_client import InferenceClient

    keras.utils.set_random_seed(seed)
    hp = Hyperparameters(architecture=architecture, augment=False, dropout=0.0, seed=seed)
    if layout == "shared":
        _, model = build_shared_model(image_size, genres, years, hp)
    else:
        model = build_independent_model(image_size, genres, hp)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(1, image_size, image_size, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="bench-explain-") as folder:
        started = time.perf_counter()
        export_saved_model(model, Path(folder) / "genre-bench" / "1", image_size)
        export_seconds = time.perf_counter() - started
        server = start_server(Path(folder), None, poll_seconds=0, backend="tensorflow")
        try:
            with InferenceClient(server.url, timeout=120) as client:
                head = years - 1 if layout == "shared" else 0
                every_genre = [list(range(genres))]
                calls = {
                    "predict": lambda: client.predict("genre-bench", pixels),
                    "explain_one": lambda: client.explain("genre-bench", pixels, [head], [[0]]),
                    "explain_all": lambda: client.explain("genre-bench", pixels, [head], every_genre),
                }
                for call in calls.values():  # trace and warm every signature outside the timing
                    call()
                    call()
                seconds: dict[str, list[float]] = {key: [] for key in calls}
                for _ in range(repeats):  # interleaved, so a busy moment of the machine hits all three
                    for key, call in calls.items():
                        started = time.perf_counter()
                        call()
                        seconds[key].append(time.perf_counter() - started)
                heatmap = client.explain("genre-bench", pixels, [head], [[0]]).heatmaps.shape[2:]
        finally:
            server.stop(grace=0)
    p50 = {key: _p(values, 50) for key, values in seconds.items()}
    return {
        "architecture": architecture, "layout": layout, "image_size": image_size,
        "years": years if layout == "shared" else 1, "genres": genres, "repeats": repeats,
        "heatmap": list(heatmap), "export_seconds": round(export_seconds, 1),
        "p50_ms": p50, "p95_ms": {key: _p(values, 95) for key, values in seconds.items()},
        "explain_one_over_predict": round(p50["explain_one"] / p50["predict"], 2),
        "explain_all_over_predict": round(p50["explain_all"] / p50["predict"], 2),
        "machine": machine_info(),
    }
