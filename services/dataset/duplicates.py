"""Grouping copies of the same poster so a group never straddles train/validation/test.

Two movies are in one group when their posters have the same SHA-256 or perceptual hashes
(``shared.images.perceptual_hash``, 64-bit dHash) within ``max_distance`` bits; groups are the
connected components of that relation (A~B and B~C puts A, B and C together).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HASH_BITS = 64


def phash_array(phashes: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Perceptual hashes (16 hex digits) as ``uint64`` values, and which movies have one."""
    present = np.array([bool(h) for h in phashes], dtype=bool)
    values = np.array([int(h, 16) if h else 0 for h in phashes], dtype=np.uint64)
    return values, present


def popcount(values: np.ndarray) -> np.ndarray:
    return np.bitwise_count(values.astype(np.uint64)).astype(np.int64)


def near_pairs(values: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of distinct ``uint64`` values within ``max_distance`` bits.

    Multi-index hashing: cut the 64 bits into ``max_distance + 1`` blocks; two hashes that differ in at
    most ``max_distance`` bits agree exactly on at least one block (pigeonhole), so only values sharing a
    block are compared. Sorting by a block puts them next to each other.
    """
    count = len(values)
    if count < 2 or max_distance <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    blocks = max_distance + 1
    edges = np.linspace(0, HASH_BITS, blocks + 1).astype(int)
    lefts, rights = [], []
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        mask = np.uint64((1 << int(stop - start)) - 1)
        keys = (values >> np.uint64(start)) & mask
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        offset = 1
        while offset < count:
            same = sorted_keys[offset:] == sorted_keys[:-offset]
            if not same.any():
                break
            first, second = order[:-offset][same], order[offset:][same]
            close = popcount(values[first] ^ values[second]) <= max_distance
            lefts.append(first[close])
            rights.append(second[close])
            offset += 1
    if not lefts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    left, right = np.concatenate(lefts), np.concatenate(rights)
    return np.minimum(left, right), np.maximum(left, right)


def group_duplicates(
    sha256s: Sequence[str | None], phashes: Sequence[str | None], max_distance: int
) -> np.ndarray:
    """Group id (0..K-1, numbered by first member) of each movie; movies without a duplicate are alone."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    count = len(sha256s)
    if count == 0:
        return np.zeros(0, np.int64)
    # Nodes: the movies, then one node per distinct sha256, then one per distinct perceptual hash.
    sha_keys = np.array([s or f"none-{i}" for i, s in enumerate(sha256s)], dtype=object)
    _, sha_node = np.unique(sha_keys, return_inverse=True)
    values, present = phash_array(phashes)
    distinct, phash_node = np.unique(values[present], return_inverse=True)
    sha_base = count
    phash_base = count + int(sha_node.max()) + 1
    movies = np.arange(count)
    left = [movies, movies[present]]
    right = [sha_base + sha_node, phash_base + phash_node]
    first, second = near_pairs(distinct, max_distance)
    left.append(phash_base + first)
    right.append(phash_base + second)
    rows, cols = np.concatenate(left), np.concatenate(right)
    nodes = phash_base + len(distinct)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(nodes, nodes))
    _, component = connected_components(graph, directed=False)
    # Renumber by first member so group ids do not depend on scipy's numbering.
    _, first_seen, inverse = np.unique(component[:count], return_index=True, return_inverse=True)
    rank = np.empty(len(first_seen), np.int64)
    rank[np.argsort(first_seen)] = np.arange(len(first_seen))
    return rank[inverse]
