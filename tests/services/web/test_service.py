"""Health, readiness, metrics, the model list and files, OpenAPI, pages, and an inference outage."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.embedded import create_app
from shared.config import Settings
from tests.conftest import make_poster
from tests.servers import free_port
from tests.services.web.conftest import WebStack, register_models, stack_settings_for, wait_until_ready
from tests.services.web.tiny_models import TinyModel


def test_healthz_and_readyz(web_stack: WebStack) -> None:
    assert web_stack.client.get("/healthz").json() == {"status": "ok"}
    ready = web_stack.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "object_store": "ok", "inference": "ok"}


def test_models_lists_the_served_versions_with_headline_metrics(web_stack: WebStack) -> None:
    models = web_stack.client.get("/api/v1/models").json()["models"]
    assert [(m["name"], m["version"], m["status"]) for m in models] == [
        ("genre-2000", 1, "blessed"), ("genre-2001", 2, "blessed"), ("genre-shared", 1, "blessed")]
    shared = models[2]
    assert shared["years"] == [2002, 2003] and shared["dataset_version"] == "ds-test"
    assert set(shared["metrics"]) == {"micro_f1"}  # the per-genre table is not a headline number
    assert "metrics.json" in shared["files"] and not any(f.endswith(".pb") for f in shared["files"])
    assert web_stack.client.get("/api/v1/models").json()["by_year"] == {
        "2000": "genre-2000", "2001": "genre-2001", "2002": "genre-shared", "2003": "genre-shared"}
    everything = web_stack.client.get("/api/v1/models", params={"status": "all"}).json()["models"]
    assert len(everything) == 4
    bad = web_stack.client.get("/api/v1/models", params={"status": "sideways"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_model_files_come_from_the_object_store(web_stack: WebStack) -> None:
    ok = web_stack.client.get("/api/v1/models/genre-2000/1/files/metrics.json")
    assert ok.status_code == 200 and ok.json() == {"micro_f1": 0.5}
    assert "immutable" in ok.headers["cache-control"]
    for path in ("saved_model.pb", "nothing.json", "../../datasets/x/manifest.json", "a/./b.json"):
        response = web_stack.client.get(f"/api/v1/models/genre-2000/1/files/{path}")
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_metrics_count_requests_predictions_and_errors(web_stack: WebStack) -> None:
    web_stack.client.post("/api/v1/predictions", params={"years": "2000-2001,2010"},
                          files={"file": ("p.jpg", make_poster(20), "image/jpeg")})
    web_stack.client.post("/api/v1/predictions", files={"file": ("p.txt", b"text", "text/plain")})
    text = web_stack.client.get("/metrics").text
    assert 'postergenre_http_requests_total{method="POST",route="/api/v1/predictions",status="200"}' in text
    bucket = 'postergenre_http_request_duration_seconds_bucket{le="0.5",method="POST"'
    assert bucket + ',route="/api/v1/predictions"}' \
        in text
    assert 'postergenre_predictions_total{year="2001"}' in text
    assert 'postergenre_unavailable_years_total{year="2010"}' in text
    assert 'postergenre_errors_total{code="not_an_image"}' in text
    assert 'postergenre_inference_duration_seconds_count{model="genre-2000"}' in text


def test_openapi_documents_the_api(web_stack: WebStack) -> None:
    paths = web_stack.client.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/predictions", "/api/v1/predictions:batch", "/api/v1/models", "/healthz", "/readyz",
                 "/api/v1/admin/crawls", "/api/v1/admin/datasets", "/api/v1/admin/trainings",
                 "/api/v1/admin/models/{name}/rollback", "/api/v1/admin/jobs/{job_id}", "/api/v1/admin/jobs"):
        assert path in paths, path


def test_pages_and_static_files(web_stack: WebStack) -> None:
    page = web_stack.client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and "<html lang=" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    admin = web_stack.client.get("/admin")
    assert admin.status_code == 200 and "jobs" in admin.text.lower()
    for name in ("app.js", "admin.js", "style.css", "preprocess.js"):
        assert web_stack.client.get(f"/static/{name}").status_code == 200, name
    for response in (page, web_stack.client.get("/api/v1/models")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    missing = web_stack.client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "no such path: /nowhere"


def test_inference_down_gives_503_with_a_message(tmp_path: Path, postgres_url: str, redis_url: str,
                                                 s3_endpoint: str, s3_bucket_url: str) -> None:
    from shared.db import upgrade_database

    dead = f"grpc://127.0.0.1:{free_port()}"  # nothing listens there
    settings = stack_settings_for(tmp_path, postgres_url, redis_url, s3_endpoint, s3_bucket_url[5:],
                                  inference_url=dead, inference_timeout_s=1.0)
    upgrade_database(settings.effective_database_url)
    model = TinyModel("genre-2000", 1, 32, ["Drama"], [], tmp_path / "none", (None, None))  # type: ignore[arg-type]
    model.folder.mkdir()
    register_models(settings, [model], retired=set())
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/v1/predictions", files={"file": ("p.jpg", make_poster(1), "image/jpeg")})
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "inference_unavailable" and "unavailable" in error["message"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["inference"] != "ok"
        assert ready.json()["checks"]["database"] == "ok" and "inference" in ready.json()["error"]["message"]
        # Bad input is still told apart from the outage.
        assert client.post("/api/v1/predictions", files={"file": ("p", b"", "image/jpeg")}).status_code == 422


def test_a_web_app_built_without_an_inference_starter_says_it_has_no_inference(settings: Settings) -> None:
    """Embedded mode is composed by services.embedded; the web's own create_app, given no inference
    URL and no starter, starts nothing and says why instead of reaching into the inference code."""
    from services.web.app import create_app as create_web_app
    from shared.db import upgrade_database

    upgrade_database(settings.effective_database_url)
    with TestClient(create_web_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "ok"
        assert "POSTERGENRE_INFERENCE_URL is empty" in ready.json()["checks"]["inference"]
        assert client.app.state.web.inference.url == ""  # type: ignore[attr-defined]  # nothing started


@pytest.mark.parametrize("years", ["2000", "1990-1991"])
def test_no_blessed_model_means_unavailable_years(tmp_path: Path, postgres_url: str, redis_url: str,
                                                  s3_endpoint: str, s3_bucket_url: str, years: str) -> None:
    from shared.db import upgrade_database

    settings = stack_settings_for(tmp_path, postgres_url, redis_url, s3_endpoint, s3_bucket_url[5:],
                                  inference_url=f"grpc://127.0.0.1:{free_port()}")
    upgrade_database(settings.effective_database_url)
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/v1/predictions", params={"years": years},
                               files={"file": ("p.jpg", make_poster(1), "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["years"] == [] and body["unavailable_years"] == [int(y) for y in years.split("-")]


def test_embedded_mode_uses_sqlite_files_and_an_in_process_cache(settings: Settings,
                                                                tiny_models: list[TinyModel]) -> None:
    from services.web.cache import LruScoreCache

    embedded = settings.model_copy(update={"admin_token": "embedded-token"})
    register_models(embedded, tiny_models[:1], retired=set())
    with TestClient(create_app(embedded)) as client:
        assert isinstance(client.app.state.web.cache, LruScoreCache)  # type: ignore[attr-defined]
        poster = {"file": ("p.jpg", make_poster(40), "image/jpeg")}
        first = client.post("/api/v1/predictions", params={"years": "2000-2001"}, files=poster)
        assert first.status_code == 200, first.text
        assert [row["model"] for row in first.json()["years"]] == ["genre-2000"]
        assert first.json()["unavailable_years"] == [2001]
        second = client.post("/api/v1/predictions", params={"years": "2000-2001"}, files=poster)
        assert second.json() == first.json()
        assert 'postergenre_prediction_cache_total{result="hit"} 1.0' in client.get("/metrics").text
        wait_until_ready(client)


def test_lru_cache_keeps_the_most_recent_entries() -> None:
    from services.web.cache import LruScoreCache

    cache = LruScoreCache(capacity=2)
    cache.set_many({"a": 1, "b": 2})
    assert cache.get_many(["a"]) == {"a": 1}  # "a" is now the most recent
    cache.set_many({"c": 3})
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "c": 3}
