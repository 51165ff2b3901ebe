"""Redis, the Celery broker, restarted while a training task and a crawl task run in a real worker.

The broker is a private Redis (``ThrowawayRedis``, no persistence: a restart loses every message, as
a crashed Redis without AOF does). A running task's progress lives in PostgreSQL (the Job row) and its
checkpoints in the object store, so the task carries on through the restart and completes; the worker
reconnects by itself and takes new tasks from the restarted broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from benchmarks.fakes.tmdb_site import TmdbSite
from services.web.admin import start_job
from shared import registry
from shared.celery_app import make_celery
from shared.config import Settings, get_settings
from shared.db import Movie, session_scope, upgrade_database
from tests import servers
from tests.reliability.faults import PersistentRedis
from tests.servers import stop_process
from tests.services.crawler.conftest import FAST_CRAWL_ENV, RunningSite
from tests.services.trainer.test_tasks import job, send, wait_for

REPO = Path(__file__).resolve().parents[2]
RESTART_GAP_S = 3.0


def start_worker(log: Path, name: str, queues: str) -> subprocess.Popen[bytes]:
    """A Celery worker process (``postergenre worker``) on ``queues``, with this test's environment."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "services.cli", "worker", "--queues", queues, "--pool", "solo",
               "--loglevel", "INFO", "--hostname", f"{name}@%h"]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


@pytest.fixture
def broker(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[servers.ThrowawayRedis]:
    """A private Redis as broker and result backend of this test's settings and workers."""
    redis_server = servers.ThrowawayRedis()
    redis_server.start()
    monkeypatch.setenv("POSTERGENRE_BROKER_URL", redis_server.url)
    monkeypatch.setenv("POSTERGENRE_RESULT_BACKEND", redis_server.url)
    get_settings.cache_clear()
    upgrade_database(get_settings().effective_database_url)
    try:
        yield redis_server
    finally:
        redis_server.stop()
        get_settings.cache_clear()


def restart(redis_server: servers.ThrowawayRedis) -> None:
    """Kill -9 (a crash, not a clean shutdown), wait, start again on the same port."""
    redis_server.stop()
    time.sleep(RESTART_GAP_S)
    redis_server.start()


@pytest.mark.slow
def test_redis_restart_during_training_the_task_completes_and_the_worker_takes_new_ones(
        broker: servers.ThrowawayRedis, tmp_path: Path) -> None:
    settings = get_settings()
    task = send(settings, "broker-restart", epochs=4, batch_size=4)
    log = tmp_path / "worker.log"
    worker = start_worker(log, "rw1", "gpu")
    try:
        running = wait_for(task.task_id,
                           lambda j: j["counts"].get("epoch", 0) >= 2 and j["state"] == "PROGRESS",
                           240, log, "training under way")
        restart(broker)
        final = wait_for(task.task_id, lambda j: j["state"] == "SUCCESS", 240, log,
                         "training after the restart")
        # The same process carried on: no redelivery, no epoch trained twice, one version.
        assert final["counts"]["pid"] == running["counts"]["pid"] == worker.pid
        assert final["counts"]["epoch"] == 4 and final["counts"]["epoch"] >= running["counts"]["epoch"]
        assert final["result"]["resumed_from_epoch"] == 0
        [row] = registry.list_versions("genre-2000")
        assert row["task_id"] == task.task_id and row["metrics"]["epochs_run"] == 4

        # The worker reconnected to the restarted broker and takes the next task from it.
        after = send(settings, "broker-restart-2", epochs=1, batch_size=8)
        wait_for(after.task_id, lambda j: j["state"] == "SUCCESS", 240, log, "a task sent after the restart")
    finally:
        stop_process(worker)
    assert worker.returncode is not None
    assert [r["task_id"] for r in registry.list_versions("genre-2000")] == [task.task_id, after.task_id]
    assert "Connection to broker lost" in log.read_text() or "Cannot connect" in log.read_text()


def movie_count(database_url: str) -> int:
    with session_scope(database_url) as session:
        return len(session.scalars(select(Movie.id)).all())


@pytest.mark.slow
def test_redis_restart_during_a_crawl_task_the_crawl_completes(
        broker: servers.ThrowawayRedis, make_site: Callable[..., RunningSite], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    site = TmdbSite.generated({2010: 60}, poster_delay=0.1)
    make_site(site)  # TMDB_API_URL and the fast crawl settings, inherited by the worker
    monkeypatch.setenv("POSTERGENRE_CRAWL_CONCURRENCY", "2")
    for name, value in FAST_CRAWL_ENV.items():
        monkeypatch.setenv(name, value)
    settings = get_settings()
    database_url = settings.effective_database_url
    job_id = start_job(make_celery(settings), settings, "crawl", {"years": "2010"})  # as the admin API does
    log = tmp_path / "worker.log"
    worker = start_worker(log, "rc1", "crawl")
    try:
        deadline = time.monotonic() + 180
        while movie_count(database_url) < 5:
            assert time.monotonic() < deadline and job(job_id)["state"] != "FAILURE", log.read_text()[-4000:]
            time.sleep(0.1)
        assert job(job_id)["state"] != "SUCCESS", "the crawl ended before the restart"
        restart(broker)
        final = wait_for(job_id, lambda j: j["state"] == "SUCCESS", 240, log, "crawl after the restart")
    finally:
        stop_process(worker)
    assert final["counts"]["total"]["seen"] == 60
    with session_scope(database_url) as session:
        stored = {int(source_id) for source_id in session.scalars(select(Movie.source_id))}
    assert stored == {movie.id for movie in site.movies}


@pytest.mark.slow
def test_a_task_queued_before_a_redis_crash_survives_with_the_deployments_append_only_file(
        stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    redis_server = PersistentRedis(tmp_path / "redis-data")
    redis_server.start()
    try:
        monkeypatch.setenv("POSTERGENRE_BROKER_URL", redis_server.url)
        monkeypatch.setenv("POSTERGENRE_RESULT_BACKEND", redis_server.url)
        get_settings.cache_clear()
        settings = get_settings()
        upgrade_database(settings.effective_database_url)
        task = send(settings, "queued-restart", epochs=1, batch_size=8)  # no worker yet: it waits in Redis
        time.sleep(2.0)  # Redis's default appendfsync is once a second
        restart(redis_server)
        assert redis.Redis.from_url(redis_server.url).llen("gpu") == 1  # the message came back
        log = tmp_path / "worker.log"
        worker = start_worker(log, "rq1", "gpu")
        try:
            final = wait_for(task.task_id, lambda j: j["state"] == "SUCCESS", 240, log, "the queued task")
        finally:
            stop_process(worker)
        assert final["counts"]["pid"] == worker.pid
        assert [r["task_id"] for r in registry.list_versions("genre-2000")] == [task.task_id]
    finally:
        redis_server.stop()
        get_settings.cache_clear()
