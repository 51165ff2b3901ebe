"""Reading a Prometheus endpoint in tests: fetch its text exposition and parse it with
``prometheus_client``'s parser (which rejects malformed text)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests import servers


def scrape(url: str, timeout: float = 10.0) -> dict[str, list[Sample]]:
    """Every sample of the endpoint, by family name (``postergenre_x`` for ``postergenre_x_total``)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {family.name: list(family.samples) for family in text_string_to_metric_families(text)}


def value(families: dict[str, list[Sample]], sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels`` (0 when none)."""
    family = sample.removesuffix("_total").removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
    return sum(s.value for s in families.get(family, [])
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


@contextmanager
def metered_worker(queues: str, log: Path, extra_env: dict[str, str] | None = None
                   ) -> Iterator[str]:
    """A real ``postergenre worker`` (prefork pool, one child: the tasks run in another process than
    the endpoint, as in the deployments) with its metrics endpoint on; yields the endpoint's URL.

    It takes the current environment (the test's settings), so it uses the test's broker."""
    port = servers.free_port()
    env = {**os.environ, **(extra_env or {}), "POSTERGENRE_WORKER_METRICS_PORT": str(port),
           "POSTERGENRE_WORKER_METRICS_HOST": "127.0.0.1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--queues", queues, "--concurrency", "1",
             "--pool", "prefork", "--loglevel", "INFO"], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            servers.wait_for_port("127.0.0.1", port, timeout=120, proc=process)
            yield f"http://127.0.0.1:{port}/metrics"
        finally:
            servers.stop_process(process)
