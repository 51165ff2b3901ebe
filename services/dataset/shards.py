"""Poster decoding (once per build) and TFRecord shards of resized posters.

Training reads the shards instead of full JPEGs every epoch: each example is the output of
``shared.images.poster_pixels`` (uint8 S*S*3) with its labels, movie id and year.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from shared.dataset_params import DatasetInputError
from shared.dataset_reader import serialize_example
from shared.images import PosterImageError, poster_pixels
from shared.storage import ObjectExistsError, ObjectNotFoundError, ObjectStore

TFRECORD_CONTENT_TYPE = "application/octet-stream"


def shard_key(dataset_id: str, target: str, split: str, index: int, count: int) -> str:
    return f"datasets/{dataset_id}/{target}/{split}-{index:05d}-of-{count:05d}.tfrecord"


def decode_posters(
    store: ObjectStore,
    poster_keys: Sequence[str],
    image_size: int,
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``uint8 [N, S, S, 3]``: every poster fetched and run through ``poster_pixels`` once.

    Threads pay even on 2 cores: fetching waits on the store and Pillow releases the GIL while it
    decodes and resizes (see docs/benchmarks.md, "Dataset build").
    """
    pixels = np.empty((len(poster_keys), image_size, image_size, 3), dtype=np.uint8)

    def decode(index: int) -> int:
        key = poster_keys[index]
        try:
            pixels[index] = poster_pixels(store.get(key), image_size)
        except (PosterImageError, ObjectNotFoundError) as exc:
            # Checked at import, so this is a store out of step with the database: name the poster.
            raise DatasetInputError(f"poster {key} of a selected movie cannot be read: {exc}") from None
        return index

    done = 0
    if workers <= 1:
        for index in range(len(poster_keys)):
            decode(index)
            done += 1
            if progress is not None:
                progress(done)
        return pixels
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(decode, range(len(poster_keys))):
            done += 1
            if progress is not None:
                progress(done)
    return pixels


def tfrecord_bytes(records: Sequence[bytes]) -> bytes:
    """The TFRecord file of ``records`` (length, masked CRC32C of the length, data, masked CRC32C)."""
    import tempfile
    from pathlib import Path

    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for record in records:
                writer.write(record)
        return path.read_bytes()


def put_immutable(store: ObjectStore, key: str, data: bytes, content_type: str) -> None:
    """Write once; an object already there with the same bytes (a resumed build) is accepted."""
    try:
        store.put(key, data, content_type=content_type, overwrite=False)
    except ObjectExistsError:
        if store.get(key) != data:
            raise


def write_split_shards(
    store: ObjectStore,
    dataset_id: str,
    target: str,
    split: str,
    pixels: np.ndarray,
    pixel_rows: np.ndarray,
    labels: np.ndarray,
    movie_ids: np.ndarray,
    years: np.ndarray,
    shard_size: int,
) -> list[str]:
    """Write one split as shards; return their keys. Example ``k`` is ``pixels[pixel_rows[k]]`` with
    ``labels[k]``, ``movie_ids[k]`` and ``years[k]`` (the build decodes each poster once for all targets).

    A split always has at least one shard (possibly empty) so readers need no special case.
    """
    count = max(1, math.ceil(len(pixel_rows) / shard_size))
    keys = []
    for index in range(count):
        chunk = range(index * shard_size, min(len(pixel_rows), (index + 1) * shard_size))
        records = [
            serialize_example(pixels[pixel_rows[k]], labels[k], int(movie_ids[k]), int(years[k]))
            for k in chunk
        ]
        key = shard_key(dataset_id, target, split, index, count)
        put_immutable(store, key, tfrecord_bytes(records), TFRECORD_CONTENT_TYPE)
        keys.append(key)
    return keys
