"""What the checks of every deployment target share: the repository root, the ports the services
listen on, the command-line validators the ``test`` extra installs, and the small parsers of YAML,
environment mappings, command lines and URLs that both compose.yaml and the Kubernetes manifests
need.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[3]
INFRA_SECRET_KEYS = {"POSTGRES_PASSWORD"}
# Ports the third-party images listen on (their documented defaults; our commands keep them).
THIRD_PARTY_PORTS = {"postgres": 5432, "redis": 6379, "cache": 6379, "minio": 9000}
WEB_PORT = 8000
TFSERVING_GRPC_PORT = 8500
TFSERVING_REST_PORT = 8501


class ToolMissing(RuntimeError):
    """A validator that the ``test`` extra installs is not on this machine."""


def tool(name: str) -> str:
    """The path of a command-line validator, preferring the one beside this Python."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ToolMissing(f"{name} not found: install the test extra (pip install -e '.[test]')")
    return found


def run_tool(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120, check=False)


def load_yaml(path: Path) -> Any:
    with path.open() as handle:
        return yaml.safe_load(handle)


INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+][^}]*)?\}")


def as_mapping(environment: Any) -> dict[str, str]:
    if environment is None:
        return {}
    if isinstance(environment, dict):
        return {str(k): "" if v is None else str(v) for k, v in environment.items()}
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(item) for item in value]


def host_port(url: str) -> tuple[str, int | None]:
    """Host and port of a URL or ``host:port``; compose's ``${...}`` (a password) read as a word."""
    url = INTERPOLATION.sub("interpolated", url)
    url = re.sub(r"^(grpc://)?dns:///", "tcp://", url)  # a gRPC resolver target: host:port follows
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    return parts.hostname or "", parts.port


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY")


def literal_secret(name: str, value: str) -> bool:
    """Whether a variable carries a secret written into the file itself (not from .env / a Secret):
    a secret-named variable with a literal value, or a URL with a literal password."""
    if SECRET_NAME.search(name) and value and not INTERPOLATION.search(value):
        return True
    if "://" in value:
        password = urlsplit(INTERPOLATION.sub("interpolated", value)).password
        return bool(password) and password != "interpolated"
    return False


def command_flags(argv: list[str]) -> dict[str, str]:
    """``--name=value`` flags of a command line."""
    return dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)
