""".env.example against shared/config.py: every setting documented once, with its default, and
nothing that is not a setting (or one of the few variables the stack files name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.checks.common import INFRA_SECRET_KEYS, REPO
from tests.deploy.checks.settings import settings_variables

ENV_EXAMPLE = REPO / ".env.example"
ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


@dataclass(frozen=True)
class EnvEntry:
    name: str
    value: str
    commented: bool


def read_env_example(path: Path = ENV_EXAMPLE) -> dict[str, EnvEntry]:
    entries: dict[str, EnvEntry] = {}
    for line in path.read_text().splitlines():
        match = ENV_LINE.match(line.strip())
        if match:
            commented, name, value = match.groups()
            entries[name] = EnvEntry(name, value, commented is not None)
    return entries


def check_env_example(path: Path = ENV_EXAMPLE) -> list[str]:
    """Documents exactly the settings (plus the compose-only password); shown defaults are true."""
    entries = read_env_example(path)
    settings = settings_variables()
    problems = [
        f"{path.name}: setting {name} is not documented" for name in sorted(settings - entries.keys())
    ]
    allowed = settings | INFRA_SECRET_KEYS
    problems += [
        f"{path.name}: {name} is not a setting of shared/config.py (nor {sorted(INFRA_SECRET_KEYS)})"
        for name in sorted(entries.keys() - allowed)
    ]
    from shared.config import Settings

    defaults = Settings.model_construct()
    for entry in entries.values():
        if not entry.commented or entry.name not in settings or entry.name in WIRING_DOCUMENTED:
            continue
        field = next(
            (
                f
                for f in Settings.model_fields
                if (f"POSTERGENRE_{f}").upper() == entry.name
                or str(Settings.model_fields[f].validation_alias or "").upper() == entry.name
            ),
            None,
        )
        if field is None:
            continue
        try:
            shown = Settings.model_validate({_input_key(field): entry.value}).model_dump()[field]
        except Exception as exc:  # noqa: BLE001 - any validation error is the problem to report
            problems.append(f"{path.name}: {entry.name}={entry.value} is not a valid value: {exc}")
            continue
        if shown != getattr(defaults, field):
            problems.append(
                f"{path.name}: {entry.name} shows {entry.value!r} but the default is "
                f"{getattr(defaults, field)!r}"
            )
    return problems


# Section 3 of .env.example shows stack-mode examples, not defaults.
WIRING_DOCUMENTED = frozenset(
    {
        "POSTERGENRE_HOME",
        "POSTERGENRE_DATABASE_URL",
        "POSTERGENRE_OBJECT_STORE",
        "POSTERGENRE_S3_ENDPOINT",
        "POSTERGENRE_S3_SECURE",
        "POSTERGENRE_BROKER_URL",
        "POSTERGENRE_RESULT_BACKEND",
        "POSTERGENRE_REDIS_URL",
        "POSTERGENRE_INFERENCE_URL",
        "POSTERGENRE_INFERENCE_REST_URL",
    }
)


def _input_key(field_name: str) -> str:
    from shared.config import Settings

    alias = Settings.model_fields[field_name].validation_alias
    return alias if isinstance(alias, str) else field_name
