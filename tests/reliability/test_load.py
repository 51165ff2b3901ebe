"""200 concurrent clients uploading posters to one web service process on loopback, for a bounded time.

Real stack and tiny real models (two years, two input sizes), the embedded inference server. Every
answer must be a 200; the process's memory may not grow past a bound once warm; the latency
percentiles are printed (measured, not asserted: ``postergenre bench`` owns performance numbers).
Repeated posters must come from the score cache: after a warm-up that asks once for each poster,
the load phase counts only cache hits and no inference call (the service's own metrics).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import httpx
import pytest

from services.embedded import create_app
from tests.conftest import make_poster
from tests.reliability.conftest import YEARS, web_settings
from tests.reliability.faults import metric_sum, metric_value, rss_bytes, served
from tests.services.web.tiny_models import TinyModel

CLIENTS = 200
WARM_S = 3.0
LOAD_S = 15.0
DISTINCT_POSTERS = 24
# Growth of the whole test process (server, clients, TensorFlow) between the warm and the loaded state.
RSS_GROWTH_BOUND = 150 * 1024 * 1024
MODELS_PER_REQUEST = 2


async def client_loop(client: httpx.AsyncClient, posters: list[bytes], until: float, seed: int,
                      latencies: list[float], failures: list[str]) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        poster = posters[rng.randrange(len(posters))]
        started = time.perf_counter()
        try:
            response = await client.post("/api/v1/predictions", params={"years": YEARS},
                                         files={"file": ("poster.jpg", poster, "image/jpeg")})
        except httpx.HTTPError as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            continue
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            failures.append(f"{response.status_code}: {response.text[:200]}")


async def run_clients(url: str, posters: list[bytes], seconds: float,
                      seed: int) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    failures: list[str] = []
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        until = time.monotonic() + seconds
        await asyncio.gather(*(client_loop(client, posters, until, seed * 1000 + index, latencies, failures)
                               for index in range(CLIENTS)))
    return latencies, failures


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@pytest.mark.slow
def test_200_concurrent_clients_get_answers_within_bounded_memory_from_the_cache(
        tmp_path: Path, postgres_url: str, redis_url: str, s3_endpoint: str,
        reliability_models: list[TinyModel]) -> None:
    settings = web_settings(tmp_path, postgres_url, redis_url, s3_endpoint, reliability_models,
                            inference_timeout_s=60.0)
    posters = [make_poster(600 + index) for index in range(DISTINCT_POSTERS)]
    with served(create_app(settings)) as app:
        with httpx.Client(base_url=app.url, timeout=120.0) as client:
            for poster in posters:  # each poster once: its scores are computed and cached
                response = client.post("/api/v1/predictions", params={"years": YEARS},
                                       files={"file": ("poster.jpg", poster, "image/jpeg")})
                assert response.status_code == 200, response.text
            warm_latencies, warm_failures = asyncio.run(run_clients(app.url, posters, WARM_S, seed=1))
            assert warm_failures == [], warm_failures[:5]
            before = client.get("/metrics").text
            rss_warm = rss_bytes()
            latencies, failures = asyncio.run(run_clients(app.url, posters, LOAD_S, seed=2))
            rss_loaded = rss_bytes()
            after = client.get("/metrics").text

    requests = len(latencies)
    print(f"\n{CLIENTS} clients, {LOAD_S:.0f} s: {requests} predictions ({requests / LOAD_S:.0f}/s), "
          f"latency p50 {percentile(latencies, 0.50) * 1000:.0f} ms, "
          f"p95 {percentile(latencies, 0.95) * 1000:.0f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
          f"RSS {rss_warm / 2**20:.0f} -> {rss_loaded / 2**20:.0f} MiB")
    assert failures == [], f"{len(failures)} failures, first: {failures[:5]}"
    assert requests >= CLIENTS  # every client got at least one answer
    assert rss_loaded - rss_warm < RSS_GROWTH_BOUND

    hits = metric_value(after, "postergenre_prediction_cache_total", result="hit") - \
        metric_value(before, "postergenre_prediction_cache_total", result="hit")
    misses = metric_value(after, "postergenre_prediction_cache_total", result="miss") - \
        metric_value(before, "postergenre_prediction_cache_total", result="miss")
    inference_calls = metric_sum(after, "postergenre_inference_duration_seconds_count") - \
        metric_sum(before, "postergenre_inference_duration_seconds_count")
    served_ok = metric_value(after, "postergenre_http_requests_total", method="POST",
                             route="/api/v1/predictions", status="200") - \
        metric_value(before, "postergenre_http_requests_total", method="POST",
                     route="/api/v1/predictions", status="200")
    assert served_ok == requests
    assert hits == requests * MODELS_PER_REQUEST and misses == 0 and inference_calls == 0
