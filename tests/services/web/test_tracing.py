"""OpenTelemetry traces of a prediction: the web app and the real embedded gRPC server, both started
here (embedded mode), with an in-memory exporter; off, tracing must cost nothing."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.embedded import create_app
from shared.config import Settings
from shared.tracing import Tracing, otlp_endpoint, start_tracing
from tests.conftest import make_poster
from tests.services.web.conftest import register_models, wait_until_ready
from tests.services.web.tiny_models import TinyModel

PREDICT = "/tensorflow.serving.PredictionService/Predict"


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def predict_once(settings: Settings, tiny_models: list[TinyModel]) -> Any:
    register_models(settings, tiny_models[:1], retired=set())
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        poster = {"file": ("p.jpg", make_poster(43), "image/jpeg")}
        return client.post("/api/v1/predictions", params={"years": "2000"}, files=poster)


def forget_global_provider() -> None:
    """Let the next test install its own global tracer provider (OpenTelemetry allows one per process;
    its own tests reset it the same way)."""
    from opentelemetry import trace
    from opentelemetry.util._once import Once

    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture
def in_memory(no_otel_env: None) -> Iterator[tuple[Tracing, Any]]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing = start_tracing("postergenre-test", exporter, simple=True)
    assert tracing is not None
    try:
        yield tracing, exporter
    finally:
        tracing.shutdown()
        forget_global_provider()


def test_one_prediction_is_one_trace_from_the_web_through_grpc_to_the_server(
        settings: Settings, tiny_models: list[TinyModel], in_memory: tuple[Tracing, Any]) -> None:
    from opentelemetry.trace import SpanKind

    _, exporter = in_memory
    response = predict_once(settings, tiny_models)
    assert response.status_code == 200, response.text
    spans = exporter.get_finished_spans()
    [web] = [s for s in spans if s.kind == SpanKind.SERVER and s.name == "POST /api/v1/predictions"]
    trace_id = web.context.trace_id
    predict_clients = [s for s in spans if s.kind == SpanKind.CLIENT and s.name == PREDICT]
    predict_servers = [s for s in spans if s.kind == SpanKind.SERVER and s.name == PREDICT]
    assert len(predict_clients) == len(predict_servers) == 1, sorted({(s.name, s.kind.name) for s in spans})
    [client], [server] = predict_clients, predict_servers
    # One trace: the gRPC call is made inside the web request, and the server's span is the child of
    # the client's (the context crossed in the gRPC metadata).
    assert client.context.trace_id == server.context.trace_id == trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.parent.is_remote
    assert server.resource.attributes["service.name"] == "postergenre-test"
    # The registry query of the request (SQLAlchemy) is in the same trace.
    assert any(s.context.trace_id == trace_id and s.attributes and "db.system" in str(dict(s.attributes))
               for s in spans), [(s.name, dict(s.attributes or {})) for s in spans]
    # Probes are not traced.
    assert not any("readyz" in s.name for s in spans)


def test_a_failing_exporter_never_fails_a_prediction(settings: Settings, tiny_models: list[TinyModel],
                                                     no_otel_env: None, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    tracing = start_tracing("postergenre-test")
    assert tracing is not None
    try:
        response = predict_once(settings, tiny_models)
        assert response.status_code == 200, response.text
        tracing.provider.force_flush(timeout_millis=10_000)
        # The spans were exported, and the export failed (in the processor's thread, logged there).
        assert any(record.name.startswith("opentelemetry.exporter") and record.levelno >= logging.ERROR
                   for record in caplog.records), caplog.text
    finally:
        tracing.shutdown()
        forget_global_provider()


def test_spans_reach_an_otlp_receiver(no_otel_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The configured exporter speaks OTLP/gRPC: the benchmark's receiver gets the spans, by service."""
    from benchmarks.tracing import OtlpSink

    sink = OtlpSink()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint)
    tracing = start_tracing("postergenre-test")
    assert tracing is not None
    try:
        with tracing.provider.get_tracer("test").start_as_current_span("outer"):
            with tracing.provider.get_tracer("test").start_as_current_span("inner"):
                pass
        assert tracing.provider.force_flush(timeout_millis=10_000)
        assert sink.spans == {"postergenre-test": 2}
    finally:
        tracing.shutdown()
        forget_global_provider()
        sink.stop()


