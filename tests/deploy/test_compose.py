"""compose.yaml against the Compose specification and against the code; .env.example against Settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.deploy.checks import compose, env_example, settings


def test_compose_file_matches_the_compose_specification() -> None:
    assert compose.check_compose_schema() == []


def test_docker_compose_loads_the_file_in_every_profile() -> None:
    assert compose.check_compose_config() == []


def test_compose_file_agrees_with_the_code() -> None:
    assert compose.check_compose_semantics() == []


def test_env_example_documents_exactly_the_settings() -> None:
    assert env_example.check_env_example() == []


def test_settings_names_come_from_the_settings_class() -> None:
    names = settings.settings_variables()
    assert {"POSTERGENRE_HOME", "POSTERGENRE_DATABASE_URL", "TMDB_API_KEY", "TMDB_API_URL"} <= names
    assert "POSTERGENRE_TMDB_API_KEY" not in names  # an aliased field is read under its alias only


def broken_copy(tmp_path: Path, old: str, new: str) -> Path:
    """compose.yaml and .env.example copied to tmp_path, with one text replaced in compose.yaml."""
    text = compose.COMPOSE_FILE.read_text()
    assert old in text, f"the fixture text {old!r} is gone from compose.yaml"
    path = tmp_path / "compose.yaml"
    path.write_text(text.replace(old, new, 1))
    shutil.copy(env_example.ENV_EXAMPLE, tmp_path / ".env.example")
    return path


def test_a_compose_file_breaking_the_specification_is_caught(tmp_path: Path) -> None:
    path = broken_copy(tmp_path, "  web:\n", "  web:\n    heathcheck: {}\n")
    problems = compose.check_compose_schema(path)
    assert len(problems) == 1 and "heathcheck" in problems[0]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "      tfserving:\n        condition: service_healthy",
            "      tf-serving:\n        condition: service_healthy",
            "web depends on tf-serving, which is not a service",
        ),
        (
            "POSTERGENRE_INFERENCE_URL: grpc://tfserving:8500",
            "POSTERGENRE_INFERENCE_URL: grpc://tfserving:9500",
            "POSTERGENRE_INFERENCE_URL uses port 9500",
        ),
        ("POSTERGENRE_REDIS_URL:", "POSTERGENRE_REDIS_URI:", "POSTERGENRE_REDIS_URI is not a setting"),
        (
            "models:/var/lib/postergenre/models:ro",
            "models:/models:ro",
            "the models folder /var/lib/postergenre/models is not one shared volume",
        ),
        (
            "--model_config_file=/var/lib/postergenre/models/models.config",
            "--model_config_file=/models/models.config",
            "--model_config_file is '/models/models.config'",
        ),
        (
            "mb --ignore-existing store/postergenre",
            "mb --ignore-existing store/posters",
            "minio-init does not create the bucket 'postergenre'",
        ),
        (
            'command: ["worker", "--queues", "dataset", "--concurrency", "2"]',
            'command: ["worker", "--quees", "dataset"]',
            "`postergenre worker --quees dataset` is refused",
        ),
        (
            "              capabilities: [gpu]\n",
            "              capabilities: [compute]\n",
            "trainer does not reserve an NVIDIA GPU",
        ),
        (
            '    profiles: ["cpu", "demo"]\n',
            '    profiles: ["cpu"]\n',
            "profile demo: demo depends on trainer-cpu, which that profile does not start",
        ),
        ("image: redis:7.4.2-bookworm", "image: redis", "image 'redis' is not pinned"),
        (
            "MINIO_ROOT_PASSWORD: ${POSTERGENRE_S3_SECRET_KEY:?set POSTERGENRE_S3_SECRET_KEY in .env}",
            "MINIO_ROOT_PASSWORD: minio123",
            "minio: MINIO_ROOT_PASSWORD holds a secret written in compose.yaml",
        ),
        (
            "postgresql://postergenre:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}@postgres",
            "postgresql://postergenre:hunter2@postgres",
            "POSTERGENRE_DATABASE_URL holds a secret written",
        ),
        (
            "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}@postgres",
            "${POSTGRES_PASSWD:?set it}@postgres",
            "${POSTGRES_PASSWD} is neither a setting",
        ),
        # The defects a build or a start would have shown (issue "The stack for real").
        (
            '"test $$(( $$(date +%s) - $$(stat -c %Y /tmp/postergenre-worker.heartbeat) )) -lt 120"',
            '"celery --app shared.celery_app:celery_app inspect ping --timeout 20"',
            "dataset-worker: its healthcheck starts Python",
        ),
        ("    REMAP_SIGTERM: SIGQUIT\n", "", "crawler: REMAP_SIGTERM=SIGQUIT"),
        ("  stop_grace_period: 6m\n", "  stop_grace_period: 2m\n", "trainer: stop_grace_period is shorter"),
        ("POSTERGENRE_REDIS_URL: redis://cache:6379/0", "POSTERGENRE_REDIS_URL: redis://redis:6379/2",
         "must use the cache Redis"),
        ('"--maxmemory-policy", "noeviction"', '"--maxmemory-policy", "allkeys-lru"', "never evicts"),
        ('"--maxmemory", "256mb", ', "", "cache: a Redis with --maxmemory"),
        ("      - --monitoring_config_file=/var/lib/postergenre/models/monitoring.config\n", "",
         "--monitoring_config_file"),
        ("${DATA:-./data/posters}", "${DATA:-../shared/data/posters-imdb}",
         "a default path outside the repository"),
    ],
)
def test_a_compose_file_disagreeing_with_the_code_is_caught(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    path = broken_copy(tmp_path, old, new)
    problems = compose.check_compose_semantics(path, tmp_path / ".env.example")
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "TMDB_BEARER_TOKEN=\n",
            "TMDB_BEARER_TOKEN=\nPOSTERGENRE_NOT_A_SETTING=1\n",
            "POSTERGENRE_NOT_A_SETTING is not a setting",
        ),
        ("# POSTERGENRE_MODEL_PREFIX=genre\n", "", "setting POSTERGENRE_MODEL_PREFIX is not documented"),
        (
            "# POSTERGENRE_IMAGE_SIZE=128",
            "# POSTERGENRE_IMAGE_SIZE=256",
            "POSTERGENRE_IMAGE_SIZE shows '256'",
        ),
    ],
)
def test_an_env_example_disagreeing_with_settings_is_caught(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = env_example.ENV_EXAMPLE.read_text()
    assert old in text
    path = tmp_path / ".env.example"
    path.write_text(text.replace(old, new, 1))
    problems = env_example.check_env_example(path)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "      tfserving:\n        condition: service_healthy",
            "      tf-serving:\n        condition: service_healthy",
            'service "web" depends on undefined service "tf-serving"',
        ),
        (
            '    profiles: ["cpu", "demo"]\n',
            '    profiles: ["cpu"]\n',
            '(profile demo): service "demo" depends on undefined service "trainer-cpu"',
        ),
        ("  web:\n", "  web:\n    heathcheck: {}\n", "heathcheck"),
    ],
)
def test_docker_compose_refuses_a_broken_file(tmp_path: Path, old: str, new: str, expected: str) -> None:
    path = broken_copy(tmp_path, old, new)
    problems = compose.check_compose_config(path, tmp_path / ".env.example")
    assert any(expected in problem for problem in problems), problems


def test_docker_compose_refuses_to_start_without_a_required_secret(tmp_path: Path) -> None:
    path = broken_copy(tmp_path, "x", "x")
    env = tmp_path / ".env.example"
    env.write_text(env.read_text().replace("POSTERGENRE_S3_SECRET_KEY=change-me-too\n", ""))
    problems = compose.check_compose_config(path, env)
    assert any("required variable POSTERGENRE_S3_SECRET_KEY is missing" in problem for problem in problems), (
        problems
    )


def test_required_secrets_must_be_set_in_env_example(tmp_path: Path) -> None:
    path = broken_copy(tmp_path, "x", "x")
    env = tmp_path / ".env.example"
    env.write_text(env.read_text().replace("POSTGRES_PASSWORD=change-me", "# POSTGRES_PASSWORD=change-me"))
    problems = compose.check_compose_semantics(path, env)
    assert any("${POSTGRES_PASSWORD} is required" in problem for problem in problems), problems
