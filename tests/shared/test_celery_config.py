"""Task time limits, soft shutdown and the Redis visibility timeout derived from the time limits."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from shared.celery_app import celery_config, make_celery
from shared.config import Settings


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("POSTERGENRE_"):
            monkeypatch.delenv(name)


def redis_settings(**values: object) -> Settings:
    return Settings.model_validate({"broker_url": "redis://127.0.0.1:6379/0", **values})


def test_defaults_limit_each_task_and_redeliver_after_the_longest_limit() -> None:
    config = celery_config(redis_settings())
    assert config["task_annotations"] == {
        "postergenre.train": {"time_limit": 43200, "soft_time_limit": 42900},
        "postergenre.crawl": {"time_limit": 86400},
        "postergenre.dataset": {"time_limit": 7200},
    }
    assert config["broker_transport_options"] == {"visibility_timeout": 86400 + 600}
    assert config["worker_soft_shutdown_timeout"] == 300
    assert config["worker_enable_soft_shutdown_on_idle"] is False


def test_the_visibility_timeout_follows_whichever_limit_is_longest() -> None:
    settings = redis_settings(train_time_limit_s=100_000, crawl_time_limit_s=3600, dataset_time_limit_s=60)
    assert settings.broker_visibility_timeout == 100_600
    config = celery_config(settings)
    assert config["broker_transport_options"]["visibility_timeout"] == 100_600
    assert config["task_annotations"]["postergenre.train"] == {"time_limit": 100_000,
                                                              "soft_time_limit": 99_700}


def test_short_limits_keep_a_proportionate_soft_limit_and_the_margin_is_a_setting() -> None:
    # The stack test's limits: a redelivery within minutes, a soft limit that still leaves the task
    # most of its time (not 300 s off a 420 s limit).
    settings = redis_settings(train_time_limit_s=420, crawl_time_limit_s=420, dataset_time_limit_s=420,
                              broker_visibility_margin_s=30, worker_soft_shutdown_s=20)
    assert settings.broker_visibility_timeout == 450
    assert celery_config(settings)["task_annotations"]["postergenre.train"] == {"time_limit": 420,
                                                                              "soft_time_limit": 378}


def test_the_visibility_timeout_is_no_longer_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTERGENRE_BROKER_VISIBILITY_TIMEOUT", "2")
    assert "broker_visibility_timeout" not in Settings.model_fields
    assert Settings(broker_url="redis://x:6379/0").broker_visibility_timeout == 86400 + 600


def test_the_tasks_carry_their_limits() -> None:
    import services.crawler.tasks
    import services.dataset.tasks
    import services.trainer.tasks  # noqa: F401 - registers the tasks on the app

    app = make_celery(redis_settings(train_time_limit_s=7000, crawl_time_limit_s=5000,
                                     dataset_time_limit_s=4000, worker_soft_shutdown_s=60))
    train = app.tasks["postergenre.train"]
    assert (train.time_limit, train.soft_time_limit) == (7000, 6700)
    assert app.tasks["postergenre.crawl"].time_limit == 5000
    assert app.tasks["postergenre.dataset"].time_limit == 4000
    assert app.conf.worker_soft_shutdown_timeout == 60


@pytest.mark.parametrize("soft_shutdown", [43200, 50000])
def test_a_soft_shutdown_as_long_as_a_training_is_refused(soft_shutdown: int) -> None:
    with pytest.raises(ValidationError) as error:
        Settings(worker_soft_shutdown_s=soft_shutdown)
    message = str(error.value)
    assert "POSTERGENRE_WORKER_SOFT_SHUTDOWN_S" in message and "POSTERGENRE_TRAIN_TIME_LIMIT_S" in message


@pytest.mark.parametrize("field", ["train_time_limit_s", "crawl_time_limit_s", "dataset_time_limit_s",
                                   "worker_heartbeat_seconds", "inference_batch_threads"])
def test_non_positive_values_are_refused(field: str) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate({field: 0})


def test_a_negative_soft_shutdown_is_refused_and_zero_disables_it() -> None:
    with pytest.raises(ValidationError):
        Settings(worker_soft_shutdown_s=-1)
    assert celery_config(Settings(worker_soft_shutdown_s=0))["worker_soft_shutdown_timeout"] == 0
