"""Drives the project's Compose stack as a user would, through `docker-compose` and the published port
only: nothing here imports a service. Used by tests/stack (make stack-test).

Traffic goes to the web container's port published on 127.0.0.1 and, through `docker exec`, to the
containers this stack created; nowhere else.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.deploy.checks.compose import compose_binary
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILES = (REPO / "compose.yaml", REPO / "tests" / "stack" / "compose.override.yaml")
POSTERS = REPO.parent / "shared" / "data" / "posters-imdb"
# The whole system on a machine without a GPU (web, TF Serving, stores, every worker), and Prometheus
# scraping it (Grafana is not started: compose.override.yaml).
PROFILES = ("cpu", "observability")


class StackError(RuntimeError):
    pass


def tool_environment() -> dict[str, str]:
    # Debian's docker client first: the one in /usr/local/bin on some machines lacks the defaults.
    env = dict(os.environ)
    env["PATH"] = "/usr/bin:/usr/sbin:" + env.get("PATH", "")
    return env


def poster_bytes(seed: int, size: tuple[int, int] = (200, 300)) -> bytes:
    """A JPEG no cache has seen (the prediction cache must not answer for the database)."""
    from PIL import Image

    image = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    image.putpixel((seed % size[0], (seed // size[0]) % size[1]), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


@dataclass
class Stack:
    """One Compose project of the real compose.yaml, in a folder of its own holding its `.env`."""

    project_dir: Path
    name: str = "postergenre-stacktest"
    web_port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    extra_env: dict[str, str] = field(default_factory=dict)
    # Seconds each measured step took, written to var/stack/stack-test-times.json (docs/deploy.md).
    timings: dict[str, float] = field(default_factory=dict)

    def write_env(self) -> None:
        """The `.env` a user writes from .env.example, with fresh secrets."""
        values = {
            "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
            "POSTERGENRE_S3_ACCESS_KEY": "stacktest",
            "POSTERGENRE_S3_SECRET_KEY": secrets.token_urlsafe(16),
            "POSTERGENRE_ADMIN_TOKEN": self.admin_token,
            "TMDB_API_KEY": "",
            "TMDB_BEARER_TOKEN": "",
            "WEB_PUBLISH": f"127.0.0.1:{self.web_port}",
            "PROMETHEUS_PUBLISH_PORT": str(self.prometheus_port),  # read by compose.override.yaml only
            **self.extra_env,
        }
        self.project_dir.mkdir(parents=True, exist_ok=True)
        (self.project_dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        # compose.yaml's bind mounts (./docker/observability/...) are relative to the project folder:
        # they resolve, through this link, to the repository's files.
        observability = self.project_dir / "docker" / "observability"
        if not observability.exists():
            observability.parent.mkdir(exist_ok=True)
            observability.symlink_to(REPO / "docker" / "observability", target_is_directory=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    # ---------------------------------------------------------------- compose and docker
    def compose_args(self, *args: str) -> list[str]:
        files = [arg for path in COMPOSE_FILES for arg in ("-f", str(path))]
        profiles = [arg for profile in PROFILES for arg in ("--profile", profile)]
        return [compose_binary(), *files, "--project-directory", str(self.project_dir), "-p", self.name,
                *profiles, *args]

    def compose(self, *args: str, check: bool = True, timeout: float = 900,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.compose_args(*args), capture_output=True, text=True, timeout=timeout,
                                env={**tool_environment(), **(env or {})}, check=False)
        if check and result.returncode != 0:
            raise StackError(f"docker-compose {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def cli(self, *args: str, volumes: Sequence[str] = (), timeout: float = 900) -> str:
        """`postergenre ARGS` in a one-off container of the web image, as an operator runs it."""
        mounts = [arg for volume in volumes for arg in ("-v", volume)]
        result = self.compose("run", "--rm", "--no-deps", "-T", *mounts, "web", *args, timeout=timeout)
        return result.stdout

    def container(self, service: str) -> str:
        ids = self.compose("ps", "--all", "-q", service).stdout.split()
        if not ids:
            raise StackError(f"no container for {service}")
        return ids[0]

    def inspect(self, service: str) -> dict[str, Any]:
        out = subprocess.run(["docker", "inspect", self.container(service)], capture_output=True, text=True,
                             check=True, env=tool_environment()).stdout
        return dict(json.loads(out)[0])

    def crash(self, service: str) -> int:
        """SIGKILL of the container's main process, as a crash (``docker kill`` would count as a manual
        stop for ``restart: unless-stopped``); returns the killed PID."""
        pid = int(self.inspect(service)["State"]["Pid"])
        if pid <= 0:
            raise StackError(f"{service} is not running")
        os.kill(pid, signal.SIGKILL)
        return pid

    def exec(self, service: str, *command: str) -> str:
        return self.compose("exec", "-T", service, *command).stdout

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return str(state.get("Health", {}).get("Status", state["Status"]))

    def is_healthy(self, service: str) -> bool:
        return self.health(service) == "healthy"

    def logs(self, *services: str, tail: int = 60) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), *services, check=False).stdout

    # ---------------------------------------------------------------- HTTP
    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=kwargs.pop("timeout", 60), **kwargs)

    def predict(self, poster: bytes, years: str, timeout: float = 30) -> httpx.Response:
        return self.post(f"/api/v1/predictions?years={years}",
                         files={"file": ("poster.jpg", poster, "image/jpeg")}, timeout=timeout)

    def prometheus(self, path: str, **params: str) -> Any:
        """The ``data`` of an answer of Prometheus' HTTP API (``/api/v1/...``) on its published port."""
        response = httpx.get(f"http://127.0.0.1:{self.prometheus_port}{path}", params=params, timeout=30)
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise StackError(f"Prometheus {path}: {body}")
        return body["data"]

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float, every: float = 2.0) -> float:
        """Seconds until ``check()`` holds; StackError (with the stack's logs) after ``timeout``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                if check():
                    return time.monotonic() - start
            except (httpx.HTTPError, StackError, KeyError):
                pass
            time.sleep(every)
        raise StackError(f"{what}: not within {timeout:.0f} s\n{self.logs()}")

    def ready(self) -> bool:
        return self.get("/readyz", timeout=10).status_code == 200

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/api/v1/admin/jobs/{job_id}", headers=self.admin_headers)
        response.raise_for_status()
        return dict(response.json())

    def wait_job(self, job_id: str, timeout: float,
                 seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Polls a job until it ends; every state seen is appended to ``seen``."""
        final: dict[str, Any] = {}

        def ended() -> bool:
            info = self.job(job_id)
            if seen is not None:
                seen.append(info)
            final.update(info)
            return info["state"] in {"SUCCESS", "FAILURE"}

        self.wait_until(f"job {job_id}", ended, timeout, every=3)
        return final
