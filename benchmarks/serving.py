"""The services a benchmark measures, started for it and stopped after it: ``postergenre serve
inference`` and ``postergenre serve web`` as processes of their own (started through
:mod:`benchmarks.children`, so they die with the benchmark), or the web app in a thread of the
benchmark's process (``--processes one``, as embedded mode's single ``serve web``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.children import start_child
from benchmarks.fakes.servers import free_port, stop_process
from benchmarks.models import PREFIX

if TYPE_CHECKING:
    from shared.config import Settings

# The readiness probes poll with httpx: its INFO line per request would bury the benchmark's log.
logging.getLogger("httpx").setLevel(logging.WARNING)


@contextmanager
def restored_environment() -> Iterator[None]:
    """A benchmark points the settings at its work folder through the environment; afterwards the
    environment and the settings are as they were."""
    from shared.config import get_settings

    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


def settings_in(workdir: Path) -> Settings:
    """The settings of a benchmark working in ``workdir``: its own SQLite registry (upgraded) and
    models folder, no object store, the benchmark's model prefix. Set through the environment, which
    the service processes inherit; call inside :func:`restored_environment`."""
    from shared.config import get_settings
    from shared.db import upgrade_database

    os.environ.update({"POSTERGENRE_HOME": str(workdir), "POSTERGENRE_DATABASE_URL": "",
                       "POSTERGENRE_OBJECT_STORE": "", "POSTERGENRE_MODEL_PREFIX": PREFIX})
    get_settings.cache_clear()
    settings = get_settings()
    upgrade_database(settings.effective_database_url)
    return settings


@contextmanager
def web_in_thread(settings: Any) -> Iterator[str]:
    """The web service under uvicorn in a thread of this process; yields its URL."""
    import uvicorn

    from services.embedded import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, name="bench-web", daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def service_env(settings: Any, inference_url: str) -> dict[str, str]:
    """The environment of a service process: the benchmark's home, model prefix and inference URL."""
    return {
        **os.environ,
        "POSTERGENRE_HOME": str(settings.home_dir),
        "POSTERGENRE_MODEL_PREFIX": PREFIX,
        "POSTERGENRE_INFERENCE_URL": inference_url,
        "POSTERGENRE_INFERENCE_TIMEOUT_S": "600",
    }


@contextmanager
def service_process(argv: list[str], env: dict[str, str], ready: Callable[[], bool], what: str,
                    timeout_s: float = 900.0) -> Iterator[Any]:
    """``postergenre <argv>`` as a process of its own, once ``ready()`` says it answers."""
    # Its output goes to our stderr: stdout carries the report.
    process = start_child([sys.executable, "-m", "services.cli", *argv], env=env, stdout=sys.stderr)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with status {process.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} was not ready within {timeout_s:g} s")
            time.sleep(0.2)
        yield process
    finally:
        stop_process(process)


def answers_http(url: str) -> Callable[[], bool]:
    """True once ``GET url`` answers 200."""
    def ready() -> bool:
        import httpx

        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def serves_models(client: Any, names: list[str]) -> Callable[[], bool]:
    """True once the inference server behind ``client`` has every model of ``names`` available."""
    from shared.inference_client import InferenceError

    def ready() -> bool:
        try:
            return all(
                any(state.state == "AVAILABLE" for state in client.model_status(name)) for name in names
            )
        except InferenceError:
            return False

    return ready


@contextmanager
def web_process(settings: Any, inference_url: str) -> Iterator[str]:
    """``postergenre serve web`` as its own process, talking to ``inference_url``; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = ["serve", "web", "--port", str(port), "--log-level", "warning"]
    with service_process(argv, service_env(settings, inference_url), answers_http(f"{url}/healthz"),
                         "postergenre serve web"):
        yield url


@contextmanager
def inference_process(settings: Any, names: list[str], *, max_batch_size: int,
                      batch_timeout_ms: float, batch_threads: int, backend: str) -> Iterator[str]:
    """``postergenre serve inference`` as its own process serving ``settings.models_dir``, every model
    of ``names`` loaded; yields its gRPC URL."""
    from shared.inference_client import InferenceClient

    port = free_port()
    url = f"grpc://127.0.0.1:{port}"
    argv = [
        "serve", "inference", "--grpc-port", str(port), "--rest-port", str(free_port()),
        "--models-dir", str(settings.models_dir), "--max-batch-size", str(max_batch_size),
        "--batch-timeout-ms", str(batch_timeout_ms), "--batch-threads", str(batch_threads),
        "--backend", backend, "--poll-seconds", "0",
    ]
    with InferenceClient(url, timeout=2) as probe, \
            service_process(argv, service_env(settings, url), serves_models(probe, names),
                            "postergenre serve inference"):
        yield url
