"""Prometheus metrics of the web service, in a registry of its own (one per app, so tests can build
several apps in one process without duplicate-metric errors), with the process (CPU, memory, open
files) and garbage-collector collectors that the default registry would have had."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class WebMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter("postergenre_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("postergenre_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("postergenre_predictions", "Year predictions served, by year",
                                   ["year"], registry=self.registry)
        self.unavailable = Counter("postergenre_unavailable_years", "Requested years without a model",
                                   ["year"], registry=self.registry)
        self.errors = Counter("postergenre_errors", "Error responses by error code", ["code"],
                              registry=self.registry)
        self.cache = Counter("postergenre_prediction_cache", "Score cache lookups", ["result"],
                             registry=self.registry)
        self.inference_latency = Histogram("postergenre_inference_duration_seconds",
                                           "Latency of one inference call, by model", ["model"],
                                           buckets=LATENCY_BUCKETS, registry=self.registry)


class RequestMetricsMiddleware:
    """Counts requests and times them by route template (``/api/v1/admin/jobs/{job_id}``), so the
    label set stays small whatever the paths requested."""

    def __init__(self, app: ASGIApp, metrics: WebMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method=method, route=template, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=template).observe(time.perf_counter() - started)
