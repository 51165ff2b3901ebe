"""``postergenre bench crawl``: movies stored per second, and memory, crawling the local TMDB test site.

The TMDB test site (``benchmarks/fakes/tmdb_site.py``) runs in its own process, serving the shared
poster collection when it is there (real JPEGs) or generated posters.
The crawl is the real command, ``postergenre crawl``, in a subprocess with throttling off, storing
into a throw-away PostgreSQL database and S3-protocol server (moto) — or SQLite and a folder with
``--embedded``. Its resident memory and the movies stored are sampled while it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.children import start_child
from benchmarks.fakes.tmdb_site import SHARED_POSTERS, poster_counts
from shared.machine import machine_info

SAMPLE_SECONDS = 0.25
GENERATED_PER_YEAR = 200
FIRST_YEAR = 2000


@dataclass
class Sample:
    seconds: float
    stored: int
    rss_mib: float


@dataclass
class CrawlBenchmark:
    movies: int
    stored: int
    seconds: float
    movies_per_second: float
    steady_movies_per_second: float
    peak_rss_mib: float
    rss_mib_at: dict[str, float]
    posters: str
    storage: str
    years: str
    machine: dict[str, Any]
    command: str
    samples: list[Sample] = field(default_factory=list)


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux ``/proc``), in MiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def plan_years(movies: int, real_posters: Path | None) -> dict[int, int]:
    """Movies per year from 2000 on, ``movies`` in all (fewer when the collection has fewer)."""
    available = poster_counts(real_posters) if real_posters is not None else {}
    plan: dict[int, int] = {}
    year, left = FIRST_YEAR, movies
    while left > 0 and year <= 2100:
        count = min(left, available.get(year, 0) if real_posters is not None else GENERATED_PER_YEAR)
        if count:
            plan[year] = count
            left -= count
        year += 1
    return plan


@contextmanager
def test_site(plan: dict[int, int], real_posters: Path | None) -> Iterator[str]:
    """The TMDB test site in its own process; yield its API URL."""
    counts = ",".join(f"{year}={count}" for year, count in plan.items())
    command = [sys.executable, "-m", "benchmarks.fakes.tmdb_site", "--movies-per-year", counts]
    if real_posters is not None:
        command += ["--real-posters", str(real_posters)]
    process = start_child(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("ready "):
            raise RuntimeError(f"the TMDB test site did not start: {line!r}")
        yield line.split()[1]
    finally:
        process.terminate()
        process.wait(timeout=30)


def storage_env(stack: ExitStack, embedded: bool, home: Path) -> dict[str, str]:
    env = {"POSTERGENRE_HOME": str(home)}
    if embedded:
        return env
    from benchmarks.fakes import servers

    admin = stack.enter_context(servers.postgres_server())
    database = servers.create_database(admin, prefix="benchcrawl")
    stack.callback(servers.drop_database, admin, database)
    # `postergenre crawl` refuses a PostgreSQL database below the code's schema (as deployed, where
    # the migrate job runs first); the throw-away one is migrated here.
    from shared.db import upgrade_database

    upgrade_database(database)
    endpoint = stack.enter_context(servers.s3_server())
    env.update({"POSTERGENRE_DATABASE_URL": database, "POSTERGENRE_OBJECT_STORE": "s3://bench-crawl",
                "POSTERGENRE_S3_ENDPOINT": endpoint, "POSTERGENRE_S3_ACCESS_KEY": "bench",
                "POSTERGENRE_S3_SECRET_KEY": "bench"})
    return env


def count_stored(database_url: str) -> int:
    from sqlalchemy import func, select

    from shared.db import Movie, session_scope

    try:
        with session_scope(database_url) as session:
            return int(session.scalar(select(func.count()).select_from(Movie)) or 0)
    except Exception:  # the crawl is still creating the schema
        return 0


def rss_at_fractions(samples: list[Sample], total: int) -> dict[str, float]:
    """Resident memory when a quarter, half, three quarters and all of the movies were stored."""
    marks: dict[str, float] = {}
    for fraction in (0.25, 0.5, 0.75, 1.0):
        reached = [s for s in samples if s.stored >= fraction * total and s.rss_mib > 0]
        if reached:
            marks[f"{int(fraction * 100)}%"] = round(reached[0].rss_mib, 1)
    return marks


def run_benchmark(movies: int, real_posters: Path | None, embedded: bool) -> CrawlBenchmark:
    plan = plan_years(movies, real_posters)
    years = f"{min(plan)}-{max(plan)}"
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-crawl-")))
        env = storage_env(stack, embedded, home)
        api_url = stack.enter_context(test_site(plan, real_posters))
        database_url = env.get("POSTERGENRE_DATABASE_URL") or f"sqlite:///{home / 'postergenre.db'}"
        env.update({
            "TMDB_API_URL": api_url, "TMDB_API_KEY": "test-key", "TMDB_BEARER_TOKEN": "",
            "POSTERGENRE_CRAWL_AUTOTHROTTLE": "false", "POSTERGENRE_CRAWL_DELAY": "0",
            "POSTERGENRE_CRAWL_CONCURRENCY": "16", "POSTERGENRE_CRAWL_PROGRESS_INTERVAL": "5",
        })
        command = [sys.executable, "-m", "services.cli", "crawl", "--years", years, "--job-id", "bench"]
        started = time.monotonic()
        process = start_child(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        samples: list[Sample] = []
        while process.poll() is None:
            samples.append(Sample(round(time.monotonic() - started, 2), count_stored(database_url),
                                  rss_mib(process.pid)))
            time.sleep(SAMPLE_SECONDS)
        seconds = time.monotonic() - started
        errors = process.stderr.read() if process.stderr else ""
        if process.returncode != 0:
            raise RuntimeError(f"the crawl failed ({process.returncode}): {errors[-2000:]}")
        stored = count_stored(database_url)
        samples.append(Sample(round(seconds, 2), stored, 0.0))
    first = next((s for s in samples if s.stored > 0), samples[-1])
    steady = (stored - first.stored) / max(seconds - first.seconds, 1e-9) if stored > first.stored else 0.0
    peak = max((s.rss_mib for s in samples), default=0.0)
    return CrawlBenchmark(
        movies=sum(plan.values()), stored=stored, seconds=round(seconds, 2),
        movies_per_second=round(stored / seconds, 1), steady_movies_per_second=round(steady, 1),
        peak_rss_mib=round(peak, 1), rss_mib_at=rss_at_fractions(samples, stored),
        posters="shared collection (real JPEGs)" if real_posters else "generated (342x513 JPEG)",
        storage="SQLite + local folder" if embedded else "PostgreSQL + S3 server (moto)",
        years=years, machine=machine_info(),
        command=f"postergenre bench crawl --movies {movies}" + (" --embedded" if embedded else "")
        + ("" if real_posters else " --generated-posters"),
        samples=samples)


def bench_crawl(movies: int = 2000, as_json: bool = False, real_posters: bool = True,
                embedded: bool = False) -> int:
    folder = SHARED_POSTERS if real_posters and (SHARED_POSTERS / "labels.csv").is_file() else None
    result = run_benchmark(movies, folder, embedded)
    if as_json:
        data = asdict(result)
        data["samples"] = [asdict(s) for s in result.samples[:: max(1, len(result.samples) // 60)]]
        print(json.dumps(data, indent=2))
    else:
        print(f"{result.stored} of {result.movies} movies ({result.posters}; {result.storage}) in "
              f"{result.seconds} s: {result.movies_per_second} movies/s "
              f"({result.steady_movies_per_second}/s after the first poster); peak RSS "
              f"{result.peak_rss_mib} MiB; RSS at {result.rss_mib_at}")
    return 0
