"""Hostile requests against the prediction, model and admin APIs of a web service on the real stack.

* schemathesis generates requests (valid and invalid) from the service's own OpenAPI document: no
  answer may be a 5xx;
* path traversal in every id and key parameter gets a 4xx and reads nothing outside the store's
  model files (sentinel objects and files would show in an answer);
* SQL metacharacters in every string parameter are plain data: a 4xx or an empty answer, the tables
  intact;
* oversized JSON bodies on the admin routes get 413 before the body is read;
* admin calls without a token, with a wrong one and with the token that was rotated out are refused.
"""

from __future__ import annotations

import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from sqlalchemy import func, select

from services.embedded import create_app
from services.web.uploads import JSON_BODY_BYTES
from shared.config import Settings
from shared.db import Job, ModelVersion, session_scope, upgrade_database
from shared.jobs import create_job
from shared.storage import open_object_store
from tests import servers
from tests.reliability.conftest import ADMIN_TOKEN, web_settings
from tests.reliability.faults import ServedApp, metric_value
from tests.services.web.tiny_models import TinyModel

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SENTINEL = b"SENTINEL-must-never-be-served-7f3a"
# Celery messages the fuzzed admin starts queue go to a Redis database of their own, emptied after.
BROKER_DB = 14
MAX_EXAMPLES = 25


@dataclass
class HostileStack:
    settings: Settings
    url: str
    client: httpx.Client
    outside_file: Path


@pytest.fixture(scope="module")
def hostile_stack(tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str, redis_url: str,
                  s3_endpoint: str, reliability_models: list[TinyModel]) -> Iterator[HostileStack]:
    home = tmp_path_factory.mktemp("hostile-home")
    database_url = servers.create_database(postgres_admin_url, prefix="hostile")
    broker = redis_url.rsplit("/", 1)[0] + f"/{servers.redis_db(BROKER_DB)}"
    settings = web_settings(home, database_url, redis_url, s3_endpoint, reliability_models,
                            broker_url=broker, result_backend=broker)
    upgrade_database(database_url)
    create_job("existing-job", "crawl", {"years": "2000"}, url=database_url)
    store = open_object_store(settings.effective_object_store, settings.s3_endpoint, settings.s3_access_key,
                              settings.s3_secret_key)
    # What a traversal would reach: objects outside a model version's files, and a file beside home.
    for key in ("datasets/secret/manifest.json", "datasets/secret/report.png", "secret.json",
                "models/secret.json", "models/genre-2000/secret.json", "checkpoints/x/state.json"):
        store.put(key, SENTINEL, content_type="application/json")
    outside_file = home / "secret.json"
    outside_file.write_bytes(SENTINEL)
    try:
        with ServedApp(create_app(settings)) as app, \
                httpx.Client(base_url=app.url, timeout=60.0) as client:
            yield HostileStack(settings, app.url, client, outside_file)
    finally:
        redis.Redis.from_url(broker).flushdb()
        servers.drop_database(postgres_admin_url, database_url)


