"""A dataset worker's Prometheus endpoint, scraped from a real worker (prefork pool, Redis broker):
the Celery task families (by task and state, run time, running, queue length) and the build's."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.crawler.importer import import_folder
from shared.db import upgrade_database
from shared.storage import object_store_from_settings
from tests import servers
from tests.prometheus import metered_worker, scrape, value

# Celery messages of this test go to their own Redis database, so no other test's worker takes them.
BROKER_DB = 13
CELERY_FAMILIES = {"postergenre_celery_tasks", "postergenre_celery_task_duration_seconds",
                   "postergenre_celery_tasks_running", "postergenre_celery_queue_length"}
DATASET_FAMILIES = {"postergenre_dataset_builds", "postergenre_dataset_build_duration_seconds",
                    "postergenre_dataset_posters_read", "postergenre_dataset_posters_kept",
                    "postergenre_dataset_posters_refused"}


def test_a_dataset_worker_exports_its_tasks_queue_and_builds(
    stack_settings: Any, collection: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from shared.celery_app import make_celery
    from shared.config import get_settings

    broker = stack_settings.redis_url.rsplit("/", 1)[0] + f"/{servers.redis_db(BROKER_DB)}"
    monkeypatch.setenv("POSTERGENRE_BROKER_URL", broker)
    monkeypatch.setenv("POSTERGENRE_RESULT_BACKEND", broker)
    get_settings.cache_clear()
    upgrade_database()
    assert not import_folder(collection(years=range(2000, 2002), per_year=10),
                             object_store_from_settings()).errors
    app = make_celery(get_settings())
    app.control.purge()
    try:
        with metered_worker("dataset", tmp_path / "worker.log") as url:
            good = app.send_task("postergenre.dataset", task_id=f"job-{uuid.uuid4().hex}",
                                 kwargs={"years": "2000-2001", "min_posters": 5, "image_size": 16})
            good.get(timeout=180)
            bad = app.send_task("postergenre.dataset", kwargs={"years": "1950"},
                                task_id=f"job-{uuid.uuid4().hex}")
            with pytest.raises(Exception, match="unknown years"):
                bad.get(timeout=60)
            families = scrape(url)
    finally:
        app.control.purge()
    assert CELERY_FAMILIES | DATASET_FAMILIES <= set(families), \
        (CELERY_FAMILIES | DATASET_FAMILIES) - set(families)
    task = {"task": "postergenre.dataset"}
    # Counted in the pool child that ran the tasks and summed by the main process's endpoint.
    assert value(families, "postergenre_celery_tasks_total", state="RECEIVED", **task) == 2
    assert value(families, "postergenre_celery_tasks_total", state="STARTED", **task) == 2
    assert value(families, "postergenre_celery_tasks_total", state="SUCCESS", **task) == 1
    assert value(families, "postergenre_celery_tasks_total", state="FAILURE", **task) == 1
    assert value(families, "postergenre_celery_task_duration_seconds_count", **task) == 2
    assert value(families, "postergenre_celery_tasks_running", **task) == 0
    assert value(families, "postergenre_celery_queue_length", queue="dataset") == 0
    # The build: 20 posters read, every one kept or refused for a reason. The bad request failed in
    # its check, before any build started: a failed task, not a failed build.
    read = value(families, "postergenre_dataset_posters_read_total")
    assert read == 20
    assert value(families, "postergenre_dataset_posters_kept_total") + \
        value(families, "postergenre_dataset_posters_refused_total") == read
    assert value(families, "postergenre_dataset_builds_total", outcome="built") == 1
    assert value(families, "postergenre_dataset_builds_total", outcome="failed") == 0
    assert value(families, "postergenre_dataset_build_duration_seconds_count", outcome="built") == 1
