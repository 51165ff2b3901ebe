"""Real servers for the tests: PostgreSQL, Redis and an S3-protocol server (moto) on loopback.

PostgreSQL and Redis come from ``POSTERGENRE_TEST_DATABASE_URL`` / ``POSTERGENRE_TEST_REDIS_URL``,
else the ones on their default local ports, else throw-away servers started from the local binaries.
PostgreSQL and the S3 server are the benchmarks' too, so they live in ``benchmarks/fakes/servers.py``
(tests may import benchmarks, the benchmarks no test module); Redis is the tests' alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from benchmarks.fakes.servers import (
    RestartableS3Server,
    ThrowawayPostgres,
    create_database,
    drop_database,
    free_port,
    port_answers,
    postgres_server,
    s3_server,
    stop_process,
    wait_for_port,
)

__all__ = [
    "RestartableS3Server", "ThrowawayPostgres", "ThrowawayRedis", "create_database", "drop_database",
    "free_port", "port_answers", "postgres_server", "redis_db", "redis_server", "s3_server", "stop_process",
    "wait_for_port",
]


# `make test` runs the suite in two pytest-xdist workers. Tests that start Celery workers give them a
# Redis database of their own (11-15), so that no other test's worker takes their messages and a
# "no worker consumes this queue" check sees only its own; the second xdist worker takes another set
# of databases (Redis has 16), so the two never meet on one.
_SECOND_WORKER_DB = {0: 6, 11: 1, 12: 2, 13: 3, 14: 4, 15: 5}


def redis_db(db: int) -> int:
    """The Redis database number ``db`` of this test process (see ``_SECOND_WORKER_DB``)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    if worker == "gw0":
        return db
    if worker != "gw1" or db not in _SECOND_WORKER_DB:
        raise RuntimeError(f"no Redis database for test database {db} in xdist worker {worker}: "
                           "run at most two workers (make test runs -n 2)")
    return _SECOND_WORKER_DB[db]


@contextmanager
def redis_server() -> Iterator[str]:
    url = os.environ.get("POSTERGENRE_TEST_REDIS_URL")
    if url:
        yield url
        return
    if port_answers("127.0.0.1", 6379):
        yield f"redis://127.0.0.1:6379/{redis_db(0)}"
        return
    if shutil.which("redis-server") is None:
        raise RuntimeError("no Redis answers on 127.0.0.1:6379 and redis-server is not installed")
    server = ThrowawayRedis()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()



class ThrowawayRedis:
    """A private Redis server on a fixed port that a test may restart (data kept in memory only)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/{redis_db(0)}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None
