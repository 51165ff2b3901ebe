"""The Dockerfiles (hadolint and the project's rules: build context, stages, exec-form commands,
the trainer's base image) and docker/requirements.lock against pyproject.toml.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tests.deploy.checks.common import REPO, run_tool, tool
from tests.deploy.checks.settings import code_variables, postergenre_cli_problems, settings_variables

DOCKER_DIR = REPO / "docker"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK_FILE = DOCKER_DIR / "requirements.lock"
TRAINER_BASE_IMAGE = "tensorflow/tensorflow:2.21.0-gpu"
TFJS_ENV_SCRIPT = "scripts/make_tfjs_env.sh"


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
