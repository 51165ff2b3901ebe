"""What every service's Prometheus metrics share: bucket sets, the guard that keeps a metric from
failing the work it measures, and the switch to ``prometheus_client``'s multiprocess mode.

Names follow Prometheus' conventions (``postergenre_`` prefix, base units: ``_seconds``, counters
exported with ``_total``); each service's families are listed in docs/deploy.md ("Watching the
system") and checked against the Grafana dashboard by tests/deploy.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

log = logging.getLogger(__name__)

# Latency of a request or a batch, in seconds (5 ms to 30 s).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Duration of a job (a task, a model load, a dataset build), in seconds: 10 ms to 12 hours.
DURATION_BUCKETS_S = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
                      43200.0)
# Rows in one inference batch.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

P = ParamSpec("P")


def guarded(function: Callable[P, None]) -> Callable[P, None]:
    """Run ``function``, logging instead of raising: recording a metric never fails a prediction or
    a task."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            function(*args, **kwargs)
        except Exception:
            log.warning("metrics: %s failed", function.__qualname__, exc_info=True)

    return wrapper


def use_multiprocess_folder(folder: Path) -> None:
    """Make every metric created from now on, in this process and the ones it forks, write its values
    to ``folder`` (``prometheus_client``'s multiprocess mode), where a
    ``multiprocess.MultiProcessCollector`` sums them.

    The library picks its value class from ``PROMETHEUS_MULTIPROC_DIR`` when it is first imported;
    a worker decides only at start, after its task modules imported it, so the class is switched here
    too (metrics created earlier keep their in-process values).
    """
    from prometheus_client import values

    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    values.ValueClass = values.MultiProcessValue()
