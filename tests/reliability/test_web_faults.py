"""The web service while its dependencies fail: PostgreSQL restarted, the inference server killed.

The service runs under uvicorn on loopback and is called over HTTP with a client deadline, so a hang
fails the test instead of blocking it. Requests made during the gap must get a clean 503 with the
API's error body; once the dependency is back the *same* process must answer again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.embedded import create_app
from tests import servers
from tests.conftest import make_poster
from tests.reliability.conftest import ADMIN_TOKEN, YEARS, web_settings
from tests.reliability.faults import served
from tests.services.web.tiny_models import TinyModel

REPO = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Client-side deadline of one request: far above a healthy answer, far below a hang.
CLIENT_TIMEOUT_S = 60.0


def predict(client: httpx.Client, poster: bytes) -> httpx.Response:
    return client.post("/api/v1/predictions", params={"years": YEARS},
                       files={"file": ("poster.jpg", poster, "image/jpeg")})


def assert_unavailable(response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    if code == "database_unavailable":
        assert response.headers["retry-after"] == "5"


@pytest.fixture
def throwaway_postgres() -> Iterator[servers.ThrowawayPostgres]:
    server = servers.ThrowawayPostgres()
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.stop()
        server.close()


@pytest.mark.slow
def test_postgres_restart_gives_503_for_the_gap_and_the_service_recovers(
        tmp_path: Path, throwaway_postgres: servers.ThrowawayPostgres, redis_url: str, s3_endpoint: str,
        reliability_models: list[TinyModel]) -> None:
    database_url = servers.create_database(throwaway_postgres.url, prefix="relpg")
    settings = web_settings(tmp_path, database_url, redis_url, s3_endpoint, reliability_models)
    poster = make_poster(301)
    with served(create_app(settings)) as app, \
            httpx.Client(base_url=app.url, timeout=CLIENT_TIMEOUT_S) as client:
        before = predict(client, poster)
        assert before.status_code == 200, before.text
        assert [row["year"] for row in before.json()["years"]] == [2000, 2001]
        assert client.get("/api/v1/admin/jobs", headers=AUTH).status_code == 200

        throwaway_postgres.stop()
        # Every route that reads the database, including a poster whose scores are cached.
        assert_unavailable(predict(client, poster), "database_unavailable")
        assert_unavailable(predict(client, make_poster(302)), "database_unavailable")
        assert_unavailable(client.get("/api/v1/models"), "database_unavailable")
        assert_unavailable(client.get("/api/v1/admin/jobs", headers=AUTH), "database_unavailable")
        assert_unavailable(client.get("/api/v1/admin/jobs/some-job", headers=AUTH), "database_unavailable")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
        assert client.get("/healthz").status_code == 200  # the process itself is fine
        # Bad input is still told apart from the outage.
        empty = client.post("/api/v1/predictions", files={"file": ("p.jpg", b"", "image/jpeg")})
        assert empty.status_code in (422, 503)

        throwaway_postgres.start()
        after = predict(client, poster)
        assert after.status_code == 200, after.text
        assert after.json() == before.json()
        assert client.get("/api/v1/models").status_code == 200
        assert client.get("/api/v1/admin/jobs", headers=AUTH).status_code == 200
        assert client.get("/readyz").json()["checks"]["database"] == "ok"
        metrics = client.get("/metrics").text
    assert 'postergenre_errors_total{code="database_unavailable"}' in metrics
    assert 'status="500"' not in metrics


def start_inference_server(models_dir: Path, grpc_port: int, home: Path,
                           log: Path) -> subprocess.Popen[bytes]:
    """``postergenre serve inference`` in its own process, serving every model folder of ``models_dir``."""
    env = {**os.environ, "POSTERGENRE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "services.cli", "serve", "inference", "--grpc-port", str(grpc_port),
               "--rest-port", str(servers.free_port()), "--models-dir", str(models_dir),
               "--poll-seconds", "0"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    servers.wait_for_port("127.0.0.1", grpc_port, timeout=180, proc=process)
    return process


def copy_models(models: list[TinyModel], dest: Path) -> Path:
    import shutil

    for model in models:
        shutil.copytree(model.folder, dest / model.name / str(model.version))
    return dest


@pytest.mark.slow
def test_inference_server_killed_during_a_request_stream_gives_503_then_recovers(
        tmp_path: Path, postgres_url: str, redis_url: str, s3_endpoint: str,
        reliability_models: list[TinyModel]) -> None:
    deadline_s = 3.0
    grpc_port = servers.free_port()
    models_dir = copy_models(reliability_models, tmp_path / "served")
    log = tmp_path / "inference.log"
    settings = web_settings(tmp_path / "web", postgres_url, redis_url, s3_endpoint, reliability_models,
                            inference_url=f"grpc://127.0.0.1:{grpc_port}", inference_timeout_s=deadline_s)
    server = start_inference_server(models_dir, grpc_port, tmp_path / "inference-home", log)
    try:
        with served(create_app(settings)) as app, \
                httpx.Client(base_url=app.url, timeout=CLIENT_TIMEOUT_S) as client:
            seed = 400
            # A stream of distinct posters (no cache hit hides the outage).
            for _ in range(5):
                seed += 1
                response = predict(client, make_poster(seed))
                assert response.status_code == 200, response.text + log.read_text()[-2000:]
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
            outage = []
            for _ in range(5):
                seed += 1
                started = time.monotonic()
                response = predict(client, make_poster(seed))
                outage.append(time.monotonic() - started)
                assert_unavailable(response, "inference_unavailable")
            print(f"answers during the outage took {', '.join(f'{s:.2f}' for s in outage)} s "
                  f"(deadline {deadline_s} s)")
            # The same port again; the web service keeps its channel and reconnects by itself.
            server = start_inference_server(models_dir, grpc_port, tmp_path / "inference-home", log)
            recovered = None
            for _ in range(120):
                seed += 1
                response = predict(client, make_poster(seed))
                if response.status_code == 200:
                    recovered = response
                    break
                assert_unavailable(response, "inference_unavailable")
                time.sleep(0.5)
            assert recovered is not None, "no answer after the inference server came back"
            assert [row["year"] for row in recovered.json()["years"]] == [2000, 2001]
            metrics = client.get("/metrics").text
        assert 'status="500"' not in metrics
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
