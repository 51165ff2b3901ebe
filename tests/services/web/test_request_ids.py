"""Request ids from the web service through the real embedded gRPC server and a real Celery worker.

The web app (embedded mode: SQLite, a local folder, the filesystem broker) starts the embedded
inference server in-process; their log lines are read as the JSON lines the services write.
"""

from __future__ import annotations

import io
import json
import logging
import os
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
from shared.logs import is_valid_request_id, make_handler
from tests.conftest import make_poster
from tests.services.web.conftest import register_models, wait_until_ready
from tests.services.web.tiny_models import TinyModel

TOKEN = "request-id-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every record logged meanwhile, at DEBUG, as the JSON lines of the services' handler."""
    stream = io.StringIO()
    handler = make_handler(json_lines=True, stream=stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.fixture
def embedded_client(settings: Settings, tiny_models: list[TinyModel]) -> Iterator[TestClient]:
    embedded = settings.model_copy(update={"admin_token": TOKEN})
    register_models(embedded, tiny_models[:1], retired=set())
    with TestClient(create_app(embedded)) as client:
        wait_until_ready(client)
        yield client


def test_one_prediction_has_one_id_in_the_web_and_the_inference_server(
        embedded_client: TestClient, json_lines: io.StringIO) -> None:
    poster = {"file": ("p.jpg", make_poster(41), "image/jpeg")}
    response = embedded_client.post("/api/v1/predictions", params={"years": "2000"}, files=poster,
                                    headers={"X-Request-ID": "client-id.42_a"})
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == "client-id.42_a"
    mine = [line for line in lines(json_lines) if line.get("request_id") == "client-id.42_a"]
    loggers = {line["logger"] for line in mine}
    # The web service's access line and the inference server's line for the Predict call it answered.
    assert "postergenre.access" in loggers, mine
    assert any(line["logger"] == "postergenre.grpc" and "PredictionService/Predict" in line["message"]
               for line in mine), mine
    access = next(line for line in mine if line["logger"] == "postergenre.access")
    assert access["path"] == "/api/v1/predictions" and access["status"] == 200


def test_a_request_without_an_id_gets_a_new_one(embedded_client: TestClient, json_lines: io.StringIO) -> None:
    first = embedded_client.get("/healthz").headers["X-Request-ID"]
    second = embedded_client.get("/healthz").headers["X-Request-ID"]
    assert is_valid_request_id(first) and is_valid_request_id(second) and first != second
    assert {line["request_id"] for line in lines(json_lines) if line["logger"] == "postergenre.access"} \
        >= {first, second}


@pytest.mark.parametrize("bad", ["has space", "x" * 65, "quote\"d", "évil", "a/b", "{json}"])
def test_a_malformed_id_is_replaced_and_never_logged(embedded_client: TestClient, json_lines: io.StringIO,
                                                     bad: str) -> None:
    response = embedded_client.get("/healthz", headers={"X-Request-ID": bad.encode()})
    given = response.headers["X-Request-ID"]
    assert given != bad and is_valid_request_id(given)
    assert bad not in json_lines.getvalue() and json.dumps(bad)[1:-1] not in json_lines.getvalue()
    assert any(line.get("request_id") == given for line in lines(json_lines))


def queued_messages(settings: Settings) -> list[dict[str, Any]]:
    folder = settings.broker_folder / "in"
    return [json.loads(path.read_bytes()) for path in sorted(folder.glob("*.msg"))]


@pytest.mark.slow
def test_a_task_sent_by_the_admin_api_carries_the_id_into_the_worker_logs(
        settings: Settings, embedded_client: TestClient, tmp_path: Path) -> None:
    response = embedded_client.post("/api/v1/admin/crawls", json={"years": "2005", "max_movies_per_year": 1},
                                    headers={**AUTH, "X-Request-ID": "admin-call-7"})
    assert response.status_code in (200, 201, 202), response.text
    assert response.headers["X-Request-ID"] == "admin-call-7"
    job_id = response.json()["job_id"]
    [message] = [m for m in queued_messages(settings) if m["headers"].get("id") == job_id]
    assert message["headers"]["x_request_id"] == "admin-call-7"

    env = {key: value for key, value in os.environ.items() if not key.startswith(("POSTERGENRE_", "TMDB_"))}
    env.update({"POSTERGENRE_HOME": str(settings.home), "POSTERGENRE_LOG_FORMAT": "json"})
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        worker = subprocess.Popen([sys.executable, "-m", "services.cli", "worker", "--queues", "crawl",
                                   "--pool", "solo", "--loglevel", "INFO", "--hostname", f"rid-{job_id}@%h"],
                                  env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while not any(line.get("request_id") == "admin-call-7" and "Task" in line["message"]
                          and ("raised" in line["message"] or "succeeded" in line["message"])
                          for line in worker_lines(log_path)):
                assert worker.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.5)
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    mine = [line for line in worker_lines(log_path) if line.get("request_id") == "admin-call-7"]
    # The task's own lines (the crawler's) and Celery's line for the task's end, all with the call's id.
    assert any(line["logger"].startswith("services.crawler") for line in mine), log_path.read_text()


def worker_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for text in path.read_text(errors="replace").splitlines():
        if text.startswith("{"):
            try:
                out.append(json.loads(text))
            except ValueError:
                continue
    return out
