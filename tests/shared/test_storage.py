from __future__ import annotations

from pathlib import Path

import pytest

from shared.storage import (
    LocalObjectStore,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
    S3ObjectStore,
    download_prefix,
    object_store_from_settings,
    open_object_store,
)


def exercise(store: ObjectStore, tmp_path: Path) -> None:
    store.put("posters/a/1.jpg", b"one", content_type="image/jpeg")
    store.put("posters/b/2.jpg", b"two", content_type="image/jpeg")
    store.put("models/x/1/saved_model.pb", b"pb")
    assert store.get("posters/a/1.jpg") == b"one"
    assert store.exists("posters/b/2.jpg") and not store.exists("posters/c/3.jpg")
    assert store.size("posters/b/2.jpg") == 3
    assert sorted(store.list("posters/")) == ["posters/a/1.jpg", "posters/b/2.jpg"]
    with pytest.raises(ObjectExistsError):
        store.put("posters/a/1.jpg", b"changed", overwrite=False)
    assert store.get("posters/a/1.jpg") == b"one"
    with pytest.raises(ObjectNotFoundError):
        store.get("nope")
    with pytest.raises(ValueError):
        store.put("../escape", b"x")
    with pytest.raises(ValueError):
        store.get("a/../../etc/passwd")
    written = download_prefix(store, "models/x", tmp_path / "dl")
    assert [p.read_bytes() for p in written] == [b"pb"]
    store.delete("posters/a/1.jpg")
    assert not store.exists("posters/a/1.jpg")


def test_local_store(tmp_path: Path) -> None:
    exercise(LocalObjectStore(tmp_path / "objects"), tmp_path)
    assert not list((tmp_path / "objects").rglob(".tmp-*"))


def test_s3_store_against_s3_protocol_server(s3_endpoint: str, s3_bucket_url: str, tmp_path: Path) -> None:
    store = open_object_store(s3_bucket_url, s3_endpoint, "access", "secret")
    exercise(store, tmp_path)


def test_bad_url() -> None:
    with pytest.raises(ValueError, match="file:///path or s3://bucket"):
        open_object_store("ftp://x")


@pytest.mark.slow
def test_s3_store_rides_out_a_10_second_outage() -> None:
    import threading
    import time

    from tests.servers import RestartableS3Server

    server = RestartableS3Server()
    server.start()
    try:
        store = open_object_store("s3://outage", server.endpoint, "a", "b", retry_seconds=40)
        server.stop()
        started = time.monotonic()
        restart = threading.Timer(10.0, server.start)
        restart.start()
        # moto keeps buckets in memory: once it is back, create the bucket as a deployment's
        # bucket job would. This call is the one that waits out the outage.
        assert isinstance(store, S3ObjectStore)
        store.ensure_bucket()
        store.put("posters/x.jpg", b"poster", content_type="image/jpeg")
        restart.join()
        assert time.monotonic() - started >= 9.5
        assert store.get("posters/x.jpg") == b"poster"
    finally:
        server.stop()


def test_s3_store_gives_up_after_its_deadline() -> None:

    from tests.servers import free_port

    store = S3ObjectStore("nobucket", f"127.0.0.1:{free_port()}", "a", "b", retry_seconds=1.0)
    with pytest.raises(ObjectStoreError, match="unreachable"):
        store.put("k", b"v", content_type="text/plain")


def test_every_service_opens_the_store_with_every_store_setting(
    s3_endpoint: str, s3_bucket_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The web service and sync_models open the store through object_store_from_settings, which
    keeps POSTERGENRE_S3_RETRY_SECONDS (they once dropped it and waited the default 30 s)."""
    from services.inference import repository
    from services.web.state import WebState
    from shared.config import Settings
    from shared.db import upgrade_database

    settings = Settings(home=tmp_path, object_store=s3_bucket_url, s3_endpoint=s3_endpoint,
                        s3_access_key="access", s3_secret_key="secret", s3_retry_seconds=7.5)
    store = object_store_from_settings(settings)
    assert isinstance(store, S3ObjectStore) and store.retry_seconds == 7.5
    opened: list[ObjectStore] = []

    def recording_open(settings: Settings) -> ObjectStore:
        opened.append(object_store_from_settings(settings))
        return opened[-1]

    monkeypatch.setattr(repository, "object_store_from_settings", recording_open)
    upgrade_database(settings.effective_database_url)
    repository.sync_models(settings)
    state = WebState(settings, admin_token="unused")
    web_store = state.store
    state.close()
    assert [type(s) for s in (*opened, web_store)] == [S3ObjectStore, S3ObjectStore]
    assert all(s.retry_seconds == 7.5 for s in (*opened, web_store))  # type: ignore[attr-defined]
