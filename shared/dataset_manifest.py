"""Where a dataset version's manifest lives and how it is read: the contract between the dataset
builder that writes it and everyone who reads it (the trainer, ``evaluate``, the admin API).

The manifest's fields are described in docs/datasets.md.
"""

from __future__ import annotations

import json
from typing import Any

from shared.storage import ObjectNotFoundError, ObjectStore

MANIFEST_NAME = "manifest.json"


class DatasetNotFoundError(LookupError):
    """No manifest for this dataset id (never built, or built elsewhere)."""


def manifest_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/{MANIFEST_NAME}"


def load_manifest(store: ObjectStore, dataset_id: str) -> dict[str, Any]:
    """The manifest of a version (see docs/datasets.md for its fields)."""
    try:
        return dict(json.loads(store.get(manifest_key(dataset_id))))
    except ObjectNotFoundError:
        raise DatasetNotFoundError(
            f"dataset {dataset_id!r} not found (no {manifest_key(dataset_id)})"
        ) from None
