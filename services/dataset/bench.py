"""``postergenre bench dataset``: split + balance time on synthetic movie records (no images).

The records imitate the shared IMDb collection: 1-3 genres per movie drawn with its genre
frequencies (Drama on about half the movies, Western under 1 %), 2 % exact duplicate posters and 2 %
near-duplicates (perceptual hash 1-3 bits away), spread evenly over the years.
"""

from __future__ import annotations

import os
import platform
import time
import tracemalloc
from typing import Any

import numpy as np

from services.dataset.pipeline import manifest_of, plan_dataset
from services.dataset.selection import MovieTable
from shared.dataset_params import WINDOWS, BuildParams

# Posters per genre in the shared collection (labels.csv of posters-imdb), as relative weights.
GENRE_WEIGHTS: dict[str, int] = {
    "Drama": 2361,
    "Comedy": 1874,
    "Romance": 884,
    "Action": 877,
    "Crime": 766,
    "Adventure": 633,
    "Thriller": 587,
    "Documentary": 355,
    "Horror": 336,
    "Biography": 317,
    "Fantasy": 316,
    "Mystery": 312,
    "Sci-Fi": 271,
    "Family": 263,
    "Music": 201,
    "Animation": 172,
    "History": 142,
    "Sport": 137,
    "War": 101,
    "Musical": 53,
    "Western": 36,
}


def synthetic_table(records: int, years: range, seed: int = 0) -> MovieTable:
    rng = np.random.default_rng(seed)
    names = list(GENRE_WEIGHTS)
    weights = np.array(list(GENRE_WEIGHTS.values()), dtype=float)
    # Weighted sampling without replacement (Gumbel top-k): the first k of the noisy log-weights.
    keys = np.log(weights / weights.sum()) + rng.gumbel(size=(records, len(names)))
    ranked = np.argsort(-keys, axis=1)
    sizes = rng.choice([1, 2, 3], size=records, p=[0.35, 0.4, 0.25])
    genres = [sorted(names[j] for j in ranked[i, : sizes[i]]) for i in range(records)]
    sha = [f"{value:016x}" * 4 for value in rng.integers(0, 2**62, records)]
    phash_values = rng.integers(0, 2**63, records, dtype=np.int64).astype(np.uint64)
    copies = rng.choice(records, size=records // 50, replace=False)
    for index in copies:  # exact duplicates: the poster of another movie
        sha[index] = sha[int(rng.integers(records))]
    near = rng.choice(records, size=records // 50, replace=False)
    sources = rng.integers(0, records, size=len(near))
    flips = np.uint64(1) << rng.integers(0, 64, size=(len(near), 3)).astype(np.uint64)
    phash_values[near] = phash_values[sources] ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2]
    return MovieTable(
        movie_ids=np.arange(1, records + 1, dtype=np.int64),
        years=np.repeat(np.array(list(years)), -(-records // len(years)))[:records].astype(np.int64),
        sha256s=sha,
        phashes=[f"{int(v):016x}" for v in phash_values],
        poster_keys=[f"posters/bench/{i}.jpg" for i in range(records)],
        genres=genres,
    )


def build_once(table: MovieTable, params: BuildParams) -> dict[str, Any]:
    plan = plan_dataset(params, table)
    manifest = manifest_of(plan)
    return {
        "targets": len(plan.targets),
        "train_balanced": sum(t["counts"]["movies"]["train_balanced"] for t in manifest["targets"].values()),
    }


def run_benchmark(records: int = 100_000, years: int = 20, seed: int = 0) -> dict[str, Any]:
    span = range(2000, 2000 + years)
    started = time.perf_counter()
    table = synthetic_table(records, span, seed)
    generate = time.perf_counter() - started
    windows: dict[str, Any] = {}
    for window in WINDOWS:
        params = BuildParams(first_year=span[0], last_year=span[-1], window=window, seed=seed)
        start, cpu_start = time.perf_counter(), time.process_time()
        info = build_once(table, params)
        windows[window] = {
            **info,
            "seconds": round(time.perf_counter() - start, 3),
            # CPU time says more than wall time on a machine shared with other jobs.
            "cpu_seconds": round(time.process_time() - cpu_start, 3),
        }
    # Peak memory in a second pass (tracemalloc slows the code it watches), at several sizes. The
    # balanced train split grows faster than the records (composites x 1 % of N), and so does memory.
    memory: dict[str, Any] = {}
    for size in (records // 4, records // 2, records):
        part = synthetic_table(size, span, seed)
        tracemalloc.start()
        info = build_once(
            part, BuildParams(first_year=span[0], last_year=span[-1], window="rolling", seed=seed)
        )
        memory[str(size)] = {
            "peak_mib": round(tracemalloc.get_traced_memory()[1] / 2**20, 1),
            "train_balanced": info["train_balanced"],
        }
        tracemalloc.stop()
    return {
        "benchmark": "dataset split+balance (no images)",
        "records": records,
        "years": f"{span[0]}-{span[-1]}",
        "generate_seconds": round(generate, 3),
        "windows": windows,
        "total_seconds": round(sum(w["seconds"] for w in windows.values()), 3),
        "total_cpu_seconds": round(sum(w["cpu_seconds"] for w in windows.values()), 3),
        "peak_memory_mib": memory[str(records)]["peak_mib"],
        "rolling_memory_by_records": memory,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), "
        f"Python {platform.python_version()}",
    }
