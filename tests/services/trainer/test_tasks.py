"""Training through real Celery workers (subprocesses): on Redis, on the embedded filesystem broker
through ``postergenre train``, and a worker killed mid-training whose task resumes elsewhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.trainer import submit
from shared import registry, training_plan
from shared.config import Settings, get_settings
from shared.db import Job, session_scope, upgrade_database
from shared.hyperparameters import default_hyperparameters
from shared.storage import object_store_from_settings
from tests.servers import redis_db, stop_process
from tests.services.trainer.datasets import write_dataset

REPO = Path(__file__).resolve().parents[3]
# A Redis database of its own: restoring unacknowledged messages (see restore_unacknowledged) restores
# *every* old one of the database it runs on, and other services' tests use database 0.
REDIS_DB = 11


def start_worker(log: Path, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "services.cli", "worker", "--queues", "gpu", "--pool", "solo",
               "--loglevel", "INFO", "--hostname", f"{name}@%h"]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def job(job_id: str) -> dict:
    with session_scope() as session:
        row = session.get(Job, job_id)
        assert row is not None
        return {"state": row.state, "counts": dict(row.counts or {}), "result": dict(row.result or {}),
                "errors": list(row.errors or [])}


def wait_for(job_id: str, done: object, timeout: float, log: Path, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = job(job_id)
        if done(current):  # type: ignore[operator]
            return current
        if current["state"] == "FAILURE" or time.monotonic() > deadline:
            raise AssertionError(f"{what}: job is {current}\nworker log:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


@pytest.fixture
def redis_stack(stack_settings: Settings, redis_url: str, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[Settings]:
    broker = redis_url.rsplit("/", 1)[0] + f"/{redis_db(REDIS_DB)}"
    monkeypatch.setenv("POSTERGENRE_BROKER_URL", broker)
    monkeypatch.setenv("POSTERGENRE_RESULT_BACKEND", broker)
    get_settings.cache_clear()
    settings = get_settings()
    upgrade_database(settings.effective_database_url)
    yield settings
    get_settings.cache_clear()


def restore_unacknowledged(broker_url: str, older_than_s: float = 1.0) -> None:
    """Do now what Redis's visibility timeout does after hours: put back the dead worker's message.

    The timeout is derived from the task time limits (at least 10 minutes), far too long to wait in a
    test, so the sweep that a worker runs with it is run here with a one-second timeout instead.
    """
    from kombu import Connection

    time.sleep(older_than_s + 0.5)
    with Connection(broker_url, transport_options={"visibility_timeout": older_than_s}) as connection:
        connection.default_channel.qos.restore_visible(num=100, interval=1)


def send(settings: Settings, dataset: str, epochs: int, batch_size: int) -> training_plan.PlannedTask:
    from shared.celery_app import make_celery

    manifest = write_dataset(object_store_from_settings(), dataset, [2000], per_year=40)
    hp = default_hyperparameters("smallcnn", epochs=epochs, batch_size=batch_size, width=4, weights="none",
                                 patience=50)
    [task] = training_plan.plan_tasks(manifest, range(2000, 2001), "independent", hp, "genre",
                               formats=["savedmodel"])
    submit.send_tasks([task], app=make_celery(settings))
    return task


@pytest.mark.slow
def test_a_worker_on_redis_trains_exports_registers_and_blesses(redis_stack: Settings,
                                                                 tmp_path: Path) -> None:
    task = send(redis_stack, "redis-tiny", epochs=2, batch_size=8)
    log = tmp_path / "worker.log"
    worker = start_worker(log, "w1")
    try:
        final = wait_for(task.task_id, lambda j: j["state"] == "SUCCESS", 240, log, "training on Redis")
    finally:
        stop_process(worker)
    assert final["result"]["model"] == "genre-2000" and final["result"]["status"] == "blessed"
    assert final["counts"]["epoch"] == 2
    [row] = registry.list_versions("genre-2000")
    assert row["task_id"] == task.task_id and row["status"] == "blessed" and row["image_size"] == 32
    assert row["metrics"]["epochs_run"] == 2 and "macro_map" in row["metrics"]["test"]
    keys = set(object_store_from_settings().list("models/genre-2000/1/"))
    assert "models/genre-2000/1/saved_model.pb" in keys and "models/genre-2000/1/metrics.json" in keys
    assert not list(object_store_from_settings().list(f"checkpoints/{task.task_id}/"))


@pytest.mark.slow
def test_a_killed_worker_leaves_the_task_to_another_that_resumes_from_the_checkpoint(
        redis_stack: Settings, tmp_path: Path) -> None:
    task = send(redis_stack, "redis-kill", epochs=4, batch_size=4)
    log = tmp_path / "worker.log"
    first = start_worker(log, "w1")
    try:
        # Kill it once an epoch is checkpointed and the next one is under way.
        running = wait_for(task.task_id,
                           lambda j: j["counts"].get("epoch", 0) >= 2 and j["state"] == "PROGRESS",
                           240, log, "first epoch")
        assert running["counts"]["pid"] == first.pid
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop_process(first)
    killed_at = job(task.task_id)
    assert killed_at["state"] == "PROGRESS" and killed_at["counts"]["epoch"] < 4
    restore_unacknowledged(redis_stack.effective_broker_url)
    second = start_worker(log, "w2")
    try:
        final = wait_for(task.task_id, lambda j: j["state"] == "SUCCESS", 240, log, "resumed training")
    finally:
        stop_process(second)
    assert final["counts"]["pid"] == second.pid
    assert 1 <= final["result"]["resumed_from_epoch"] < 4
    rows = registry.list_versions("genre-2000")
    assert len(rows) == 1 and rows[0]["task_id"] == task.task_id
    assert rows[0]["metrics"]["epochs_run"] == 4
    assert rows[0]["metrics"]["resumed_from_epochs"] == [final["result"]["resumed_from_epoch"]]


def test_postergenre_train_runs_its_own_worker_on_the_filesystem_broker_then_evaluate(
        settings: Settings, tmp_path: Path, poster_folder: Path) -> None:
    upgrade_database(settings.effective_database_url)
    write_dataset(object_store_from_settings(), "fs-tiny", [2000, 2001], per_year=12)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "train", "--dataset", "fs-tiny", "--years", "2000-2001",
         "--layout", "shared", "--arch", "smallcnn", "--weights", "none", "--epochs", "1",
         "--batch-size", "8", "--width", "4", "--formats", "savedmodel", "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started a local worker" in result.stderr
    assert "genre-shared v1 blessed" in result.stdout
    [row] = registry.list_versions("genre-shared")
    assert row["layout"] == "shared" and row["years"] == [2000, 2001]
    from shared.celery_app import local_workers

    assert local_workers(settings) == []  # the worker it started is gone

    # The blessed shared model on a labelled folder: each poster under its own year's head.
    out = tmp_path / "evaluation.json"
    result = subprocess.run([sys.executable, "-m", "services.cli", "evaluate", "--data", str(poster_folder),
                             "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    evaluation = json.loads(out.read_text())
    assert set(evaluation["per_year"]) == {"2000", "2001"}
    assert set(evaluation["baselines"]) == {"year_prior", "no_genre"}
    assert evaluation["posters"] == 24 and evaluation["models"] == ["genre-shared:1"]
    for name in ("macro_map", "macro_auc", "micro_f1", "recall_at_6", "precision_at_3", "top1_hit",
                 "binary_accuracy"):
        assert name in evaluation["overall"] and name in evaluation["per_year"]["2000"]
    assert evaluation["baselines"]["no_genre"]["micro_f1"] == 0.0


def test_postergenre_train_refuses_years_the_dataset_lacks(settings: Settings) -> None:
    write_dataset(object_store_from_settings(), "fs-none", [2000], per_year=8)
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "train", "--dataset", "fs-none", "--years", "1990-1991",
         "--arch", "smallcnn"], cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no target in 1990-1991" in result.stderr
