"""``postergenre bench web``: latency and throughput of ``POST /api/v1/predictions`` on a running server.

Two passes: *cold* sends distinct posters (each a new sha256, so every year's model runs) and *cached*
sends one poster again and again (served from the score cache). Posters are generated, or derived
from ``--poster`` by changing one pixel, so no two cold requests share a cache entry.
"""

from __future__ import annotations

import io
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class BenchResult:
    name: str
    requests: int
    seconds: float
    latencies_ms: list[float]

    def summary(self) -> str:
        ordered = sorted(self.latencies_ms)
        p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
        return (f"{self.name:>7}: {self.requests} requests in {self.seconds:.2f} s = "
                f"{self.requests / self.seconds:.1f} req/s; latency p50 {statistics.median(ordered):.1f} ms, "
                f"p95 {p95:.1f} ms, max {ordered[-1]:.1f} ms")


def poster_variants(base: bytes | None, count: int) -> list[bytes]:
    """``count`` distinct JPEG posters (a different first pixel each)."""
    image = Image.open(io.BytesIO(base)).convert("RGB") if base else Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (450, 300, 3), dtype=np.uint8))
    pixels = np.asarray(image).copy()
    variants = []
    for index in range(count):
        pixels[0, 0] = [index % 256, (index // 256) % 256, 7]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        variants.append(buffer.getvalue())
    return variants


def run_pass(name: str, url: str, posters: list[bytes], years: str, concurrency: int) -> BenchResult:
    import httpx

    def one(client: httpx.Client, data: bytes) -> float:
        started = time.perf_counter()
        response = client.post(f"{url}/api/v1/predictions", params={"years": years},
                               files={"file": ("poster.jpg", data, "image/jpeg")})
        response.raise_for_status()
        return (time.perf_counter() - started) * 1000

    with httpx.Client(timeout=120) as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            latencies = list(pool.map(lambda data: one(client, data), posters))
        return BenchResult(name, len(posters), time.perf_counter() - started, latencies)


def bench_web(url: str, poster: Path | None, years: str, requests: int,
              concurrency: int) -> list[BenchResult]:
    base = poster.read_bytes() if poster else None
    posters = poster_variants(base, requests + 1)
    warm = run_pass("warm-up", url, posters[-1:], years, 1)  # loads the models, fills one cache entry
    cold = run_pass("cold", url, posters[:requests], years, concurrency)
    cached = run_pass("cached", url, posters[-1:] * requests, years, concurrency)
    return [warm, cold, cached]
