"""``postergenre dataset build`` and the ``postergenre.dataset`` Celery task: results and bad input."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.cli import main
from services.crawler.importer import import_folder
from services.dataset.tasks import build_dataset_task
from shared.dataset_manifest import load_manifest
from shared.dataset_params import DatasetInputError, check_build_request
from shared.db import Job, Movie, session_scope, upgrade_database
from shared.storage import object_store_from_settings
from tests import servers

SMALL = ["--min-posters", "5", "--image-size", "16"]


def imported(folder: Path) -> None:
    upgrade_database()
    assert not import_folder(folder, object_store_from_settings()).errors


def test_build_prints_one_line_per_target_then_the_id(
    settings: Any, poster_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    imported(poster_folder)
    assert main(["dataset", "build", "--years", "2000-2001", *SMALL, "--seed", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("target 2000 (2000-2000): train ")
    assert lines[1].startswith("target 2001 (2001-2001): train ")
    dataset_id = lines[-1].removeprefix("dataset ")
    manifest = load_manifest(object_store_from_settings(), dataset_id)
    assert manifest["image_size"] == 16 and sorted(manifest["targets"]) == ["2000", "2001"]
    assert main(["dataset", "build", "--years", "2000-2001", *SMALL, "--seed", "1"]) == 0
    again = capsys.readouterr().out.strip().splitlines()
    assert again[-1] == f"dataset {dataset_id}" and "reused" in again[-2]
    assert main(["dataset", "show", dataset_id]) == 0
    assert f'"id": "{dataset_id}"' in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--years", "1990-1991"], "unknown years: no movie with a poster in 1990-1991"),
        (["--years", "1990-1991"], "the database has posters from 2000 to 2001"),
        (["--years", "3000"], "unknown years 3000-3000"),
        (["--years", "2000-2001", "--min-posters", "50"], "nothing to build: every target was skipped"),
        (
            ["--years", "2000", "--window", "decade", "--val-fraction", "0.5", "--test-fraction", "0.5"],
            "sum to less than 1",
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_a_non_zero_exit(
    settings: Any, poster_folder: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    imported(poster_folder)
    assert main(["dataset", "build", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
    assert not list(object_store_from_settings().list("datasets/"))


def test_unparseable_years_and_empty_database(settings: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["dataset", "build", "--years", "20x0"])
    assert exit_info.value.code == 2
    assert "years must look like 2000-2019" in capsys.readouterr().err
    assert main(["dataset", "build", "--years", "2000"]) == 2
    assert "the database has no posters" in capsys.readouterr().err


def test_a_movie_without_genre_stops_the_build(
    settings: Any, poster_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    imported(poster_folder)
    with session_scope() as session:
        movie = session.query(Movie).filter(Movie.source_id == "tt1000003").one()
        movie.genres = []
        movie_id = movie.id
    assert main(["dataset", "build", "--years", "2000-2001", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "1 movie(s) have no genre (inconsistent labels)" in err and str(movie_id) in err


def test_task_builds_reports_progress_and_refuses_bad_input(
    settings: Any, collection: Callable[..., Path]
) -> None:
    imported(collection(years=range(2000, 2002), per_year=10))
    request = {"years": "2000-2001", "window": "decade", "min_posters": 5, "image_size": 16}
    assert check_build_request(request).window == "decade"
    result = build_dataset_task.apply(kwargs=request, task_id="job-dataset-1")
    dataset_id = result.get()
    assert load_manifest(object_store_from_settings(), dataset_id)["window"] == "decade"
    with session_scope() as session:
        job = session.get(Job, "job-dataset-1")
        assert job is not None and job.state == "SUCCESS" and job.progress == 100
        assert job.result["dataset_id"] == dataset_id and job.result["targets"] == ["2000s"]

    with pytest.raises(DatasetInputError, match="unknown years"):
        check_build_request({"years": "1950-1951"})
    failed = build_dataset_task.apply(kwargs={"years": "1950-1951"}, task_id="job-dataset-2")
    assert failed.failed() and isinstance(failed.result, DatasetInputError)
    with session_scope() as session:
        job = session.get(Job, "job-dataset-2")
        assert job is not None and job.state == "FAILURE" and "unknown years" in job.errors[0]


# Celery messages of this test go to their own Redis database, so no other test's worker takes them.
BROKER_DB = 12


def test_task_through_a_real_worker_in_stack_mode(
    stack_settings: Any, collection: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.contrib.testing.worker import start_worker

    from shared.celery_app import make_celery
    from shared.config import get_settings

    broker = stack_settings.redis_url.rsplit("/", 1)[0] + f"/{servers.redis_db(BROKER_DB)}"
    monkeypatch.setenv("POSTERGENRE_BROKER_URL", broker)
    monkeypatch.setenv("POSTERGENRE_RESULT_BACKEND", broker)
    get_settings.cache_clear()
    imported(collection(years=range(2000, 2002), per_year=10))
    app = make_celery(get_settings())
    app.control.purge()  # messages a killed earlier run left behind would be taken first
    good_id, bad_id = f"job-{uuid.uuid4().hex}", f"job-{uuid.uuid4().hex}"
    request = {"years": "2000-2001", "min_posters": 5, "image_size": 16}
    try:
        with start_worker(app, pool="solo", queues=["dataset"], perform_ping_check=False):
            dataset_id = app.send_task("postergenre.dataset", kwargs=request, task_id=good_id).get(
                timeout=120
            )
            bad = app.send_task("postergenre.dataset", kwargs={"years": "1950"}, task_id=bad_id)
            with pytest.raises(DatasetInputError, match="unknown years"):
                bad.get(timeout=60)
    finally:
        app.control.purge()
    manifest = load_manifest(object_store_from_settings(), dataset_id)
    assert sorted(manifest["targets"]) == ["2000", "2001"]
    with session_scope() as session:
        job = session.get(Job, good_id)
        assert job is not None and job.state == "SUCCESS" and job.result["dataset_id"] == dataset_id
        failed = session.get(Job, bad_id)
        assert failed is not None and failed.state == "FAILURE"


def test_a_poster_missing_from_the_store_is_named(
    settings: Any, poster_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    imported(poster_folder)
    with session_scope() as session:
        key = session.query(Movie).filter(Movie.source_id == "tt1000005").one().poster_key or ""
    object_store_from_settings().delete(key)
    assert main(["dataset", "build", "--years", "2000-2001", *SMALL]) == 2
    assert f"poster {key} of a selected movie cannot be read" in capsys.readouterr().err
    assert not list(object_store_from_settings().list("datasets/"))
