"""Celery task ``postergenre.crawl`` (queue ``crawl``): a TMDB crawl started from the admin API.

Twisted's reactor runs once per process and a Celery worker process runs many tasks, so the task
runs ``postergenre crawl --job-id <task id>`` in a subprocess. The subprocess writes its progress
into the Job row (``shared.jobs.update_job``); the task relays its output to the worker's log,
and records the error if the crawl could not even start.

The task id is the crawl's job id: a task redelivered after a worker died resumes the same crawl.
The subprocess is asked to stop cleanly (SIGTERM) when the worker process dies, so that its
JOBDIR stays resumable.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

from celery import Task

from shared.celery_app import celery_app
from shared.jobs import update_job
from shared.queues import CRAWL_TASK

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class CrawlFailed(RuntimeError):
    """The crawl subprocess ended with an error; the message is its last words."""


def crawl_arguments(job_id: str, years: str | Sequence[int], max_movies_per_year: int | None = None,
                    poster_size: str | None = None, min_poster_width: int | None = None) -> list[str]:
    """The ``postergenre crawl`` command line of a task's parameters."""
    years_text = years if isinstance(years, str) else ",".join(str(year) for year in years)
    arguments = [sys.executable, "-m", "services.cli", "crawl", "--years", years_text.replace(" ", ""),
                 "--job-id", job_id]
    if max_movies_per_year is not None:
        arguments += ["--max-movies-per-year", str(int(max_movies_per_year))]
    if poster_size:
        arguments += ["--poster-size", poster_size]
    if min_poster_width is not None:
        arguments += ["--min-poster-width", str(int(min_poster_width))]
    return arguments


def _stop_with_parent() -> None:
    """In the child: get SIGTERM (a clean Scrapy stop) if the worker process dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: an orphaned crawl finishes on its own and keeps its lock until then


def run_crawl_subprocess(arguments: list[str]) -> tuple[int, list[str]]:
    """Run the crawl, relaying its output to the log; return (exit code, last lines of output)."""
    tail: deque[str] = deque(maxlen=20)
    with subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          preexec_fn=_stop_with_parent) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            logger.info("%s", line)
    return process.returncode, list(tail)


@celery_app.task(bind=True, name=CRAWL_TASK)
def crawl_task(self: Task, years: str | list[int] = "2000-2019", max_movies_per_year: int | None = None,
               poster_size: str | None = None, min_poster_width: int | None = None) -> dict[str, Any]:
    """Crawl TMDB for ``years`` (``"2000-2019"``, ``"2000,2005"`` or a list); return the summary."""
    from shared.db import Job, session_scope

    job_id = str(self.request.id)
    update_job(job_id, state="STARTED")
    code, tail = run_crawl_subprocess(crawl_arguments(job_id, years, max_movies_per_year, poster_size,
                                                      min_poster_width))
    with session_scope() as session:
        job = session.get(Job, job_id)
        state, result = (job.state, dict(job.result or {})) if job is not None else ("", {})
    if code == 0:
        return result
    errors = [line.removeprefix("error: ") for line in tail if line.startswith("error: ")]
    message = errors[-1] if errors else f"crawl exited with code {code}: {' | '.join(tail[-3:])}"
    if state not in ("FAILURE", "INTERRUPTED"):  # the crawl did not record its end itself
        update_job(job_id, state="FAILURE", error=message)
    raise CrawlFailed(message)
