"""Tools to break real components on purpose: a TCP link that can be cut, a PostgreSQL that stops fast,
a web app served by uvicorn in a thread, and readers of the app's Prometheus metrics and of RSS.

The S3 outage goes through :class:`CuttableLink` rather than stopping moto, because moto keeps its
objects in memory: a stopped moto comes back empty, which is a lost disk, not an outage.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.servers import ThrowawayRedis, free_port, wait_for_port


class CuttableLink:
    """A loopback TCP forwarder to ``target`` on a fixed port; :meth:`cut` makes the target unreachable
    (listener closed, live connections reset) and :meth:`restore` opens the same port again."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.cuts = 0

    def __enter__(self) -> CuttableLink:
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    @property
    def up(self) -> bool:
        return self._listener is not None

    def restore(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(256)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="link-accept").start()
        wait_for_port("127.0.0.1", self.port, timeout=10)

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is None:
            return
        self.cuts += 1
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                # RST rather than FIN: the peer sees the connection die, as when a server crashes.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            with contextlib.suppress(OSError):
                # close() alone does not end a connection whose pump thread is blocked in recv: that
                # thread keeps it alive and would forward the next request once the link is restored
                # (a 120 s read-timeout stall of the client). shutdown() wakes it now.
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    client.close()
                    upstream.close()
                    return
                self._connections.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            with self._lock:
                self._connections.discard(source)


class ServedApp:
    """An ASGI app served by uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", backlog=4096, timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="uvicorn")

    def __enter__(self) -> ServedApp:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@contextlib.contextmanager
def served(app: Any) -> Iterator[ServedApp]:
    with ServedApp(app) as running:
        yield running


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``metrics_text`` (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    prefix = f"{name}{{{wanted}}}" if labels else name
    for line in metrics_text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def metric_sum(metrics_text: str, name: str) -> float:
    """The sum of every sample of ``name`` whatever its labels."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from ``/proc``."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


class PersistentRedis(ThrowawayRedis):
    """A private Redis with the deployment's append-only file (``compose.yaml``, ``k8s``), so what was
    written before a restart is there after it."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        import shutil
        import subprocess

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--dir", str(self.folder)],
                                     stdout=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port, proc=self.proc)
