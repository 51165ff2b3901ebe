"""Dockerfiles linted by hadolint and by the project's rules; the lock agrees with pyproject.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.checks import dockerfiles

DOCKERFILES = sorted(dockerfiles.DOCKER_DIR.glob("*.Dockerfile"))


def test_every_service_has_a_dockerfile() -> None:
    assert {path.name for path in DOCKERFILES} == {
        "web.Dockerfile",
        "worker.Dockerfile",
        "trainer.Dockerfile",
        "inference.Dockerfile",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint_and_the_project_rules(dockerfile: Path) -> None:
    assert dockerfiles.check_dockerfile(dockerfile) == []


def test_trainer_image_carries_the_tfjs_converter_environment() -> None:
    assert dockerfiles.check_trainer_dockerfile() == []


def test_lock_pins_every_dependency_of_pyproject() -> None:
    assert dockerfiles.check_lock() == []


def test_a_bad_dockerfile_is_caught(tmp_path: Path) -> None:
    dockerfile = tmp_path / "bad.Dockerfile"
    dockerfile.write_text(
        "FROM python:latest\n"
        "COPY missing.txt /app/\n"
        "COPY .venv /opt/venv\n"
        "ENV POSTERGENRE_NOT_READ=1\n"
        "RUN pip install requests\n"
        'ENTRYPOINT ["postergenre"]\n'
        'CMD ["serve", "webb"]\n'
    )
    problems = "\n".join(dockerfiles.check_dockerfile(dockerfile))
    for expected in (
        "DL3007",  # hadolint: the latest tag
        "DL3013",  # hadolint: unpinned pip package
        "not multi-stage",
        "base image 'python:latest' is not pinned",
        "non-root USER",
        "no HEALTHCHECK",
        "COPY source missing.txt does not exist",
        "COPY source .venv is excluded by .dockerignore",
        "ENV POSTERGENRE_NOT_READ is not a variable the code reads",
        "`postergenre serve webb` is refused",
    ):
        assert expected in problems


def test_a_lock_that_misses_or_contradicts_pyproject_is_caught(tmp_path: Path) -> None:
    lines = dockerfiles.LOCK_FILE.read_text().splitlines()
    lock = tmp_path / "requirements.lock"
    kept = [line for line in lines if not line.startswith(("tensorflow==", "minio=="))]
    lock.write_text("\n".join([*kept, "minio==7.2.19"]) + "\n")
    problems = dockerfiles.check_lock(lock)
    assert any("lacks tensorflow" in problem for problem in problems), problems
    assert any("pins minio==7.2.19" in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("pyproject.toml", False),
        ("shared/config.py", False),
        ("services/cli.py", False),
        ("benchmarks/cli.py", False),  # services/cli.py registers the bench subcommands from it
        ("scripts/make_tfjs_env.sh", False),
        ("docker/requirements.lock", False),
        (".venv/bin/python", True),
        (".env", True),
        ("var/postergenre.db", True),
        ("node_modules/x.js", True),
        ("services/web/__pycache__/app.cpython-311.pyc", True),
        ("docker/web.Dockerfile", True),
    ],
)
def test_dockerignore_keeps_the_context_to_what_the_images_need(path: str, excluded: bool) -> None:
    assert dockerfiles.excluded_from_context(path, dockerfiles.dockerignore_patterns()) is excluded
