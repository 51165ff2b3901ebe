"""``postergenre bench web``: latency and throughput of ``POST /api/v1/predictions`` on a running server;
and :func:`poster_poster`, the client of that API that the other benchmarks post their posters with.

Two passes: *cold* sends distinct posters (each a new sha256, so every year's model runs) and *cached*
sends one poster again and again (served from the score cache). Posters are generated, or derived
from ``--poster`` by changing one pixel, so no two cold requests share a cache entry.
"""

from __future__ import annotations

import io
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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


def poster_poster(base_url: str) -> Callable[[bytes, str], dict[str, Any]]:
    """A function posting one poster to ``POST <base_url>/api/v1/predictions?<query>`` and returning
    the answer (http or https); it raises on any status but 200, and ``OSError`` when nothing answers.

    The clients share the two cores with the services they measure, so they are kept lean: one
    keep-alive ``http.client`` connection per client thread, kept for the whole run (a browser keeps
    its connection too), and a hand-made multipart body. A fresh ``httpx.Client`` per burst cost
    about 35 ms of CPU per poster here, a third of the model's own cost, all taken from the server.
    """
    import http.client
    import json
    from urllib.parse import urlsplit

    address = urlsplit(base_url)
    https = address.scheme == "https"
    connection_class = http.client.HTTPSConnection if https else http.client.HTTPConnection
    path = f"{address.path.rstrip('/')}/api/v1/predictions"
    local = threading.local()
    boundary = "postergenre-bench-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="poster.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def send(poster: bytes, query: str) -> http.client.HTTPResponse:
        if not hasattr(local, "connection"):
            local.connection = connection_class(address.hostname or "127.0.0.1", address.port, timeout=600)
        connection: http.client.HTTPConnection = local.connection
        connection.request(
            "POST",
            f"{path}?{query}",
            body=head + poster + tail,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        return connection.getresponse()

    def ask(poster: bytes, query: str) -> dict[str, Any]:
        try:
            response = send(poster, query)
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closed the idle keep-alive connection (uvicorn: after 5 s, e.g. while the
            # offline batch ran): connect again, as a browser does.
            local.connection.close()
            del local.connection
            response = send(poster, query)
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path} answered {response.status}: {body[:500]!r}")
        return dict(json.loads(body))

    return ask


def run_pass(name: str, url: str, posters: list[bytes], years: str, concurrency: int) -> BenchResult:
    post = poster_poster(url)
    query = urlencode({"years": years})

    def one(data: bytes) -> float:
        started = time.perf_counter()
        post(data, query)
        return (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        latencies = list(pool.map(one, posters))
    return BenchResult(name, len(posters), time.perf_counter() - started, latencies)


def bench_web(url: str, poster: Path | None, years: str, requests: int,
              concurrency: int) -> list[BenchResult]:
    base = poster.read_bytes() if poster else None
    posters = poster_variants(base, requests + 1)
    warm = run_pass("warm-up", url, posters[-1:], years, 1)  # loads the models, fills one cache entry
    cold = run_pass("cold", url, posters[:requests], years, concurrency)
    cached = run_pass("cached", url, posters[-1:] * requests, years, concurrency)
    return [warm, cold, cached]
