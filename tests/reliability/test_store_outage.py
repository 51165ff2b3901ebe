"""The object store unreachable for 10 s in the middle of a dataset build and of a crawl.

The store is the real S3-protocol server behind a :class:`~tests.reliability.faults.CuttableLink`: a
cut refuses new connections and resets open ones, as a MinIO restart does, while the objects survive.
Expected: the writes retry with backoff (``shared.storage.S3ObjectStore``), the job completes, and no
object is left that a reader could take for a complete version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from benchmarks.fakes.tmdb_site import TmdbSite
from services.crawler.importer import import_folder
from services.dataset.pipeline import BuildResult, build_dataset
from shared.config import Settings, get_settings
from shared.dataset_manifest import DatasetNotFoundError, load_manifest
from shared.dataset_params import BuildParams
from shared.dataset_reader import load_arrays
from shared.db import DatasetVersion, Movie, session_scope, upgrade_database
from shared.storage import ObjectStore, ObjectStoreError, open_object_store
from tests.conftest import write_poster_folder
from tests.reliability.faults import CuttableLink
from tests.services.crawler.conftest import RunningSite, catalog_snapshot, start_crawl_process
from tests.services.dataset.conftest import collection_rows

OUTAGE_S = 10.0
PARAMS = {"years": "2000-2001", "window": "year", "min_posters": 10, "image_size": 16,
          "min_genre_posters": 2, "shard_size": 4}


@pytest.fixture
def s3_link(s3_endpoint: str) -> Iterator[CuttableLink]:
    with CuttableLink(s3_endpoint) as link:
        yield link


def store_through(settings: Settings, link: CuttableLink, retry_seconds: float) -> ObjectStore:
    return open_object_store(settings.effective_object_store, link.endpoint, settings.s3_access_key,
                             settings.s3_secret_key, retry_seconds=retry_seconds)


def imported_collection(tmp_path: Path, store: ObjectStore) -> None:
    upgrade_database()
    folder = write_poster_folder(tmp_path / "collection", collection_rows(range(2000, 2002), 16))
    report = import_folder(folder, store)
    assert not report.errors


def cut_at_first(message_prefix: str, link: CuttableLink, outage_s: float | None,
                 restored: list[float]) -> Callable[[float, str], None]:
    """A build progress callback that cuts the link at the first ``message_prefix`` stage and, unless
    ``outage_s`` is None, restores it that many seconds later."""

    def restore() -> None:
        link.restore()
        restored.append(time.monotonic())

    def progress(_percent: float, message: str) -> None:
        if message.startswith(message_prefix) and link.cuts == 0:
            link.cut()
            if outage_s is not None:
                threading.Timer(outage_s, restore).start()

    return progress


def assert_complete_version(store: ObjectStore, result: BuildResult) -> None:
    """Every object of the version is one the manifest or report names, and every shard reads back."""
    manifest = load_manifest(store, result.dataset_id)
    named = {f"datasets/{result.dataset_id}/{name}"
             for name in ("manifest.json", "report.json", "report.png")}
    for target, info in manifest["targets"].items():
        for split, keys in info["shards"].items():
            named.update(keys)
            pixels, labels, movie_ids, _ = load_arrays(store, manifest, target, split)
            assert sorted(movie_ids.tolist()) == sorted(info["splits"][split])
            assert len(pixels) == len(labels) == len(movie_ids)
    assert set(store.list(f"datasets/{result.dataset_id}/")) == named


@pytest.mark.slow
def test_dataset_build_waits_out_a_10_second_store_outage(stack_settings: Settings, s3_link: CuttableLink,
                                                          tmp_path: Path) -> None:
    store = store_through(stack_settings, s3_link, retry_seconds=60)
    imported_collection(tmp_path, store)
    restored: list[float] = []
    result = build_dataset(BuildParams.from_mapping(PARAMS), store, decode_workers=2,
                           progress=cut_at_first("writing shards", s3_link, OUTAGE_S, restored))
    finished = time.monotonic()
    assert s3_link.cuts == 1 and restored and restored[0] <= finished  # it did wait for the store
    assert not result.reused
    assert_complete_version(store, result)
    with session_scope() as session:
        assert session.get(DatasetVersion, result.dataset_id) is not None


@pytest.mark.slow
def test_dataset_build_that_outlives_its_retries_leaves_no_version_and_resumes(
        stack_settings: Settings, s3_link: CuttableLink, tmp_path: Path) -> None:
    imported_collection(tmp_path, store_through(stack_settings, s3_link, retry_seconds=60))
    impatient = store_through(stack_settings, s3_link, retry_seconds=2)
    with pytest.raises(ObjectStoreError, match="unreachable"):
        build_dataset(BuildParams.from_mapping(PARAMS), impatient, decode_workers=2,
                      progress=cut_at_first("writing shards", s3_link, None, []))
    s3_link.restore()
    store = store_through(stack_settings, s3_link, retry_seconds=60)
    with session_scope() as session:
        assert session.scalars(select(DatasetVersion)).all() == []  # nothing recorded as built
    written = [key for key in store.list("datasets/")]
    assert written and not any(key.endswith("/manifest.json") for key in written)
    dataset_id = written[0].split("/")[1]
    with pytest.raises(DatasetNotFoundError):
        load_manifest(store, dataset_id)  # a reader cannot take the shards written so far for a version

    # Run again once the store is back: the same version, the shards already written are kept.
    result = build_dataset(BuildParams.from_mapping(PARAMS), store, decode_workers=2)
    assert result.dataset_id == dataset_id and not result.reused
    assert set(written) <= set(store.list(f"datasets/{dataset_id}/"))
    assert_complete_version(store, result)


def wait_for_rows(database_url: str, count: int, process: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the crawl ended before the outage"  # type: ignore[attr-defined]
        try:
            with session_scope(database_url) as session:
                if len(session.scalars(select(Movie.id)).all()) >= count:
                    return
        except Exception:  # the schema is being created
            pass
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {count} movies after {timeout}s")


@pytest.mark.slow
def test_crawl_waits_out_a_10_second_store_outage(stack_settings: Settings, s3_link: CuttableLink,
                                                  make_site: Callable[..., RunningSite],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Five posters, then the site holds the rest until the store is cut: the outage always lands
    # mid-crawl (under two test workers a free-running crawl once stored all 40 before the cut).
    site = TmdbSite.generated({2009: 40}, poster_delay=0.1, hold_posters_after=5)
    make_site(site)
    monkeypatch.setenv("POSTERGENRE_CRAWL_CONCURRENCY", "2")
    # A held poster request must not time out while the test waits for the first rows.
    env = {"POSTERGENRE_S3_ENDPOINT": s3_link.endpoint, "POSTERGENRE_S3_RETRY_SECONDS": "60",
           "POSTERGENRE_CRAWL_TIMEOUT": "60"}
    process = start_crawl_process("--years", "2009", "--job-id", "s3-outage", env=env)
    try:
        wait_for_rows(stack_settings.effective_database_url, 5, process)
        s3_link.cut()
        site.release_posters()
        time.sleep(OUTAGE_S)
        s3_link.restore()
        output = process.communicate(timeout=180)[0]
    finally:
        site.release_posters()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "unreachable" in output  # the store client said it was retrying
    get_settings.cache_clear()
    settings = get_settings()
    store = open_object_store(settings.effective_object_store, settings.s3_endpoint, settings.s3_access_key,
                              settings.s3_secret_key)
    snapshot = catalog_snapshot(settings.effective_database_url, store)
    assert {int(row[1]) for row in snapshot.movies} == {movie.id for movie in site.movies}
    # Every stored movie's poster is there, whole (its size is the one recorded), and nothing else.
    assert sorted(str(row[8]) for row in snapshot.movies) == snapshot.objects
    for row in snapshot.movies:
        assert store.size(str(row[8])) == row[12]
