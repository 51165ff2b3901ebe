"""The one source of truth the deployment files are checked against: the environment variables
``shared.config.Settings`` reads, the settings a given environment gives, the variables the code
reads outside Settings, ``postergenre`` command lines parsed by the real parser, and TF Serving's
flags against the settings.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import PurePosixPath
from typing import Any

from tests.deploy.checks.common import REPO, host_port

# Settings that name another service by host:port: each must point at a service that listens there.
WIRED_URL_SETTINGS = (
    "POSTERGENRE_DATABASE_URL",
    "POSTERGENRE_S3_ENDPOINT",
    "POSTERGENRE_BROKER_URL",
    "POSTERGENRE_RESULT_BACKEND",
    "POSTERGENRE_REDIS_URL",
    "POSTERGENRE_INFERENCE_URL",
    "POSTERGENRE_INFERENCE_REST_URL",
)


def wired_url_problems(
    stack: dict[str, str], listening: dict[str, set[int]], where: str, what: str
) -> list[str]:
    """Each of :data:`WIRED_URL_SETTINGS` in ``stack`` names a host of ``listening`` (``what``: a
    service, a Service) on one of the ports that host listens on; ``where`` starts each problem."""
    problems = []
    for key in WIRED_URL_SETTINGS:
        if key not in stack:
            problems.append(f"{where}lacks {key}")
            continue
        host, port = host_port(stack[key])
        if host not in listening:
            problems.append(f"{key} points at {host}, which is not {what}")
        elif port not in listening[host]:
            problems.append(f"{key} uses port {port}, but {host} listens on {sorted(listening[host])}")
    return problems


def settings_variables() -> frozenset[str]:
    """Every environment variable ``Settings`` reads: prefix + field name, or the field's alias."""
    from shared.config import Settings

    prefix = str(Settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add((prefix + field_name).upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:  # AliasChoices
            names.update(
                str(choice).upper() for choice in getattr(alias, "choices", []) if isinstance(choice, str)
            )
    # The crawler's politeness settings are their own group (POSTERGENRE_CRAWL_*).
    from services.crawler.settings import CrawlSettings

    crawl_prefix = str(CrawlSettings.model_config.get("env_prefix", ""))
    names.update((crawl_prefix + field_name).upper() for field_name in CrawlSettings.model_fields)
    return frozenset(names)


def settings_for(environment: dict[str, str]) -> Any:
    """``Settings`` as a container with this environment would build it (only POSTERGENRE_HOME and
    friends matter here), without reading this process's environment."""
    from shared.config import Settings

    fields = {
        name: environment[(f"POSTERGENRE_{name}").upper()]
        for name in Settings.model_fields
        if (f"POSTERGENRE_{name}").upper() in environment
    }
    return Settings.model_validate(fields)


def code_variables() -> frozenset[str]:
    """``POSTERGENRE_*`` names the code reads outside Settings (``os.environ`` look-ups)."""
    names: set[str] = set()
    for folder in ("services", "shared"):
        for path in (REPO / folder).rglob("*.py"):
            names.update(re.findall(r"[\"'](POSTERGENRE_[A-Z0-9_]+)[\"']", path.read_text(errors="replace")))
    return frozenset(names)


def batching_config_name() -> str:
    from services.inference.repository import BATCHING_CONFIG_NAME

    return BATCHING_CONFIG_NAME


def postergenre_cli_problems(argv: list[str], where: str) -> list[str]:
    """Parse ``postergenre ARGV`` with the real parser; a problem when it would refuse it."""
    from services.cli import build_parser

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            message = stderr.getvalue().strip().splitlines()
            return [
                f"{where}: `postergenre {shlex.join(argv)}` is refused: {message[-1] if message else exc}"
            ]
    return []


def tfserving_flag_problems(flags: dict[str, str], settings: Any, where: str) -> list[str]:
    problems = []
    expected = {
        "model_config_file": str(PurePosixPath(settings.models_config_path)),
        "batching_parameters_file": str(PurePosixPath(settings.models_dir) / batching_config_name()),
        "model_config_file_poll_wait_seconds": "30",
    }
    for flag, value in expected.items():
        if flags.get(flag) != value:
            problems.append(f"{where}: --{flag} is {flags.get(flag)!r}, the code writes/expects {value!r}")
    return problems
