"""Written dataset and model versions cannot be overwritten, through the services' own functions.

A rebuild with the same parameters and data reuses the version (same id, same bytes); a write of other
bytes under a version's key is refused with ``ObjectExistsError``; a re-registration of a training
task returns its version instead of adding or replacing one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from services.crawler.importer import import_folder
from services.dataset.pipeline import build_dataset
from services.dataset.report import load_report, store_report
from services.dataset.shards import put_immutable
from services.trainer.tasks import upload_version
from shared import registry
from shared.config import Settings
from shared.dataset_manifest import manifest_key
from shared.dataset_params import BuildParams
from shared.db import DatasetVersion, session_scope, upgrade_database
from shared.storage import ObjectExistsError, ObjectStore, object_store_from_settings
from tests.conftest import write_poster_folder
from tests.services.dataset.conftest import collection_rows
from tests.services.web.tiny_models import TinyModel

PARAMS = {"years": "2000-2001", "window": "year", "min_posters": 10, "image_size": 16,
          "min_genre_posters": 2, "shard_size": 8}


def snapshot(store: ObjectStore, prefix: str) -> dict[str, bytes]:
    return {key: store.get(key) for key in store.list(prefix)}


def dataset_rows() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(DatasetVersion)) or 0


def test_a_dataset_version_once_written_cannot_be_overwritten(stack_settings: Settings,
                                                              tmp_path: Path) -> None:
    upgrade_database()
    store = object_store_from_settings()
    rows = collection_rows(range(2000, 2002), 16)
    assert not import_folder(write_poster_folder(tmp_path / "one", rows), store).errors
    params = BuildParams.from_mapping(PARAMS)
    first = build_dataset(params, store, decode_workers=2)
    prefix = f"datasets/{first.dataset_id}/"
    written = snapshot(store, prefix)
    shard = first.manifest["targets"]["2000"]["shards"]["train"][0]

    # The same build again is the same version: reused, nothing rewritten, no second row.
    again = build_dataset(params, store, decode_workers=2)
    assert again.reused and again.dataset_id == first.dataset_id
    assert snapshot(store, prefix) == written and dataset_rows() == 1

    # Other bytes under the version's keys are refused by the dataset service's writers.
    with pytest.raises(ObjectExistsError):
        put_immutable(store, shard, b"other shard bytes", "application/octet-stream")
    with pytest.raises(ObjectExistsError):
        put_immutable(store, manifest_key(first.dataset_id), b"{}", "application/json")
    tampered = {**load_report(store, first.dataset_id), "tampered": True}
    store_report(store, first.dataset_id, tampered)  # keeps the first report
    assert snapshot(store, prefix) == written

    # New data is a new version beside the old one, which stays as it was.
    more = rows + [(f"tt{3000000 + index:07d}", 2001, f"New {index}", "Drama|Comedy") for index in range(4)]
    assert not import_folder(write_poster_folder(tmp_path / "two", more), store).errors
    second = build_dataset(params, store, decode_workers=2)
    assert second.dataset_id != first.dataset_id and not second.reused
    assert snapshot(store, prefix) == written and dataset_rows() == 2


def test_a_model_version_once_written_cannot_be_overwritten(stack_settings: Settings,
                                                            reliability_models: list[TinyModel]) -> None:
    upgrade_database()
    store = object_store_from_settings()
    model = reliability_models[0]
    details: dict[str, Any] = {"name": "genre-2000", "year": 2000, "window": "year", "layout": "independent",
               "architecture": "smallcnn", "image_size": model.image_size, "dataset_version": "ds-1",
               "genres": model.genres, "years": [2000]}
    row = registry.register(task_id="task-a", metrics={"test": {"macro_map": 0.5}}, **details)
    prefix = f"models/genre-2000/{row['version']}"
    keys = upload_version(store, model.folder, prefix)
    written = snapshot(store, prefix + "/")
    assert set(written) == set(keys) and any(key.endswith("saved_model.pb") for key in keys)

    # The trainer's upload of another model to the same version is refused, file by file.
    other = reliability_models[1]
    with pytest.raises(ObjectExistsError):
        upload_version(store, other.folder, prefix)
    assert snapshot(store, prefix + "/") == written

    # A redelivered task registers nothing new and changes nothing; another task gets a new version.
    again = registry.register(task_id="task-a", metrics={"test": {"macro_map": 0.9}}, **details)
    assert again["version"] == row["version"] and again["metrics"] == row["metrics"]
    newer = registry.register(task_id="task-b", **details)
    assert newer["version"] == row["version"] + 1
    assert [r["version"] for r in registry.list_versions("genre-2000")] == [row["version"], newer["version"]]
    assert snapshot(store, prefix + "/") == written


def test_a_training_never_overwrites_a_version_another_training_wrote(tmp_path: Path) -> None:
    """A registry restored from an old backup hands out a version number that exists in the store."""
    from services.trainer.tasks import VersionTakenError, claim_version_prefix
    from shared.storage import LocalObjectStore

    store = LocalObjectStore(tmp_path / "objects")
    claim_version_prefix(store, "models/genre-2000/1", "task-a")
    store.put("models/genre-2000/1/saved_model.pb", b"model of task a")
    claim_version_prefix(store, "models/genre-2000/1", "task-a")  # its own redelivery may rewrite
    with pytest.raises(VersionTakenError, match="task-a"):
        claim_version_prefix(store, "models/genre-2000/1", "task-b")
    store.put("models/genre-2000/2/saved_model.pb", b"written before any claim existed")
    with pytest.raises(VersionTakenError, match="unknown training"):
        claim_version_prefix(store, "models/genre-2000/2", "task-c")
    assert store.get("models/genre-2000/1/saved_model.pb") == b"model of task a"
    assert store.get("models/genre-2000/2/saved_model.pb") == b"written before any claim existed"
