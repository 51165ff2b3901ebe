"""Prometheus metrics of the embedded inference server, in a registry of its own.

The server answers them on a port of its own (``POSTERGENRE_INFERENCE_METRICS_PORT``,
``--metrics-port``) and on its REST port, both at TF Serving's path
``/monitoring/prometheus/metrics``, so one scrape configuration reads either server. The families
are this project's (``postergenre_inference_*``), not TF Serving's ``:tensorflow:serving:*`` ones,
whose names are not valid in every Prometheus client.

Recording goes through :func:`shared.metrics.guarded`: a metric that fails never fails a prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from shared.metrics import BATCH_SIZE_BUCKETS, DURATION_BUCKETS_S, LATENCY_BUCKETS_S, guarded

if TYPE_CHECKING:
    from services.inference.models import ServingState

log = logging.getLogger(__name__)

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's default path
BatchObserver = Callable[[int, list[float], float], None]
LOADED_VERSIONS_FAMILY = "postergenre_inference_model_version_loaded"  # a gauge, made at scrape time


class LoadedVersionsCollector(Collector):
    """``postergenre_inference_model_version_loaded{model,version}``: 1 for every version served now,
    read from the manager's state at scrape time (no bookkeeping to keep in step)."""

    def __init__(self, state: Callable[[], ServingState]) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(LOADED_VERSIONS_FAMILY,
                                   "1 for each model version the server serves now",
                                   labels=["model", "version"])
        for name, entry in sorted(self.state().models.items()):
            for version in sorted(entry.versions):
                family.add_metric([name, str(version)], 1.0)
        yield family


class InferenceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter(
            "postergenre_inference_requests", "Predict requests by model, version, signature and outcome "
            "(OK or the gRPC status code)", ["model", "version", "signature", "outcome"],
            registry=self.registry)
        self.request_latency = Histogram(
            "postergenre_inference_request_duration_seconds", "Predict latency inside the server, by model",
            ["model", "signature"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.batch_size = Histogram(
            "postergenre_inference_batch_size", "Rows in each batch run, by model version and signature",
            ["model", "version", "signature"], buckets=BATCH_SIZE_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram(
            "postergenre_inference_queue_wait_seconds",
            "Time a request waited in the batch queue before its batch ran",
            ["model", "version", "signature"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.batch_duration = Histogram(
            "postergenre_inference_batch_duration_seconds", "Time to run one batch through the model",
            ["model", "version", "signature"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.loads = Counter(
            "postergenre_inference_model_loads", "Model version loads: kind load (the model's first "
            "version) or reload (a hot reload while it serves), outcome success or failure",
            ["model", "version", "kind", "outcome"], registry=self.registry)
        self.load_duration = Histogram(
            "postergenre_inference_model_load_duration_seconds", "Time to load and warm up a model version",
            ["model", "version", "kind"], buckets=DURATION_BUCKETS_S, registry=self.registry)
        self.unloads = Counter("postergenre_inference_model_unloads", "Model versions unloaded, by model",
                               ["model"], registry=self.registry)
        self._request_children: dict[tuple[str, int | None, str, str], tuple[Any, Any]] = {}

    def watch(self, state: Callable[[], ServingState]) -> None:
        """Export which versions are loaded, read from ``state`` at each scrape."""
        self.registry.register(LoadedVersionsCollector(state))

    @guarded
    def request(self, model: str, version: int | None, signature: str, outcome: str, seconds: float) -> None:
        # The labelled children are looked up once per label set: labels() takes a lock and builds
        # a tuple each call, which on the prediction path is worth skipping.
        key = (model, version, signature, outcome)
        children = self._request_children.get(key)
        if children is None:
            signature = signature or "serving_default"
            children = (
                self.requests.labels(model=model, version="" if version is None else str(version),
                                     signature=signature, outcome=outcome),
                self.request_latency.labels(model=model, signature=signature),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    @guarded
    def load(self, model: str, version: int, kind: str, ok: bool, seconds: float) -> None:
        self.loads.labels(model=model, version=str(version), kind=kind,
                          outcome="success" if ok else "failure").inc()
        self.load_duration.labels(model=model, version=str(version), kind=kind).observe(seconds)

    @guarded
    def unload(self, model: str) -> None:
        self.unloads.labels(model=model).inc()

    def batch_observer(self, model: str, version: int, signature: str) -> BatchObserver:
        """The callback a batcher calls after each batch: rows, each request's queue wait, run time."""
        labels = {"model": model, "version": str(version), "signature": signature}
        try:
            batch_size = self.batch_size.labels(**labels)
            batch_duration = self.batch_duration.labels(**labels)
            queue_wait = self.queue_wait.labels(**labels)
        except Exception:  # a model loads and serves without its batch metrics rather than not at all
            log.warning("metrics: no batch metrics for %s version %d", model, version, exc_info=True)
            return lambda rows, waits, run_s: None

        @guarded
        def observe(rows: int, waits: list[float], run_s: float) -> None:
            batch_size.observe(rows)
            batch_duration.observe(run_s)
            for wait in waits:
                queue_wait.observe(wait)

        return observe

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
