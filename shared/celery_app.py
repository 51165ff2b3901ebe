"""The one Celery application. Redis in stack mode; kombu's filesystem transport in embedded mode,
so tasks always run through Celery, with or without servers.

Queues: ``gpu`` (training), ``crawl``, ``dataset``. Tasks are acknowledged late and rejected on
worker loss, so a killed worker's task goes to another worker.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from celery import Celery

from shared.config import Settings, get_settings

TASK_MODULES = ["services.trainer.tasks", "services.dataset.tasks", "services.crawler.tasks"]


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.effective_broker_url,
        "result_backend": settings.effective_result_backend,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "task_routes": {
            "postergenre.train": {"queue": "gpu"},
            "postergenre.crawl": {"queue": "crawl"},
            "postergenre.dataset": {"queue": "dataset"},
        },
        "task_default_queue": "default",
    }
    if config["broker_url"].startswith("filesystem://"):
        folder = settings.broker_folder
        for sub in ("in", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "in"),
            "data_folder_out": str(folder / "in"),
            "processed_folder": str(folder / "processed"),
            # Exchange tables (broadcast, pidbox); kombu's default is ./control in the working dir.
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
        results = settings.home_dir / "celery" / "results"
        results.mkdir(parents=True, exist_ok=True)
    elif config["broker_url"].startswith("redis"):
        # A task not acknowledged within this time is redelivered (a killed worker's task).
        config["broker_transport_options"] = {"visibility_timeout": settings.broker_visibility_timeout}
    return config


def present_task_modules() -> list[str]:
    """The task modules that exist: a worker still starts while a service has no tasks yet."""
    return [name for name in TASK_MODULES if importlib.util.find_spec(name) is not None]


def make_celery(settings: Settings | None = None) -> Celery:
    app = Celery("postergenre", include=present_task_modules())
    app.conf.update(celery_config(settings or get_settings()))
    return app


celery_app = make_celery()
