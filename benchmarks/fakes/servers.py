"""Real servers on loopback for the benchmarks and the tests: PostgreSQL and an S3-protocol server (moto).

PostgreSQL comes from ``POSTERGENRE_TEST_DATABASE_URL``, else the one on its default local port, else
a throw-away server started from the local binaries. The servers are started through
:func:`benchmarks.children.start_child`, so that they die with the process that started them.
Redis, which only the tests need, is in ``tests/servers.py``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from benchmarks.children import start_child


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_answers(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        time.sleep(0.1)
    raise TimeoutError(f"nothing answers on {host}:{port} after {timeout}s")


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL binary {name} not found: install postgresql")
    return candidates[-1]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin URL (to the ``postgres`` database) of a reachable PostgreSQL server."""
    url = os.environ.get("POSTERGENRE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if port_answers("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    server = ThrowawayPostgres()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


def create_database(admin_url: str, prefix: str = "pgtest") -> str:
    """Create an empty database on the server of ``admin_url`` and return its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parsed = urlparse(admin_url)
    return parsed._replace(path=f"/{name}").geturl()


def drop_database(admin_url: str, url: str) -> None:
    import psycopg

    from shared.db import get_engine

    name = urlparse(url).path.lstrip("/")
    get_engine(url).dispose()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def s3_server() -> Iterator[str]:
    """Run moto's S3-protocol server on loopback; yield its ``host:port`` endpoint."""
    server = RestartableS3Server()
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()


class RestartableS3Server:
    """moto's S3 server on a fixed loopback port that a test can stop and start again.

    moto keeps its data in memory, so a restart loses objects: tests write after the restart.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        moto = Path(sys.executable).with_name("moto_server")
        cmd = [str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]
        self.proc = start_child([*cmd, "-H", "127.0.0.1", "-p", str(self.port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None


class ThrowawayPostgres:
    """A private PostgreSQL server from the local binaries, on a fixed port, that a test may restart."""

    def __init__(self) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="pg-restart-"))
        self.port = free_port()
        self.run_as: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            shutil.chown(self.data, "postgres", "postgres")
            self.run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*self.run_as, _pg_bin("initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust"], check=True, stdout=subprocess.DEVNULL)
        self.proc: subprocess.Popen | None = None
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        # As root, runuser changes user, which clears the parent-death signal: close() stops it.
        self.proc = start_child(
            [*self.run_as, _pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k",
             str(self.data), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port, proc=self.proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the port opens before connections are accepted
            try:
                import psycopg

                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except Exception:
                time.sleep(0.2)
        raise TimeoutError("throw-away PostgreSQL did not accept connections")

    def stop(self) -> None:
        if self.proc is not None:
            # Fast shutdown: SIGTERM ("smart") would wait for pooled clients to leave, and runuser
            # does not pass signals on, so ask pg_ctl.
            subprocess.run([*self.run_as, _pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                            "stop"], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.proc.wait(timeout=30)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)
