"""sync_models: registry + object store -> TF Serving's model folders and models.config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.inference.repository import BATCHING_CONFIG_NAME, WARMUP_FILE, sync_models
from shared.config import Settings
from shared.db import ModelVersion, session_scope, upgrade_database
from shared.inference_client import InferenceClient
from shared.storage import object_store_from_settings, upload_folder
from tests.services.inference.conftest import GENRES, expected_scores, random_pixels, write_pixels_model

# name -> [(version, status, weight seed)]
REGISTRY = {
    "genre-2000": [(1, "blessed", 11), (2, "candidate", 12)],
    "genre-2001": [(1, "retired", 21), (2, "blessed", 22), (3, "candidate", 23)],
    "genre-2002": [(1, "candidate", 31)],  # never blessed: not served
    "genre-2003": [(1, "blessed", 41)],  # registered, but its files never reached the store
}


def register_models(settings: Settings, tmp_path: Path) -> None:
    upgrade_database(settings.effective_database_url)
    store = object_store_from_settings()
    with session_scope(settings.effective_database_url) as session:
        for name, versions in REGISTRY.items():
            for version, status, seed in versions:
                session.add(
                    ModelVersion(
                        name=name,
                        version=version,
                        year=int(name[-4:]),
                        status=status,
                        image_size=16,
                        genres=GENRES,
                    )
                )
                if name != "genre-2003":
                    folder = write_pixels_model(tmp_path / "export" / name / str(version), seed=seed)
                    upload_folder(store, folder, f"models/{name}/{version}")


def parse_config(path: Path) -> dict[str, dict[str, object]]:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    return {
        entry.name: {
            "base_path": entry.base_path,
            "platform": entry.model_platform,
            "versions": list(entry.model_version_policy.specific.versions),
            "labels": dict(entry.version_labels),
        }
        for entry in config.model_config_list.config
    }


def check_synced_repository(settings: Settings, with_canary: bool) -> None:
    config = parse_config(settings.models_config_path)
    assert set(config) == {"genre-2000", "genre-2001"}
    for name, entry in config.items():
        assert entry["platform"] == "tensorflow"
        assert Path(str(entry["base_path"])) == settings.models_dir / name
    if with_canary:
        assert config["genre-2000"]["labels"] == {"stable": 1, "canary": 2}
        assert config["genre-2000"]["versions"] == [1, 2]
        assert config["genre-2001"]["labels"] == {"stable": 2, "canary": 3}
    else:
        assert config["genre-2000"]["labels"] == {"stable": 1}
        assert config["genre-2001"]["versions"] == [2]
    for name, entry in config.items():
        for version in entry["versions"]:  # type: ignore[attr-defined]
            folder = settings.models_dir / name / str(version)
            assert (folder / "saved_model.pb").is_file()
            assert (folder / WARMUP_FILE).is_file()
    assert not list(settings.models_dir.glob("*/.tmp-*"))
    assert "max_batch_size { value: 32 }" in (settings.models_dir / BATCHING_CONFIG_NAME).read_text()


def test_sync_writes_a_model_server_config_and_the_served_versions(settings, tmp_path):
    register_models(settings, tmp_path)
    path = sync_models(settings, with_canary=True)
    assert path == settings.models_config_path
    check_synced_repository(settings, with_canary=True)

    # The warm-up record is a PredictionLog TF Serving can replay.
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    record = next(iter(tf.data.TFRecordDataset(str(settings.models_dir / "genre-2000" / "1" / WARMUP_FILE))))
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    assert log.predict_log.request.model_spec.signature_name == "pixels"
    assert list(log.predict_log.request.inputs["pixels"].tensor_shape.dim[1:2])[0].size == 16


def test_served_labels_and_a_rollback_reach_the_running_server(settings, tmp_path):
    from services.inference.server import start_embedded

    register_models(settings, tmp_path)
    sync_models(settings, with_canary=True)
    server = start_embedded(settings)
    pixels = random_pixels(2, seed=9)
    try:
        with InferenceClient(server.url, timeout=10) as client:
            scores, version = client.predict("genre-2001", pixels, label="stable")
            assert version == 2
            np.testing.assert_allclose(scores, expected_scores(pixels, 22), atol=1e-5)
            assert client.predict("genre-2001", pixels, label="canary")[1] == 3
            assert client.predict("genre-2000", pixels, label="stable")[1] == 1

            # Roll genre-2001 back to version 1, as shared.registry does, then re-sync.
            with session_scope(settings.effective_database_url) as session:
                for row in session.query(ModelVersion).filter_by(name="genre-2001"):
                    row.status = {1: "blessed", 2: "retired", 3: "retired"}[row.version]
            sync_models(settings)
            server.manager.refresh()  # what the poller does every inference_poll_seconds
            scores, version = client.predict("genre-2001", pixels, label="stable")
            assert version == 1
            np.testing.assert_allclose(scores, expected_scores(pixels, 21), atol=1e-5)
            assert client.predict("genre-2001", pixels)[1] == 1
            assert [s.version for s in client.model_status("genre-2001")] == [1]
        # The copies of versions no longer served are gone; the object store still has them.
        assert sorted(p.name for p in (settings.models_dir / "genre-2001").iterdir()) == ["1"]
    finally:
        server.stop(grace=0)


def test_an_embedded_server_watching_the_registry_serves_a_rollback_with_no_sync_call(settings, tmp_path):
    """Only the inference side syncs: a registry change alone reaches a server started with
    ``watch_registry``, within its ``model_sync_interval_s``; an unchanged registry is not synced."""
    import time

    from services.inference.server import start_embedded

    register_models(settings, tmp_path)
    # Every served version in the store (genre-2003's files too), so a synced registry stays synced.
    folder = write_pixels_model(tmp_path / "export" / "genre-2003" / "1", seed=41)
    upload_folder(object_store_from_settings(), folder, "models/genre-2003/1")
    watching = settings.model_copy(update={"model_sync_interval_s": 0.1})
    server = start_embedded(watching, watch_registry=True)
    pixels = random_pixels(2, seed=9)
    try:
        watcher = server.registry_watcher
        assert watcher is not None
        assert watcher.sync_if_changed() is False  # synced at the start; nothing changed since
        with InferenceClient(server.url, timeout=10) as client:
            assert client.predict("genre-2001", pixels)[1] == 2
            # Roll genre-2001 back to version 1 in the registry, and do nothing else.
            with session_scope(settings.effective_database_url) as session:
                for row in session.query(ModelVersion).filter_by(name="genre-2001"):
                    row.status = {1: "blessed", 2: "retired", 3: "retired"}[row.version]
            deadline = time.monotonic() + 30
            while client.predict("genre-2001", pixels)[1] != 1:
                assert time.monotonic() < deadline, "the rollback never reached the server"
                time.sleep(0.1)
            scores, version = client.predict("genre-2001", pixels)
            np.testing.assert_allclose(scores, expected_scores(pixels, 21), atol=1e-5)
        assert watcher.sync_if_changed() is False
    finally:
        server.stop(grace=0)


def test_a_watcher_tries_again_until_a_served_version_reaches_the_object_store(settings, tmp_path):
    """genre-2003 v1 is blessed before its files are in the store: the watcher does not take the
    registry as served, and serves the version once the files have arrived; then it rests."""
    from services.inference.repository import RegistryWatcher

    register_models(settings, tmp_path)
    watcher = RegistryWatcher(settings)
    assert watcher.sync_if_changed() is True
    assert "genre-2003" not in parse_config(settings.models_config_path)
    assert watcher.sync_if_changed() is True  # the registry is unchanged, but not all of it is served
    folder = write_pixels_model(tmp_path / "export" / "genre-2003" / "1", seed=41)
    upload_folder(object_store_from_settings(), folder, "models/genre-2003/1")
    assert watcher.sync_if_changed() is True
    assert parse_config(settings.models_config_path)["genre-2003"]["labels"] == {"stable": 1}
    assert watcher.sync_if_changed() is False


def test_sync_from_s3_and_postgresql(stack_settings, tmp_path):
    register_models(stack_settings, tmp_path)
    sync_models(stack_settings)
    check_synced_repository(stack_settings, with_canary=False)
    # A second sync finds the versions already there and rewrites only the config.
    before = (stack_settings.models_dir / "genre-2000" / "1" / "saved_model.pb").stat().st_mtime_ns
    sync_models(stack_settings)
    assert (stack_settings.models_dir / "genre-2000" / "1" / "saved_model.pb").stat().st_mtime_ns == before


@pytest.mark.parametrize("with_canary", [False, True])
def test_empty_registry_writes_an_empty_config(settings, with_canary):
    upgrade_database(settings.effective_database_url)
    sync_models(settings, with_canary=with_canary)
    assert parse_config(settings.models_config_path) == {}