@pytest.mark.slow
def test_an_admin_call_and_the_task_it_queues_are_one_trace_across_the_worker(
        settings: Settings, tiny_models: list[TinyModel], no_otel_env: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The web app here and a real Celery worker process export to one OTLP receiver: the crawl the
    admin API queues runs in the worker in the trace of the admin call (context in the task headers)."""
    from benchmarks.tracing import OtlpSink

    sink = OtlpSink()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint)
    tracing = start_tracing("postergenre-test")
    assert tracing is not None
    worker = None
    try:
        embedded = settings.model_copy(update={"admin_token": "trace-test-token-0123456789abcdef"})
        register_models(embedded, tiny_models[:1], retired=set())  # the schema, and a model to serve
        with TestClient(create_app(embedded)) as client:
            response = client.post("/api/v1/admin/crawls", json={"years": "2005", "max_movies_per_year": 1},
                                   headers={"Authorization": f"Bearer {embedded.admin_token}"})
            assert response.status_code in (200, 201, 202), response.text
        assert tracing.provider.force_flush(timeout_millis=10_000)
        web_traces = set(sink.traces["postergenre-test"])
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("POSTERGENRE_", "TMDB_", "OTEL_"))}
        env.update({"POSTERGENRE_HOME": str(settings.home), "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                    "OTEL_BSP_SCHEDULE_DELAY": "200"})
        worker = subprocess.Popen([sys.executable, "-m", "services.cli", "worker", "--queues", "crawl",
                                   "--pool", "solo", "--loglevel", "WARNING", "--hostname", "trace-test@%h"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        while not sink.traces.get("postergenre-worker", set()) & web_traces:
            assert worker.poll() is None, worker.stderr.read().decode()[-3000:] if worker.stderr else ""
            assert time.monotonic() < deadline, sink.spans
            time.sleep(0.5)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        tracing.shutdown()
        forget_global_provider()
        sink.stop()


TRACING_REPORT = """
import json, sys, types
import grpc, sqlalchemy
from services.embedded import create_app
from shared.config import get_settings
from shared.tracing import active, start_tracing

def plain(function):  # the instrumentations replace these with wrappers or their own functions
    return type(function) is types.FunctionType and not function.__module__.startswith("opentelemetry")

start_tracing("postergenre-web")
app = create_app(get_settings())
print(json.dumps({
    "active": active() is not None,
    "otel_modules": sorted(name for name in sys.modules
                           if name.startswith(("opentelemetry.sdk", "opentelemetry.instrumentation",
                                               "opentelemetry.exporter"))),
    "provider": type(__import__("opentelemetry.trace").trace.get_tracer_provider()).__module__,
    "plain": [plain(grpc.insecure_channel), plain(grpc.server), plain(sqlalchemy.create_engine)],
    "middleware": [m.cls.__name__ for m in app.user_middleware],
    "app_traced": bool(getattr(app, "_is_instrumented_by_opentelemetry", False)),
}))
"""


def tracing_report(tmp_path: Path, **otel: str) -> dict[str, Any]:
    """What ``serve web`` sets up, seen from a fresh interpreter with these OTEL_* variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "POSTERGENRE_"))}
    env.update(otel, POSTERGENRE_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-c", TRACING_REPORT], env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_off_means_no_provider_and_no_instrumentation(tmp_path: Path) -> None:
    """No part of the SDK, exporters or instrumentations is imported (the API is: FastAPI itself
    imports it; without an SDK provider its spans are no-ops), and nothing is wrapped."""
    report = tracing_report(tmp_path)
    assert report["active"] is False
    assert report["otel_modules"] == []
    assert not report["provider"].startswith("opentelemetry.sdk"), report["provider"]
    assert report["plain"] == [True, True, True]
    assert "RequestIdMiddleware" in report["middleware"]
    assert report["app_traced"] is False


def test_on_installs_the_provider_and_instruments_everything(tmp_path: Path) -> None:
    """The same check with an endpoint (nothing listens there: starting must not need a collector)."""
    report = tracing_report(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
                            OTEL_EXPORTER_OTLP_TIMEOUT="1")
    assert report["active"] is True
    assert report["provider"].startswith("opentelemetry.sdk")
    assert report["plain"] == [False, False, False]
    assert report["app_traced"] is True


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "http://collector:4317"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, None),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4317", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317"},
     "http://t:4317"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_SDK_DISABLED": "true"}, None),
])
def test_the_endpoint_comes_from_the_standard_variables(environ: dict[str, str],
                                                        expected: str | None) -> None:
    assert otlp_endpoint(environ) == expected
