"""Reading a dataset version for training: ``tf.data`` pipelines and numpy arrays of its shards.

The other half of the dataset contract (the manifest is read by ``shared.dataset_manifest``): the
dataset service writes the shards (each example through :func:`serialize_example`), the trainer and
``evaluate`` read them here, so neither imports the other.

The shards of a version are immutable, so they are fetched once from the object store into
``settings.home_dir/cache/<key>`` and read from there afterwards (a second epoch, a second model
of the same version, a rerun). Every TFRecord holds ``pixels`` (raw uint8 S*S*3), ``labels``
(int64 multi-hot over the manifest's ``genres``), ``movie_id`` and ``year``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.files import write_bytes_atomically
from shared.storage import ObjectStore

if TYPE_CHECKING:
    import tensorflow as tf

SHUFFLE_BUFFER = 2048


def cache_dir() -> Path:
    from shared.config import get_settings

    return get_settings().home_dir / "cache"


def cached_file(store: ObjectStore, key: str, cache: Path | None = None) -> Path:
    """Local copy of an immutable object, fetched on first use (written atomically)."""
    path = (cache or cache_dir()) / key
    if path.is_file():
        return path
    write_bytes_atomically(path, store.get(key))
    return path


def shard_files(store: ObjectStore, manifest: dict[str, Any], target: str, split: str) -> list[str]:
    target_info = _target(manifest, target)
    if split not in target_info["shards"]:
        raise KeyError(
            f"split {split!r} not in dataset {manifest['id']} (splits: {sorted(target_info['shards'])})"
        )
    return [str(cached_file(store, key)) for key in target_info["shards"][split]]


def _target(manifest: dict[str, Any], target: str) -> dict[str, Any]:
    targets: dict[str, Any] = manifest["targets"]
    if str(target) not in targets:
        raise KeyError(f"target {target!r} not in dataset {manifest['id']} (targets: {sorted(targets)})")
    return dict(targets[str(target)])


def feature_spec(genre_count: int) -> dict[str, Any]:
    """The TFRecord features of a shard (labels: multi-hot over the manifest's genres)."""
    import tensorflow as tf

    return {
        "pixels": tf.io.FixedLenFeature([], tf.string),
        "labels": tf.io.FixedLenFeature([genre_count], tf.int64),
        "movie_id": tf.io.FixedLenFeature([], tf.int64),
        "year": tf.io.FixedLenFeature([], tf.int64),
    }


def serialize_example(pixels: np.ndarray, labels: np.ndarray, movie_id: int, year: int) -> bytes:
    """One TFRecord example as the dataset service writes it: the other half of :func:`feature_spec`,
    kept beside it so that the format the shards are written in and the one they are read in are one."""
    import tensorflow as tf

    feature = {
        "pixels": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels.tobytes()])),
        "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in labels])),
        "movie_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(movie_id)])),
        "year": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(year)])),
    }
    return bytes(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def repeat_counts(manifest: dict[str, Any], target: str) -> dict[int, int]:
    """How many times each train movie appears in the balanced train split (0: undersampled away)."""
    info = _target(manifest, target)
    counts = Counter(int(movie_id) for movie_id in info["train_balanced"])
    return {int(movie_id): counts.get(int(movie_id), 0) for movie_id in info["splits"]["train"]}


def split_dataset(
    store: ObjectStore,
    manifest: dict[str, Any],
    target: str,
    split: str,
    batch_size: int,
    shuffle: bool = False,
    balanced: bool = False,
    with_year: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """``(pixels float32 [B,S,S,3] 0..255, labels float32 [B,G])`` batches of one split of one target.

    ``balanced=True`` (train only) repeats each movie as often as ``train_balanced`` lists it, and drops
    the movies that undersampling left out. ``with_year=True`` yields ``((pixels, year), labels)`` with
    ``year`` int64 [B]. ``shuffle`` reshuffles every epoch (shard order and a buffer of examples).
    """
    import tensorflow as tf

    if balanced and split != "train":
        raise ValueError("only the train split is balanced; validation and test are never resampled")
    size = int(manifest["image_size"])
    genre_count = len(manifest["genres"])
    files = shard_files(store, manifest, target, split)
    spec = feature_spec(genre_count)

    def parse(record: tf.Tensor) -> dict[str, tf.Tensor]:
        example = tf.io.parse_single_example(record, spec)
        return {
            "pixels": example["pixels"],
            "labels": example["labels"],
            "movie_id": example["movie_id"],
            "year": example["year"],
        }

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle and len(files) > 1:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(4, max(1, len(files))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle,
    )
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    if balanced:
        counts = repeat_counts(manifest, target)
        ids = sorted(counts)
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(ids or [0], tf.int64), tf.constant([counts[i] for i in ids] or [0], tf.int64)
            ),
            default_value=tf.constant(1, tf.int64),
        )
        dataset = dataset.flat_map(
            lambda example: tf.data.Dataset.from_tensors(example).repeat(table.lookup(example["movie_id"]))
        )
    if shuffle:
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)

    def to_model_input(batch: dict[str, tf.Tensor]) -> Any:
        pixels = tf.reshape(tf.io.decode_raw(batch["pixels"], tf.uint8), [-1, size, size, 3])
        pixels = tf.cast(pixels, tf.float32)
        labels = tf.cast(batch["labels"], tf.float32)
        if with_year:
            return (pixels, batch["year"]), labels
        return pixels, labels

    dataset = dataset.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    return dataset.prefetch(tf.data.AUTOTUNE)


def load_arrays(
    store: ObjectStore, manifest: dict[str, Any], target: str, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A whole split in memory, in shard order, never resampled:
    ``(pixels uint8 [N,S,S,3], labels float32 [N,G], movie_ids int64 [N], years int64 [N])``."""
    import tensorflow as tf

    size = int(manifest["image_size"])
    genre_count = len(manifest["genres"])
    files = shard_files(store, manifest, target, split)
    spec = feature_spec(genre_count)
    pixels, labels, movie_ids, years = [], [], [], []
    for record in tf.data.TFRecordDataset(files).batch(512):
        batch = tf.io.parse_example(record, spec)
        pixels.append(tf.reshape(tf.io.decode_raw(batch["pixels"], tf.uint8), [-1, size, size, 3]).numpy())
        labels.append(batch["labels"].numpy())
        movie_ids.append(batch["movie_id"].numpy())
        years.append(batch["year"].numpy())
    if not pixels:
        return (
            np.zeros((0, size, size, 3), np.uint8),
            np.zeros((0, genre_count), np.float32),
            np.zeros((0,), np.int64),
            np.zeros((0,), np.int64),
        )
    return (
        np.concatenate(pixels),
        np.concatenate(labels).astype(np.float32),
        np.concatenate(movie_ids).astype(np.int64),
        np.concatenate(years).astype(np.int64),
    )
