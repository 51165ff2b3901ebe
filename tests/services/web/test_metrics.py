"""The web service's Prometheus endpoint, scraped from the running app: the families it promises
(docs/deploy.md, "Watching the system"), the process and GC ones included."""

from __future__ import annotations

from tests.conftest import make_poster
from tests.prometheus import value
from tests.services.web.conftest import WebStack

FAMILIES = {
    "postergenre_http_requests", "postergenre_http_request_duration_seconds", "postergenre_predictions",
    "postergenre_errors", "postergenre_inference_duration_seconds",
    # The process and garbage-collector collectors.
    "process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds", "python_gc_collections",
}


def test_metrics_endpoint_exports_its_families_with_process_and_gc(web_stack: WebStack) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    web_stack.client.post("/api/v1/predictions", params={"years": "2000"},
                          files={"file": ("p.jpg", make_poster(21), "image/jpeg")})
    web_stack.client.post("/api/v1/predictions", files={"file": ("p.txt", b"text", "text/plain")})
    response = web_stack.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: list(f.samples) for f in text_string_to_metric_families(response.text)}
    assert FAMILIES <= set(families), FAMILIES - set(families)
    assert value(families, "process_cpu_seconds_total") > 0
    assert value(families, "postergenre_predictions_total", year="2000") >= 1
    assert value(families, "postergenre_errors_total", code="not_an_image") >= 1