def fuzz_operation(operation: Any, mode: schemathesis.GenerationMode, statuses: Counter[int]) -> None:
    """``MAX_EXAMPLES`` generated requests to one operation; each must get an answer below 500."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case: Any) -> None:
        # With the token, so the admin handlers themselves see the generated bodies and parameters.
        response = case.call(headers=AUTH, timeout=60)
        assert response.status_code < 500, (case.as_curl_command(), response.status_code,
                                             response.text[:500])
        assert SENTINEL not in response.content
        statuses[response.status_code] += 1

    call()


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda mode: mode.value)
def test_generated_requests_never_get_a_server_error(hostile_stack: HostileStack,
                                                     mode: schemathesis.GenerationMode) -> None:
    # The prediction, model and admin APIs (health and metrics take no input).
    schema = schemathesis.openapi.from_url(f"{hostile_stack.url}/openapi.json").include(
        path_regex=r"^/api/v1/")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 12, [op.label for op in operations]
    statuses: Counter[int] = Counter()
    for operation in operations:
        fuzz_operation(operation, mode, statuses)
    print(f"{mode.value}: {sum(statuses.values())} requests over {len(operations)} operations, "
          f"statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= 5 * len(operations)
    served_errors = metric_value(hostile_stack.client.get("/metrics").text, "postergenre_errors_total",
                                 code="internal_error")
    assert served_errors == 0


TRAVERSALS = ["..", "%2e%2e", "..%2f..%2fsecret.json", "%2e%2e%2f%2e%2e%2fsecret.json",
              "..%5c..%5csecret.json", "%2fetc%2fpasswd", "secret.json%00.png", "....//....//secret.json"]


def traversal_paths(value: str) -> list[str]:
    """Every id or key parameter of the API, holding ``value`` (already percent-encoded)."""
    return [
        f"/api/v1/models/{value}/1/files/metrics.json",
        f"/api/v1/models/genre-2000/1/files/{value}",
        f"/api/v1/models/genre-2000/1/files/{value}/secret.json",
        f"/api/v1/models/genre-2000/1/files/../{value}/manifest.json",
        f"/api/v1/models/genre-2000/{value}/files/metrics.json",
        f"/api/v1/admin/jobs/{value}",
        f"/api/v1/admin/datasets/{value}/report.png",
        f"/api/v1/admin/datasets/{value}%2f..%2fsecret/report.png",
    ]


def raw_get(url: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """GET ``path`` byte for byte (httpx would normalise the dot segments away)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close",
                 *(f"{name}: {value}" for name, value in headers.items()), "", ""]
        sock.sendall("\r\n".join(lines).encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.mark.parametrize("value", TRAVERSALS)
def test_path_traversal_in_every_id_or_key_gets_a_4xx_and_reads_nothing_outside(
        hostile_stack: HostileStack, value: str) -> None:
    for path in traversal_paths(value):
        status, raw = raw_get(hostile_stack.url, path, AUTH)
        assert 400 <= status < 500, (path, raw[:400])
        assert SENTINEL not in raw, path
    # The legitimate file is still served: the refusals are not a broken route.
    assert hostile_stack.client.get("/api/v1/models/genre-2000/1/files/metrics.json").status_code == 200


def test_path_traversal_on_a_local_object_store(settings: Settings, reliability_models: list[TinyModel],
                                                tmp_path: Path) -> None:
    """Embedded mode keeps objects as files: a traversal there would read the disk."""
    from shared.storage import LocalObjectStore, upload_folder

    upgrade_database(settings.effective_database_url)
    store = LocalObjectStore(Path(settings.effective_object_store.removeprefix("file://")))
    upload_folder(store, reliability_models[0].folder, "models/genre-2000/1")
    store.put("models/genre-2000/1/metrics.json", b"{}", content_type="application/json")
    (store.root.parent / "secret.json").write_bytes(SENTINEL)
    (store.root / "datasets" / "secret").mkdir(parents=True)
    (store.root / "datasets" / "secret" / "report.png").write_bytes(SENTINEL)
    token = "local-admin-token"
    app_settings = settings.model_copy(update={"admin_token": token, "inference_url": "grpc://127.0.0.1:9"})
    with ServedApp(create_app(app_settings)) as app:
        for value in TRAVERSALS:
            for path in traversal_paths(value):
                status, raw = raw_get(app.url, path, {"Authorization": f"Bearer {token}"})
                assert 400 <= status < 500, (path, raw[:400])
                assert SENTINEL not in raw, path
        status, _ = raw_get(app.url, "/api/v1/models/genre-2000/1/files/metrics.json", {})
        assert status == 200


SQL = ["' OR '1'='1", "'; DROP TABLE jobs; --", "\" OR 1=1 --", "1; SELECT pg_sleep(5)",
       "%' UNION SELECT id FROM jobs --", "\\'; DELETE FROM model_versions; --"]


def table_counts(database_url: str) -> tuple[int, int]:
    with session_scope(database_url) as session:
        return (session.scalar(select(func.count()).select_from(Job)) or 0,
                session.scalar(select(func.count()).select_from(ModelVersion)) or 0)


@pytest.mark.parametrize("value", SQL)
def test_sql_metacharacters_in_every_string_parameter_are_plain_data(hostile_stack: HostileStack,
                                                                      value: str) -> None:
    client, database_url = hostile_stack.client, hostile_stack.settings.effective_database_url
    before = table_counts(database_url)
    poster = ("p.jpg", b"\xff\xd8 not really a jpeg", "image/jpeg")
    quoted = httpx.URL("/x").copy_with(path="/x/" + value).raw_path.decode().removeprefix("/x/")
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("post", "/api/v1/predictions", {"params": {"years": value}, "files": {"file": poster}}),
        ("post", "/api/v1/predictions", {"data": {"years": value}, "files": {"file": poster}}),
        ("post", "/api/v1/predictions", {"params": {"k": value}, "files": {"file": poster}}),
        ("get", "/api/v1/models", {"params": {"status": value}}),
        ("get", f"/api/v1/models/{quoted}/1/files/metrics.json", {}),
        ("get", f"/api/v1/admin/jobs/{quoted}", {"headers": AUTH}),
        ("get", "/api/v1/admin/jobs", {"params": {"kind": value[:16]}, "headers": AUTH}),
        ("get", f"/api/v1/admin/datasets/{quoted}/report.png", {"headers": AUTH}),
        ("post", f"/api/v1/admin/models/{quoted}/rollback", {"headers": AUTH, "json": {}}),
        ("post", "/api/v1/admin/crawls", {"headers": AUTH, "json": {"years": value}}),
        ("post", "/api/v1/admin/datasets", {"headers": AUTH, "json": {"years": value}}),
        ("post", "/api/v1/admin/datasets", {"headers": AUTH, "json": {"window": value}}),
        ("post", "/api/v1/admin/trainings", {"headers": AUTH, "json": {"dataset": value[:64]}}),
        ("post", "/api/v1/admin/trainings", {"headers": AUTH, "json": {"dataset": "x", "arch": value[:32]}}),
    ]
    for method, path, kwargs in calls:
        response = client.request(method, path, **kwargs)
        assert response.status_code < 500, (method, path, kwargs, response.text)
        if response.status_code == 200:
            body = response.json()
            # A filter holding SQL finds nothing, rather than every row.
            assert body.get("jobs", []) == [] and body.get("models", []) == [], (path, body)
        else:
            assert 400 <= response.status_code < 500, (path, response.text)
            assert response.json()["error"]["code"], (path, response.text)
    assert table_counts(database_url) == before


