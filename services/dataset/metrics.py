"""Prometheus metrics of dataset builds, in ``prometheus_client``'s default registry.

In a dataset worker with ``POSTERGENRE_WORKER_METRICS_PORT`` the worker's exporter serves them
(:mod:`shared.worker_metrics`); ``postergenre dataset build`` keeps them to itself (it prints its
summary). Families: ``postergenre_dataset_builds_total`` {outcome: built, reused, failed},
``postergenre_dataset_build_duration_seconds`` {outcome}, and for each version built
``postergenre_dataset_posters_read_total`` (movies with a poster in the requested years),
``postergenre_dataset_posters_kept_total`` (decoded into the version's shards) and
``postergenre_dataset_posters_refused_total`` {reason: no_kept_genre (none of its genres has
enough posters), outside_targets (in a window skipped for too few posters)}.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import ParamSpec, Protocol, TypeVar

from prometheus_client import Counter, Histogram

from shared.metrics import DURATION_BUCKETS_S, guarded

P = ParamSpec("P")


class Reused(Protocol):
    reused: bool


R = TypeVar("R", bound=Reused)


class DatasetMetrics:
    def __init__(self) -> None:
        self.builds = Counter("postergenre_dataset_builds",
                              "Dataset builds by outcome (built, reused, failed)", ["outcome"])
        self.duration = Histogram("postergenre_dataset_build_duration_seconds",
                                  "Time of one dataset build, by outcome", ["outcome"],
                                  buckets=DURATION_BUCKETS_S)
        self.read = Counter("postergenre_dataset_posters_read", "Movies with a poster a build selected")
        self.kept = Counter("postergenre_dataset_posters_kept", "Posters decoded into a built version")
        self.refused = Counter("postergenre_dataset_posters_refused", "Selected posters a build left out, "
                               "by reason", ["reason"])


@functools.cache
def dataset_metrics() -> DatasetMetrics:
    """Created at first use, in the process that builds (a worker's pool child)."""
    return DatasetMetrics()


@guarded
def record_posters(read: int, kept: int, refused: dict[str, int]) -> None:
    metrics = dataset_metrics()
    metrics.read.inc(read)
    metrics.kept.inc(kept)
    for reason, count in refused.items():
        metrics.refused.labels(reason=reason).inc(count)


@guarded
def _record_build(outcome: str, seconds: float) -> None:
    metrics = dataset_metrics()
    metrics.builds.labels(outcome=outcome).inc()
    metrics.duration.labels(outcome=outcome).observe(seconds)


def timed_build(build: Callable[P, R]) -> Callable[P, R]:
    """Count and time every call of ``build`` by its outcome (built, reused, failed)."""

    @functools.wraps(build)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        started = time.monotonic()
        try:
            result = build(*args, **kwargs)
        except BaseException:
            _record_build("failed", time.monotonic() - started)
            raise
        _record_build("reused" if result.reused else "built", time.monotonic() - started)
        return result

    return wrapper
