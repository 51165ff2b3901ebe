"""Every kustomize overlay rendered (kubectl's kustomize) and validated offline against the Kubernetes
schemas (kubernetes-validate, strict) and against the code."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import checks


@pytest.fixture(scope="module", params=checks.OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name = str(request.param)
    return name, checks.render_overlay(checks.K8S_DIR / "overlays" / name)


def test_overlay_matches_the_kubernetes_schemas(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    kinds = {doc["kind"] for doc in docs}
    assert {
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "Job",
        "CronJob",
        "ConfigMap",
        "PodDisruptionBudget",
    } <= kinds
    assert checks.check_k8s_schemas(docs) == []


def test_overlay_agrees_with_the_code(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    assert checks.check_k8s_semantics(docs, name) == []


def test_no_secret_is_committed_and_the_example_is_never_applied(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    assert [doc["metadata"]["name"] for doc in docs if doc["kind"] == "Secret"] == []
    example = checks.SECRET_EXAMPLE.resolve()
    for kustomization, resources in checks.kustomization_resources().items():
        assert example not in resources, f"{kustomization} applies the secret example"
        assert "secretGenerator" not in (checks.load_yaml(kustomization) or {})
    secrets = [doc for doc in yaml.safe_load_all(checks.SECRET_EXAMPLE.read_text()) if doc]
    assert checks.check_k8s_schemas(secrets) == []


def broken_tree(tmp_path: Path, relative: str, old: str, new: str) -> Path:
    """A copy of k8s/ with one text replaced in one file."""
    root = tmp_path / "k8s"
    shutil.copytree(checks.K8S_DIR, root)
    path = root / relative
    text = path.read_text()
    assert old in text, f"the fixture text {old!r} is gone from {relative}"
    path.write_text(text.replace(old, new, 1))
    return root


@pytest.mark.parametrize(
    ("relative", "old", "new", "expected"),
    [
        ("base/web.yaml", "containerPort: 8000", "containerPort: eight-thousand", "Deployment/web"),
        ("base/tfserving.yaml", "  replicas: 2\n", "  replica: 2\n", "'replica' was unexpected"),
        ("base/jobs.yaml", '  schedule: "0 3 * * 0"\n', "  schedule: 7\n", "CronJob/recrawl"),
    ],
)
def test_a_manifest_breaking_the_kubernetes_schema_is_caught(
    tmp_path: Path, relative: str, old: str, new: str, expected: str
) -> None:
    root = broken_tree(tmp_path, relative, old, new)
    problems = checks.check_k8s_schemas(checks.render_overlay(root / "overlays" / "prod"))
    assert any(expected in problem for problem in problems), problems


def test_a_kustomization_that_does_not_render_is_caught(tmp_path: Path) -> None:
    root = broken_tree(tmp_path, "base/kustomization.yaml", "  - ingress.yaml\n", "  - ingres.yaml\n")
    with pytest.raises(checks.RenderError, match="ingres.yaml"):
        checks.render_overlay(root / "overlays" / "dev")


@pytest.mark.parametrize(
    ("relative", "old", "new", "expected"),
    [
        (
            "base/tfserving.yaml",
            "      port: 8501\n",
            "      port: 8601\n",
            "POSTERGENRE_INFERENCE_REST_URL uses port 8501, Service tfserving has [8500, 8601]",
        ),
        (
            "base/tfserving.yaml",
            "  name: tfserving-pods\n",
            "  name: tfserving-replicas\n",
            "POSTERGENRE_INFERENCE_URL points at tfserving-pods, which is not a Service",
        ),
        (
            "base/web.yaml",
            "              path: /readyz",
            "              path: /ready",
            "web readinessProbe should GET /readyz",
        ),
        (
            "base/kustomization.yaml",
            "POSTERGENRE_REDIS_URL=",
            "POSTERGENRE_REDIS=",
            "POSTERGENRE_REDIS is not a setting",
        ),
        (
            "base/tfserving.yaml",
            "              mountPath: /var/lib/postergenre/models\n              readOnly: true",
            "              mountPath: /models\n              readOnly: true",
            "tfserving/tfserving does not mount the models at /var/lib/postergenre/models",
        ),
        (
            "base/workers.yaml",
            "secretRef:\n                name: postergenre-secrets",
            "secretRef:\n                name: postergenre-secret",
            "Secret postergenre-secret is not in secret.example.yaml",
        ),
        (
            "base/workers.yaml",
            '"--queues", "crawl"',
            '"--quees", "crawl"',
            "`postergenre worker --quees crawl",
        ),
        ("overlays/prod/kustomization.yaml", "  - external.yaml\n", "", "prod: no Service postgres"),
        (
            "base/kustomization.yaml",
            "      - POSTERGENRE_HOME=/var/lib/postergenre\n",
            "      - POSTERGENRE_HOME=/var/lib/postergenre\n      - POSTERGENRE_ADMIN_TOKEN=s3cret\n",
            "POSTERGENRE_ADMIN_TOKEN is a secret; it belongs in the Secret",
        ),
        (
            "base/web.yaml",
            "  selector:\n    app.kubernetes.io/name: web\n",
            "  selector:\n    app.kubernetes.io/name: webb\n",
            "Service/web selects no pods",
        ),
    ],
)
def test_a_manifest_disagreeing_with_the_code_is_caught(
    tmp_path: Path, relative: str, old: str, new: str, expected: str
) -> None:
    root = broken_tree(tmp_path, relative, old, new)
    problems = checks.check_k8s_semantics(checks.render_overlay(root / "overlays" / "prod"), "prod")
    assert any(expected in problem for problem in problems), problems