def send_raw(url: str, head: str, body_parts: list[bytes]) -> tuple[int, bytes, int]:
    """Send a request head, then body parts until the server answers; (status, answer, bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head.encode())
        sock.settimeout(0.2)
        answer = b""
        for part in body_parts:
            try:
                answer = sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                pass
            if answer:
                break
            try:
                sock.sendall(part)
            except OSError:
                break
            sent += len(part)
        sock.settimeout(60)
        while not answer.endswith(b"}"):
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer, sent


ADMIN_POSTS = ["/api/v1/admin/crawls", "/api/v1/admin/datasets", "/api/v1/admin/trainings",
               "/api/v1/admin/models/genre-2000/rollback"]


@pytest.mark.parametrize("path", ADMIN_POSTS)
def test_oversized_json_bodies_get_413_before_they_are_read(hostile_stack: HostileStack, path: str) -> None:
    host = hostile_stack.url.removeprefix("http://")
    auth = f"Authorization: Bearer {ADMIN_TOKEN}\r\n"
    # A declared 1 GB body of which one byte is sent: an answer at all means it was refused unread.
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {1 << 30}\r\nConnection: close\r\n\r\n")
    status, answer, _ = send_raw(hostile_stack.url, head, [b"{"])
    assert status == 413, answer[:400]
    assert b'"payload_too_large"' in answer
    # Chunked, with no length: refused once the limit is passed, long before the 64 MiB are sent.
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    status, answer, sent = send_raw(hostile_stack.url, head, [b"1\r\n{\r\n"] + [chunk] * 1024)
    assert status == 413, answer[:400]
    assert sent < 1024 * 65536
    assert str(JSON_BODY_BYTES).encode() in answer


def test_admin_calls_without_a_wrong_or_a_rotated_token_are_refused(
        hostile_stack: HostileStack, tmp_path: Path) -> None:
    rotated = f"rotated-{uuid.uuid4().hex}"
    rotated_settings = hostile_stack.settings.model_copy(update={"admin_token": rotated})
    calls = [("post", "/api/v1/admin/crawls", {"years": "2000"}), ("post", "/api/v1/admin/datasets", {}),
             ("post", "/api/v1/admin/trainings", {"dataset": "x"}),
             ("post", "/api/v1/admin/models/genre-2000/rollback", {}),
             ("get", "/api/v1/admin/jobs/existing-job", None), ("get", "/api/v1/admin/jobs", None),
             ("get", "/api/v1/admin/datasets", None), ("get", "/api/v1/admin/datasets/x/report.png", None)]
    broker = redis.Redis.from_url(hostile_stack.settings.broker_url)
    queued_before = sum(int(broker.llen(queue)) for queue in ("crawl", "dataset", "gpu"))  # type: ignore[arg-type]
    with ServedApp(create_app(rotated_settings)) as app, httpx.Client(base_url=app.url, timeout=60) as client:
        for method, path, body in calls:
            for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 403),
                                    ({"Authorization": f"Bearer {ADMIN_TOKEN}"}, 403),  # the old one
                                    ({"Authorization": f"Token {rotated}"}, 401)):
                response = client.request(method, path, json=body, headers=headers)
                assert response.status_code == status, (path, headers, response.text)
                assert response.json()["error"]["code"] in ("unauthorized", "forbidden")
                assert b"existing-job" not in response.content
        ok = client.get("/api/v1/admin/jobs/existing-job", headers={"Authorization": f"Bearer {rotated}"})
        assert ok.status_code == 200 and ok.json()["id"] == "existing-job"
    queued_after = sum(int(broker.llen(queue)) for queue in ("crawl", "dataset", "gpu"))  # type: ignore[arg-type]
    assert queued_after == queued_before


def test_the_hostile_image_corpus_through_the_prediction_api(hostile_stack: HostileStack) -> None:
    """The shared decoding tests' corpus, uploaded: a named 4xx or an answer, never a 5xx."""
    from tests.shared.test_images_hostile import CORPUS

    statuses: dict[str, int] = {}
    for name, data in sorted(CORPUS.items()):
        response = hostile_stack.client.post("/api/v1/predictions",
                                             files={"file": ("poster.jpg", data, "image/jpeg")})
        statuses[name] = response.status_code
        assert response.status_code == 200 or 400 <= response.status_code < 500, (name, response.text)
        if response.status_code != 200:
            assert response.json()["error"]["code"] in ("empty_file", "not_an_image", "image_too_large",
                                                         "bad_image"), (name, response.text)
    assert statuses["zero bytes"] == 422 and statuses["png bomb 60000x60000"] == 413
    # All of them in one batch: each file gets its own answer or error, the batch itself a 200.
    files = [("files", (f"{index}.jpg", data, "image/jpeg")) for index, data in enumerate(CORPUS.values())]
    batch = hostile_stack.client.post("/api/v1/predictions:batch", files=files[:32])
    assert batch.status_code == 200, batch.text
    assert len(batch.json()["results"]) == min(32, len(files))
