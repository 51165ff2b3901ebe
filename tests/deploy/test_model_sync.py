"""docker/model_sync.py: the init container and sidecar that write TF Serving's models.config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.deploy import checks

SCRIPT = checks.DOCKER_DIR / "model_sync.py"


def run_sync(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("POSTERGENRE_")}
    env.update(environment)
    env["PYTHONPATH"] = str(checks.REPO)
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
