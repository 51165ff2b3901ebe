"""docker/model_sync.py: the init container and sidecar that write TF Serving's models.config."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy.checks import common, dockerfiles

SCRIPT = dockerfiles.DOCKER_DIR / "model_sync.py"


def run_sync(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("POSTERGENRE_")}
    env.update(environment)
    env["PYTHONPATH"] = str(common.REPO)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_once_writes_the_files_tf_serving_needs_to_start(tmp_path: Path) -> None:
    from services.inference.repository import BATCHING_CONFIG_NAME, parse_model_server_config
    from shared.db import upgrade_database

    home = tmp_path / "home"
    home.mkdir()
    upgrade_database(f"sqlite:///{home / 'postergenre.db'}")
    result = run_sync({"POSTERGENRE_HOME": str(home)}, "--once")
    assert result.returncode == 0, result.stderr
    config = home / "models" / "models.config"
    parsed = parse_model_server_config(config.read_text())
    assert len(parsed.model_config_list.config) == 0  # type: ignore[attr-defined]  # nothing blessed yet
    assert "max_batch_size" in (home / "models" / BATCHING_CONFIG_NAME).read_text()


def test_once_fails_clearly_when_the_registry_is_unreachable(tmp_path: Path) -> None:
    result = run_sync(
        {
            "POSTERGENRE_HOME": str(tmp_path),
            "POSTERGENRE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/postergenre",
        },
        "--once",
    )
    assert result.returncode == 1
    assert "model sync failed" in result.stderr
    assert not (tmp_path / "models" / "models.config").exists()


def test_a_non_positive_interval_is_refused() -> None:
    result = run_sync({}, "--interval", "0")
    assert result.returncode == 2
    assert "--interval must be positive" in result.stderr


# ---------------------------------------------------------------- the sidecar loop: liveness, readiness

IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small SavedModel with the ``pixels`` signature (written once: TensorFlow is slow to start)."""
    from tests.services.inference.conftest import write_pixels_model

    return write_pixels_model(tmp_path_factory.mktemp("export") / "genre-2000" / "1", seed=7,
                              image_size=IMAGE_SIZE)


def new_home(tmp_path: Path) -> Path:
    from shared.db import upgrade_database

    home = tmp_path / "home"
    home.mkdir()
    upgrade_database(f"sqlite:///{home / 'postergenre.db'}")
    return home


def bless_model(home: Path, folder: Path, name: str = "genre-2000") -> None:
    """Register ``name`` version 1 as blessed, its files in the embedded object store of ``home``."""
    from shared.db import ModelVersion, session_scope
    from shared.storage import open_object_store, upload_folder
    from tests.services.inference.conftest import GENRES

    upload_folder(open_object_store((home / "objects").as_uri()), folder, f"models/{name}/1")
    with session_scope(f"sqlite:///{home / 'postergenre.db'}") as session:
        session.add(ModelVersion(name=name, version=1, year=int(name[-4:]), status="blessed",
                                 image_size=IMAGE_SIZE, genres=GENRES))


class Sidecar:
    """``model_sync.py`` in its loop, as the Kubernetes sidecar runs it, with its two files."""

    def __init__(self, tmp_path: Path, home: Path, rest_url: str) -> None:
        self.heartbeat = tmp_path / "run" / "model-sync.heartbeat"
        self.ready = tmp_path / "run" / "model-sync.ready"
        self.log = tmp_path / "model-sync.log"
        env = {key: value for key, value in os.environ.items() if not key.startswith("POSTERGENRE_")}
        env.update({"POSTERGENRE_HOME": str(home), "POSTERGENRE_INFERENCE_REST_URL": rest_url,
                    "POSTERGENRE_INFERENCE_TIMEOUT_S": "2", "PYTHONPATH": str(common.REPO)})
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--interval", "0.3", "--heartbeat-file", str(self.heartbeat),
             "--ready-file", str(self.ready)],
            env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"the sidecar exited:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{what} after {timeout} s:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.1)

    def wait_for_heartbeats(self, rounds: int = 2) -> None:
        self.wait(self.heartbeat.exists, "no heartbeat file")
        for _ in range(rounds):
            last = self.heartbeat.stat().st_mtime_ns
            self.wait(lambda last=last: self.heartbeat.stat().st_mtime_ns != last,  # type: ignore[misc]
                      "the heartbeat stopped", 60)  # a first round imports TensorFlow: slow under load

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def probe_age(path: Path) -> int:
    """The liveness probe the deployments run (``sh`` and ``stat``, no Python)."""
    command = 'test $(( $(date +%s) - $(stat -c %Y "$1") )) -lt 120'
    return subprocess.run(["sh", "-c", command, "probe", str(path)], check=False).returncode


def test_the_sidecar_is_ready_only_while_the_server_beside_it_serves_every_model(
        tmp_path: Path, saved_model: Path) -> None:
    from services.inference.server import start_server

    home = new_home(tmp_path)
    bless_model(home, saved_model)
    # The embedded server speaks TF Serving's REST status route; it serves models.config once the
    # sidecar writes it, as TF Serving does.
    server = start_server(home / "models", home / "models" / "models.config", grpc_port=0, rest_port=0,
                          poll_seconds=0.2)
    assert server.rest_url
    sidecar = Sidecar(tmp_path, home, server.rest_url)
    try:
        sidecar.wait_for_heartbeats()
        assert probe_age(sidecar.heartbeat) == 0
        sidecar.wait(sidecar.ready.exists, "not ready though the server serves genre-2000")
        server.stop(grace=0)  # the server beside it is gone: the pod must leave the Service
        sidecar.wait(lambda: not sidecar.ready.exists(), "still ready with no server", 30)
        sidecar.wait_for_heartbeats(rounds=1)  # and the sidecar itself lives on
    finally:
        sidecar.stop()
        server.stop(grace=0)
    assert "does not serve 1 of 1 models yet: genre-2000" in sidecar.log.read_text()


def test_no_model_configured_is_ready_and_a_model_nobody_serves_is_not(
        tmp_path: Path, saved_model: Path) -> None:
    from tests import servers

    home = new_home(tmp_path)
    nothing_listens = f"http://127.0.0.1:{servers.free_port()}"
    sidecar = Sidecar(tmp_path, home, nothing_listens)
    try:
        sidecar.wait(sidecar.ready.exists, "not ready with an empty registry")
        bless_model(home, saved_model)
        sidecar.wait(lambda: not sidecar.ready.exists(), "ready though nothing serves genre-2000")
        sidecar.wait_for_heartbeats()
    finally:
        sidecar.stop()
    assert "genre-2000" in (home / "models" / "models.config").read_text()
