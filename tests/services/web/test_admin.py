"""The admin API: bearer token, job starts through the real Redis broker, jobs, rollback."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from services.embedded import create_app
from services.web.state import WebState
from shared.config import Settings
from shared.db import DatasetVersion, Movie, session_scope
from tests.conftest import make_poster
from tests.services.web.conftest import ADMIN_TOKEN, WebStack

ROLLBACK_2001 = "/api/v1/admin/models/genre-2001/rollback"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ADMIN_CALLS = [("post", "/api/v1/admin/crawls", {"years": "2001"}),
               ("post", "/api/v1/admin/datasets", {"years": "2001"}),
               ("post", "/api/v1/admin/trainings", {"dataset": "ds-test"}),
               ("post", "/api/v1/admin/models/genre-2001/rollback", {}),
               ("get", "/api/v1/admin/jobs/some-id", None),
               ("get", "/api/v1/admin/jobs", None),
               ("get", "/api/v1/admin/datasets", None)]


def queued_tasks(stack: WebStack, queue: str) -> list[dict[str, Any]]:
    """The Celery messages waiting in ``queue`` of the tests' broker database (kombu's Redis layout)."""
    client = redis.Redis.from_url(stack.broker_url)
    messages = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]  # type: ignore[union-attr]
    return [{"task": m["headers"]["task"], "id": m["headers"]["id"],
             "kwargs": json.loads(base64.b64decode(m["body"]))[1]} for m in messages]


@pytest.fixture(autouse=True)
def empty_queues(web_stack: WebStack) -> None:
    redis.Redis.from_url(web_stack.broker_url).delete("crawl", "dataset", "gpu")


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_admin_calls_need_the_bearer_token(web_stack: WebStack, method: str, path: str,
                                           body: dict[str, Any] | None) -> None:
    client = web_stack.client
    for headers in ({}, {"Authorization": f"Basic {ADMIN_TOKEN}"}, {"Authorization": "Bearer "}):
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    response = client.request(method, path, json=body, headers={"Authorization": "Bearer wrong-token"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert queued_tasks(web_stack, "crawl") == [] and queued_tasks(web_stack, "dataset") == []


@pytest.mark.parametrize(("path", "body", "queue", "task", "kind"), [
    ("/api/v1/admin/crawls", {"years": "2001-2002", "max_movies_per_year": 40, "poster_size": "w342"},
     "crawl", "postergenre.crawl", "crawl"),
    ("/api/v1/admin/datasets", {"years": "2000-2003", "window": "rolling", "image_size": 64}, "dataset",
     "postergenre.dataset", "dataset"),
])
def test_start_sends_the_task_by_name_and_records_the_job(web_stack: WebStack, movies: None, path: str,
                                                          body: dict[str, Any], queue: str, task: str,
                                                          kind: str) -> None:
    response = web_stack.client.post(path, json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    [message] = queued_tasks(web_stack, queue)
    assert message["task"] == task and message["id"] == job_id
    assert {key: message["kwargs"][key] for key in body} == body
    job = web_stack.client.get(f"/api/v1/admin/jobs/{job_id}", headers=AUTH).json()
    assert (job["id"], job["kind"], job["state"], job["progress"]) == (job_id, kind, "PENDING", 0.0)
    assert job["params"] == message["kwargs"]


@pytest.fixture(scope="module")
def movies(web_stack: WebStack) -> None:
    """Movies with posters in 2000-2003, so a dataset build for those years is accepted."""
    with session_scope(web_stack.settings.effective_database_url) as session:
        for index in range(8):
            session.add(Movie(source="imdb", source_id=f"tt{index:07d}", title=f"Movie {index}",
                              year=2000 + index % 4, poster_key=f"posters/imdb/tt{index:07d}/x.jpg",
                              poster_sha256=f"{index:064x}"))


@pytest.fixture(scope="module")
def dataset(web_stack: WebStack) -> str:
    """A dataset version (row and manifest) with one target per year 2000-2002."""
    manifest = {"id": "ds-admin", "window": "year", "image_size": 32, "genres": ["Drama"],
                "targets": {str(year): {"years": [year]} for year in (2000, 2001, 2002)}}
    store = WebState(web_stack.settings, admin_token="").store
    store.put("datasets/ds-admin/manifest.json", json.dumps(manifest).encode(),
              content_type="application/json")
    store.put("datasets/ds-admin/report.png", b"\x89PNG fake plot", content_type="image/png")
    with session_scope(web_stack.settings.effective_database_url) as session:
        session.add(DatasetVersion(id="ds-admin", window="year", content_hash="h-admin",
                                   manifest_key="datasets/ds-admin/manifest.json", report={"posters": 24},
                                   targets=manifest["targets"]))
    return "ds-admin"


def test_training_starts_one_job_per_model(web_stack: WebStack, dataset: str) -> None:
    response = web_stack.client.post("/api/v1/admin/trainings", headers=AUTH,
                                     json={"dataset": dataset, "years": "2001-2002", "epochs": 2,
                                           "formats": ["savedmodel"]})
    assert response.status_code == 202, response.text
    job_ids = response.json()["job_ids"]
    assert response.json()["job_id"] == job_ids[0] and len(job_ids) == 2
    messages = queued_tasks(web_stack, "gpu")
    assert {m["id"] for m in messages} == set(job_ids)
    assert {m["task"] for m in messages} == {"postergenre.train"}
    params = [m["kwargs"]["params"] for m in messages]
    assert sorted(p["model_name"] for p in params) == ["genre-2001", "genre-2002"]
    assert all(p["dataset_id"] == dataset and p["hyperparameters"]["epochs"] == 2 for p in params)
    for job_id in job_ids:
        job = web_stack.client.get(f"/api/v1/admin/jobs/{job_id}", headers=AUTH).json()
        assert job["kind"] == "train" and job["state"] == "PENDING"


def test_dataset_reports_are_listed_with_their_plot(web_stack: WebStack, dataset: str) -> None:
    datasets = web_stack.client.get("/api/v1/admin/datasets", headers=AUTH).json()["datasets"]
    [row] = [d for d in datasets if d["id"] == dataset]
    assert row["report"] == {"posters": 24} and row["has_report_plot"] is True
    plot = web_stack.client.get(f"/api/v1/admin/datasets/{dataset}/report.png", headers=AUTH)
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    missing = web_stack.client.get("/api/v1/admin/datasets/nope/report.png", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(("body", "code", "fragment"), [
    ({"dataset": "nope"}, "unknown_dataset", "nope"),
    ({"dataset": "ds-admin", "years": "1990-1991"}, "invalid_training_request", "no target"),
    ({"dataset": "ds-admin", "layout": "window"}, "invalid_training_request", "one target per year"),
    ({"dataset": "ds-admin", "arch": "vgg99"}, "invalid_training_request", "vgg99"),
    ({"dataset": "ds-admin", "arch": "mobilenetv3small", "weights": "package"}, "invalid_training_request",
     "holds ImageNet weights of efficientnet-lite0 and efficientnet-lite2 only"),
    ({"dataset": "ds-admin", "arch": "efficientnet-lite0", "weights": "imagenet"}, "invalid_training_request",
     "use --weights package"),
])
def test_training_requests_the_dataset_cannot_serve_get_422(web_stack: WebStack, dataset: str,
                                                            body: dict[str, Any], code: str,
                                                            fragment: str) -> None:
    response = web_stack.client.post("/api/v1/admin/trainings", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code and fragment in response.json()["error"]["message"]
    assert queued_tasks(web_stack, "gpu") == []


def test_dataset_build_for_years_without_posters_gets_422(web_stack: WebStack, movies: None) -> None:
    response = web_stack.client.post("/api/v1/admin/datasets", json={"years": "1950-1951"}, headers=AUTH)
    assert response.status_code == 422
    assert "unknown years" in response.json()["error"]["message"]
    assert queued_tasks(web_stack, "dataset") == []


def test_rollback_serves_the_previous_version_again(web_stack: WebStack) -> None:
    def served_2001() -> tuple[str, int]:
        response = web_stack.client.post("/api/v1/predictions", params={"years": "2001"},
                                         files={"file": ("p.jpg", make_poster(11), "image/jpeg")})
        row = response.json()["years"][0]
        return row["model"], row["version"]

    assert served_2001() == ("genre-2001", 2)
    response = web_stack.client.post("/api/v1/admin/models/genre-2001/rollback", headers=AUTH)
    assert response.status_code == 200, response.text
    statuses = {row["version"]: row["status"] for row in response.json()["models"]}
    assert statuses == {1: "blessed", 2: "retired"}
    assert wait_for(lambda: served_2001() == ("genre-2001", 1))
    # And forward again to a named version; an unknown version or model is refused.
    response = web_stack.client.post(ROLLBACK_2001, json={"version": 2}, headers=AUTH)
    assert {row["version"]: row["status"] for row in response.json()["models"]} == {1: "retired",
                                                                                    2: "blessed"}
    assert wait_for(lambda: served_2001() == ("genre-2001", 2))
    response = web_stack.client.post(ROLLBACK_2001, json={"version": 9}, headers=AUTH)
    assert response.status_code == 404 and response.json()["error"]["code"] == "version_not_found"
    response = web_stack.client.post("/api/v1/admin/models/genre-1999/rollback", headers=AUTH)
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    response = web_stack.client.post("/api/v1/admin/models/genre-2000/rollback", headers=AUTH)
    assert response.status_code == 409 and "no earlier blessed version" in response.json()["error"]["message"]


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Poll until the inference server has reloaded (it watches its models.config)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.parametrize(("path", "body", "fragment"), [
    ("/api/v1/admin/crawls", {"years": "2019-2000"}, "backwards"),
    ("/api/v1/admin/crawls", {"years": "2000", "max_movies_per_year": 0}, "max_movies_per_year"),
    ("/api/v1/admin/crawls", {"years": "2000", "pages": 3}, "pages"),
    ("/api/v1/admin/crawls", {"years": "2000", "poster_size": "huge"}, "poster_size"),
    ("/api/v1/admin/datasets", {"window": "century"}, "window"),
    ("/api/v1/admin/datasets", {"image_size": 4}, "image_size"),
    ("/api/v1/admin/datasets", {"years": "2000,2005"}, "one span"),
    ("/api/v1/admin/trainings", {"dataset": "ds-test", "epochs": 0}, "epochs"),
    ("/api/v1/admin/trainings", {"dataset": "ds-test", "formats": ["onnx"]}, "formats"),
    ("/api/v1/admin/trainings", {}, "dataset"),
])
def test_bad_start_requests_get_422_and_queue_nothing(web_stack: WebStack, path: str, body: dict[str, Any],
                                                      fragment: str) -> None:
    response = web_stack.client.post(path, json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]["message"]
    for queue in ("crawl", "dataset", "gpu"):
        assert queued_tasks(web_stack, queue) == []


def test_jobs_list_and_unknown_job(web_stack: WebStack) -> None:
    started = [web_stack.client.post("/api/v1/admin/crawls", json={"years": str(year)}, headers=AUTH).json()
               ["job_id"] for year in (2005, 2006)]
    jobs = web_stack.client.get("/api/v1/admin/jobs", params={"kind": "crawl"}, headers=AUTH).json()["jobs"]
    assert {job["kind"] for job in jobs} == {"crawl"}
    ids = [job["id"] for job in jobs]
    assert set(started) <= set(ids) and ids.index(started[1]) < ids.index(started[0])  # newest first
    response = web_stack.client.get("/api/v1/admin/jobs/no-such-job", headers=AUTH)
    assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"


@pytest.mark.parametrize("token", ["", "change-me", "short"])
def test_stack_mode_refuses_admin_routes_with_a_weak_token(web_stack: WebStack, token: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    settings = web_stack.settings.model_copy(update={"admin_token": token})
    with caplog.at_level(logging.ERROR, logger="services.web.app"):
        client = TestClient(create_app(settings))
    assert "admin API not mounted" in caplog.text
    response = client.get("/api/v1/admin/jobs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404
    assert client.get("/healthz").status_code == 200


def test_embedded_mode_without_a_token_uses_a_logged_random_one(settings: Settings,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from shared.db import upgrade_database

    upgrade_database(settings.effective_database_url)
    with caplog.at_level(logging.WARNING, logger="services.web.admin"):
        client = TestClient(create_app(settings))
    token = caplog.text.rsplit("admin token of this run is ", 1)[1].split()[0]
    assert client.get("/api/v1/admin/jobs", headers={"Authorization": "Bearer "}).status_code == 401
    assert client.get("/api/v1/admin/jobs", headers={"Authorization": "Bearer x"}).status_code == 403
    response = client.get("/api/v1/admin/jobs", headers={"Authorization": f"Bearer {token}"})
    assert response.json() == {"jobs": []}


@pytest.mark.slow
def test_a_started_crawl_runs_on_a_real_worker_and_its_failure_is_reported(web_stack: WebStack,
                                                                          tmp_path: Path) -> None:
    """The admin API's message is what the crawler's task takes: a real Celery worker runs it; with no
    TMDB credentials here the crawl fails, and the job shows why."""
    settings = web_stack.settings
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("POSTERGENRE_", "TMDB_"))}
    env.update({"POSTERGENRE_HOME": str(tmp_path / "worker-home"),
                "POSTERGENRE_DATABASE_URL": settings.database_url,
                "POSTERGENRE_OBJECT_STORE": settings.object_store,
                "POSTERGENRE_S3_ENDPOINT": settings.s3_endpoint,
                "POSTERGENRE_S3_ACCESS_KEY": settings.s3_access_key,
                "POSTERGENRE_S3_SECRET_KEY": settings.s3_secret_key,
                "POSTERGENRE_BROKER_URL": settings.broker_url,
                "POSTERGENRE_RESULT_BACKEND": settings.result_backend})
    job_id = web_stack.client.post("/api/v1/admin/crawls", json={"years": "2005", "max_movies_per_year": 5},
                                   headers=AUTH).json()["job_id"]
    worker = subprocess.Popen([sys.executable, "-m", "services.cli", "worker", "--queues", "crawl", "--pool",
                               "solo", "--loglevel", "WARNING", "--hostname", f"webtest-{job_id}@%h"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: job_state(web_stack, job_id) in ("FAILURE", "SUCCESS"), timeout_s=120)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    job = web_stack.client.get(f"/api/v1/admin/jobs/{job_id}", headers=AUTH).json()
    assert job["state"] == "FAILURE" and any("TMDB" in error for error in job["errors"]), job


def job_state(stack: WebStack, job_id: str) -> str:
    return str(stack.client.get(f"/api/v1/admin/jobs/{job_id}", headers=AUTH).json()["state"])


def test_a_job_waiting_on_a_queue_without_a_worker_says_so(web_stack: WebStack) -> None:
    """No worker consumes ``dataset`` on the tests' broker: asked over Redis (``inspect``), the job info
    and the jobs list name the queue and the command that starts a worker; a fresh job has no warning."""
    import datetime as dt

    from shared.db import Job
    from shared.jobs import create_job

    url = web_stack.settings.effective_database_url
    create_job("waiting-dataset", "dataset", {"years": "2001"}, url=url)
    create_job("fresh-dataset", "dataset", {"years": "2001"}, url=url)
    with session_scope(url) as session:
        waiting = session.get(Job, "waiting-dataset")
        assert waiting is not None
        waiting.created_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    job = web_stack.client.get("/api/v1/admin/jobs/waiting-dataset", headers=AUTH).json()
    assert job["state"] == "PENDING"
    assert "'dataset' queue" in job["warning"] and "`postergenre worker --queues dataset`" in job["warning"]
    assert "--no-worker" not in job["warning"]  # stack mode: the deployment runs the workers
    jobs = {j["id"]: j for j in web_stack.client.get("/api/v1/admin/jobs", headers=AUTH).json()["jobs"]}
    assert jobs["waiting-dataset"]["warning"] == job["warning"]
    assert jobs["fresh-dataset"]["warning"] is None
