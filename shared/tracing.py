"""OpenTelemetry traces: one trace per request, from the web service through gRPC to the model, and
from an admin call through the queue to the worker.

Off unless an OTLP endpoint is configured, with the standard variables: ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), e.g. ``http://otel-collector:4317`` (OTLP over gRPC;
``http://`` means plaintext). Off costs nothing: this module imports no part of OpenTelemetry, no
tracer provider is installed and nothing is instrumented (``tests/shared/test_tracing.py`` checks it).

On, :func:`start_tracing` (called once by ``serve web``, ``serve inference`` and each worker process)
installs an SDK tracer provider whose spans a background thread batches to the endpoint, and
instruments the gRPC client and server, Celery and SQLAlchemy engines created from then on; the web
app is instrumented by :func:`instrument_app` in ``create_app``. Context travels in the gRPC
metadata (``traceparent``) and in the Celery task headers. An exporter that fails (collector down,
wrong address) loses spans, never a request: exports run in the processor's thread, and its errors
are logged by the SDK.

The other standard variables apply: ``OTEL_SERVICE_NAME`` (default ``postergenre-web``,
``-inference``, ``-worker``), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_EXPORTER_OTLP_TIMEOUT``, ``OTEL_BSP_*`` (batching), ``OTEL_TRACES_SAMPLER``; and
``OTEL_SDK_DISABLED=true`` turns tracing off whatever the endpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# Probes and scrapes would be most of the spans and say nothing about a request.
EXCLUDED_URLS = "/healthz,/readyz,/metrics,/static"


def otlp_endpoint(environ: Mapping[str, str] = os.environ) -> str | None:
    """The configured OTLP endpoint, or ``None`` when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    for name in ENDPOINT_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


@dataclass
class Tracing:
    """The installed provider and the instrumentors applied with it."""

    provider: Any  # opentelemetry.sdk.trace.TracerProvider
    instrumentors: list[Any] = field(default_factory=list)

    def instrument_app(self, app: Any) -> None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=self.provider, excluded_urls=EXCLUDED_URLS)

    def shutdown(self) -> None:
        """Undo the instrumentation and flush (then stop) the exporter; for tests and clean exits."""
        global _active
        for instrumentor in self.instrumentors:
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()
        self.provider.shutdown()
        if _active is self:
            _active = None


_active: Tracing | None = None


def active() -> Tracing | None:
    return _active


def start_tracing(service_name: str, exporter: Any = None, *, simple: bool = False) -> Tracing | None:
    """Install tracing for this process when an endpoint is configured (or ``exporter`` is given);
    returns it, or ``None`` when tracing is off. Idempotent: a second call returns the first's.

    ``simple`` exports each span as it ends (tests); the default batches them in a background thread.
    The provider becomes OpenTelemetry's global one: the gRPC client instrumentation uses that one
    whatever it is given.
    """
    global _active
    if _active is not None:
        return _active
    endpoint = otlp_endpoint()
    if exporter is None and endpoint is None:
        return None
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient, GrpcInstrumentorServer
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None:
        # Created before the gRPC client is instrumented: its own channel makes no spans.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint)
    # OTEL_SERVICE_NAME, when set, wins over the default name (attributes given here would win).
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter))
    tracing = Tracing(provider)
    for instrumentor, options in (
        (GrpcInstrumentorClient(), {}),
        (GrpcInstrumentorServer(), {}),
        (CeleryInstrumentor(), {}),
        # SQLAlchemy 2.1 is past the range this instrumentation declares (< 2.1) but its engine events
        # are unchanged; without skip_dep_check it would instrument nothing.
        (SQLAlchemyInstrumentor(), {"enable_commenter": False, "skip_dep_check": True}),
    ):
        instrumentor.instrument(tracer_provider=provider, **options)
        tracing.instrumentors.append(instrumentor)
    trace.set_tracer_provider(provider)
    _active = tracing
    log.info("tracing on: %s exports to %s", service_name, endpoint or type(exporter).__name__)
    return tracing


def instrument_app(app: Any) -> None:
    """Trace the FastAPI ``app``'s requests when tracing is on; nothing otherwise."""
    if _active is not None:
        _active.instrument_app(app)


def trace_worker_processes(pool: str) -> None:
    """Start tracing in the worker process that runs the tasks: each prefork child (the exporter's
    thread would not survive the fork, so not before it), else this one."""
    if otlp_endpoint() is None:
        return
    if pool == "prefork":
        from celery import signals

        signals.worker_process_init.connect(_start_in_child, weak=False)
    else:
        start_tracing("postergenre-worker")


def _start_in_child(**_kwargs: Any) -> None:
    start_tracing("postergenre-worker")
