"""The embedded inference server's Prometheus metrics, scraped from a running server."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from services.inference.metrics import PROMETHEUS_PATH
from services.inference.server import EmbeddedServer
from shared.config import Settings
from shared.inference_client import InferenceClient, ModelNotFound
from tests.prometheus import scrape, value
from tests.services.inference.conftest import random_pixels, write_pixels_model

FAMILIES = {
    "postergenre_inference_requests", "postergenre_inference_request_duration_seconds",
    "postergenre_inference_batch_size", "postergenre_inference_queue_wait_seconds",
    "postergenre_inference_batch_duration_seconds", "postergenre_inference_model_loads",
    "postergenre_inference_model_load_duration_seconds", "postergenre_inference_model_version_loaded",
    "process_cpu_seconds", "python_gc_collections",
}


@pytest.fixture
def metered(settings: Settings, yearly_models: dict[str, int]) -> Iterator[EmbeddedServer]:
    from services.inference.server import start_server

    server = start_server(settings.models_dir, settings.models_config_path, grpc_port=0, rest_port=0,
                          poll_seconds=0, batch_timeout_ms=20.0, metrics_port=0)
    try:
        yield server
    finally:
        server.stop(grace=0.5)


def test_requests_batches_and_reloads_are_counted_by_model_and_version(
    metered: EmbeddedServer, models_dir: Path
) -> None:
    assert metered.metrics_url and metered.metrics_url.endswith(PROMETHEUS_PATH)
    with InferenceClient(metered.url, timeout=10) as client:
        # Eight concurrent single-poster requests: the batcher merges some of them.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: client.predict("genre-2000", random_pixels(1, seed=i)), range(8)))
        with pytest.raises(ModelNotFound):
            client.predict("genre-1900", random_pixels(1))
        write_pixels_model(models_dir / "genre-2000" / "2", seed=5)
        metered.manager.refresh()
        _, version = client.predict("genre-2000", random_pixels(2))
    assert version == 2

    families = scrape(metered.metrics_url)
    assert FAMILIES <= set(families), FAMILIES - set(families)
    ok = {"model": "genre-2000", "signature": "pixels", "outcome": "OK"}
    assert value(families, "postergenre_inference_requests_total", version="1", **ok) == 8
    assert value(families, "postergenre_inference_requests_total", version="2", **ok) == 1
    assert value(families, "postergenre_inference_requests_total", model="genre-1900",
                 outcome="NOT_FOUND") == 1
    # Every row went through a batch; eight requests in fewer batches than requests means merging.
    batch = {"model": "genre-2000", "version": "1", "signature": "pixels"}
    assert value(families, "postergenre_inference_batch_size_sum", **batch) == 8
    assert 1 <= value(families, "postergenre_inference_batch_size_count", **batch) < 8
    assert value(families, "postergenre_inference_queue_wait_seconds_count", **batch) == 8
    # Three first loads, then one hot reload of genre-2000 version 2; the loaded versions follow.
    assert value(families, "postergenre_inference_model_loads_total", kind="load", outcome="success") == 3
    assert value(families, "postergenre_inference_model_loads_total", model="genre-2000", version="2",
                 kind="reload", outcome="success") == 1
    assert value(families, "postergenre_inference_model_load_duration_seconds_count", model="genre-2000") == 2
    assert value(families, "postergenre_inference_model_version_loaded", model="genre-2000", version="2") == 1

    # TF Serving's path on the REST port answers the same families.
    assert FAMILIES <= set(scrape(f"{metered.rest_url}{PROMETHEUS_PATH}"))


def test_a_failing_metric_never_fails_a_prediction_or_a_load(
    metered: EmbeddedServer, models_dir: Path
) -> None:
    metrics = metered.manager.metrics
    assert metrics is not None
    # Break the recording of requests and of a new version's batches: the version must still load
    # and predictions must still be answered.
    metrics.requests = None  # type: ignore[assignment]
    metrics.batch_size = None  # type: ignore[assignment]
    write_pixels_model(models_dir / "genre-2001" / "2", seed=9)
    metered.manager.refresh()
    with InferenceClient(metered.url, timeout=10) as client:
        scores, version = client.predict("genre-2001", random_pixels(3))
    assert scores.shape[0] == 3 and version == 2 and np.isfinite(scores).all()
    families = scrape(str(metered.metrics_url))
    assert value(families, "postergenre_inference_model_loads_total", model="genre-2001", version="2") == 1
