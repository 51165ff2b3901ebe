"""The worker exporter's failure modes: queue lengths read from a real Redis broker, a broker that
does not answer leaves the scrape without lengths (not failed), and a worker whose metrics port is
taken still runs its tasks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shared.worker_metrics import QUEUE_LENGTH_FAMILY, QueueLengthCollector
from tests import servers

# Celery messages of this test go to their own Redis database, so no other test's worker takes them.
BROKER_DB = 15


def test_queue_lengths_come_from_the_broker_and_an_unreachable_one_fails_no_scrape(
    stack_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    from shared.celery_app import make_celery
    from shared.config import get_settings

    broker = stack_settings.redis_url.rsplit("/", 1)[0] + f"/{servers.redis_db(BROKER_DB)}"
    # The database is this file's own: empty it before and after. ``app.control.purge()`` empties only
    # the queues the app declares, not ``dataset``, so an earlier run's three messages used to stay
    # there and be counted with this run's (6, not 3) when no worker of the other test took them.
    broker_db = redis.Redis.from_url(broker)
    broker_db.flushdb()
    monkeypatch.setenv("POSTERGENRE_BROKER_URL", broker)
    get_settings.cache_clear()
    app = make_celery(get_settings())
    try:
        for _ in range(3):  # no worker consumes them: they wait in the list
            app.send_task("postergenre.dataset", kwargs={"years": "2000"})
        [family] = list(QueueLengthCollector(app, ["dataset", "crawl"]).collect())
        lengths = {sample.labels["queue"]: sample.value for sample in family.samples}
        assert family.name == QUEUE_LENGTH_FAMILY and lengths["dataset"] == 3
        assert lengths.get("crawl", 0) == 0
    finally:
        broker_db.flushdb()

    monkeypatch.setenv("POSTERGENRE_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    get_settings.cache_clear()
    started = time.monotonic()
    [family] = list(QueueLengthCollector(make_celery(get_settings()), ["dataset"], timeout_s=1).collect())
    assert family.samples == [] and time.monotonic() - started < 30


def test_a_worker_whose_metrics_port_is_taken_still_runs_its_tasks(
    stack_settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from shared.celery_app import make_celery
    from shared.config import get_settings
    from shared.db import upgrade_database

    broker = stack_settings.redis_url.rsplit("/", 1)[0] + f"/{servers.redis_db(BROKER_DB)}"
    monkeypatch.setenv("POSTERGENRE_BROKER_URL", broker)
    monkeypatch.setenv("POSTERGENRE_RESULT_BACKEND", broker)
    get_settings.cache_clear()
    upgrade_database()
    app = make_celery(get_settings())
    app.control.purge()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "POSTERGENRE_WORKER_METRICS_PORT": str(port),
               "POSTERGENRE_WORKER_METRICS_HOST": "127.0.0.1"}
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "worker", "--queues", "dataset", "--concurrency", "1",
                 "--pool", "prefork"], env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                result = app.send_task("postergenre.dataset", kwargs={"years": "1950"})
                with pytest.raises(Exception, match="unknown years"):  # the task ran, and said why
                    result.get(timeout=120)
            finally:
                worker.terminate()
                worker.wait(timeout=60)
                app.control.purge()
    assert "metrics: _on_worker_init failed" in log.read_text()
