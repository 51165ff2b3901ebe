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
    "free_port", "port_answers", "postgres_server", "redis_server", "s3_server", "stop_process",
    "wait_for_port",
]


@contextmanager
def redis_server() -> Iterator[str]:
    url = os.environ.get("POSTERGENRE_TEST_REDIS_URL")
    if url:
        yield url
        return
    if port_answers("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
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
        self.url = f"redis://127.0.0.1:{self.port}/0"
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
