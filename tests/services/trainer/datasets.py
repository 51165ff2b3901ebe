"""Tiny dataset versions for the trainer tests, written in the dataset service's format.

The shards go through the dataset service's own writer (``services.dataset.shards``) and are read by
the shared reader (``shared.dataset_reader``), so the trainer sees exactly what a real build gives it,
without the import and build steps.
Each genre has its own colour, so even a tiny network finds some signal.
"""

from __future__ import annotations

import json

import numpy as np

from services.dataset.shards import write_split_shards
from shared.storage import ObjectStore

GENRES = ["Action", "Comedy", "Drama", "Horror"]
GENRE_COLOURS = np.array([[200, 40, 40], [240, 220, 60], [60, 60, 160], [20, 20, 20]], dtype=np.float64)


def synthetic_posters(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels uint8 [N,S,S,3], labels float32 [N,G])``: each poster tinted by its genres' colours."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((count, len(GENRES)), np.float32)
    for row in range(count):
        labels[row, rng.choice(len(GENRES), size=rng.integers(1, 3), replace=False)] = 1.0
    tint = labels @ GENRE_COLOURS / labels.sum(axis=1, keepdims=True)
    noise = rng.normal(0, 30, size=(count, size, size, 3))
    pixels = np.clip(tint[:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return pixels, labels


def write_dataset(store: ObjectStore, dataset_id: str, years: list[int], per_year: int = 12, size: int = 32,
                  window: str = "year", seed: int = 0) -> dict:
    """Write a dataset version with one target per year (train 50%, validation 25%, test 25%)."""
    targets = {}
    next_id = 1
    for offset, year in enumerate(years):
        pixels, labels = synthetic_posters(per_year, size, seed + offset)
        ids = np.arange(next_id, next_id + per_year, dtype=np.int64)
        next_id += per_year
        cut_train, cut_val = per_year // 2, per_year // 2 + per_year // 4
        parts = {"train": slice(0, cut_train), "validation": slice(cut_train, cut_val),
                 "test": slice(cut_val, per_year)}
        splits, shards = {}, {}
        for split, part in parts.items():
            rows = np.arange(per_year)[part]
            shards[split] = write_split_shards(store, dataset_id, str(year), split, pixels, rows,
                                               labels[part], ids[part], np.full(len(rows), year),
                                               shard_size=1024)
            splits[split] = [int(i) for i in ids[part]]
        targets[str(year)] = {"years": [year], "splits": splits, "train_balanced": list(splits["train"]),
                              "shards": shards, "counts": {"movies": per_year}}
    manifest = {"id": dataset_id, "content_hash": dataset_id, "window": window, "params": {},
                "image_size": size, "genres": GENRES, "targets": targets}
    store.put(f"datasets/{dataset_id}/manifest.json", json.dumps(manifest).encode(),
              content_type="application/json", overwrite=False)
    return manifest
