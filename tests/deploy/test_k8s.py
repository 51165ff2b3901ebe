"""Every kustomize overlay rendered (kubectl's kustomize) and validated offline against the Kubernetes
schemas (kubernetes-validate, strict) and against the code."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.checks import common, k8s, k8s_objects, k8s_operations


@pytest.fixture(scope="module", params=k8s_objects.OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name = str(request.param)
    return name, k8s_objects.render_overlay(k8s_objects.K8S_DIR / "overlays" / name)


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
    assert k8s.check_k8s_schemas(docs) == []


def test_overlay_agrees_with_the_code(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    assert k8s.check_k8s_semantics(docs, name) == []


def test_no_secret_is_committed_and_the_example_is_never_applied(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    assert [doc["metadata"]["name"] for doc in docs if doc["kind"] == "Secret"] == []
    example = k8s_objects.SECRET_EXAMPLE.resolve()
    for kustomization, resources in k8s_objects.kustomization_resources().items():
        assert example not in resources, f"{kustomization} applies the secret example"
        assert "secretGenerator" not in (common.load_yaml(kustomization) or {})
    secrets = [doc for doc in yaml.safe_load_all(k8s_objects.SECRET_EXAMPLE.read_text()) if doc]
    assert k8s.check_k8s_schemas(secrets) == []


def broken_tree(tmp_path: Path, relative: str, old: str, new: str) -> Path:
    """A copy of k8s/ with one text replaced in one file."""
    root = tmp_path / "k8s"
    shutil.copytree(k8s_objects.K8S_DIR, root)
    path = root / relative
    text = path.read_text()
    assert old in text, f"the fixture text {old!r} is gone from {relative}"
    path.write_text(text.replace(old, new, 1))
    return root


@pytest.mark.parametrize(
    ("relative", "old", "new", "expected"),
    [
        ("base/web.yaml", "containerPort: 8000", "containerPort: eight-thousand", "Deployment/web"),
        (
            "base/tfserving.yaml",
            "  revisionHistoryLimit: 5\n",
            "  revisionHistoryLimits: 5\n",
            "'revisionHistoryLimits' was unexpected",
        ),
        ("base/jobs.yaml", '  schedule: "0 3 * * 0"\n', "  schedule: 7\n", "CronJob/recrawl"),
    ],
)
def test_a_manifest_breaking_the_kubernetes_schema_is_caught(
    tmp_path: Path, relative: str, old: str, new: str, expected: str
) -> None:
    root = broken_tree(tmp_path, relative, old, new)
    problems = k8s.check_k8s_schemas(k8s_objects.render_overlay(root / "overlays" / "prod"))
    assert any(expected in problem for problem in problems), problems


def test_a_kustomization_that_does_not_render_is_caught(tmp_path: Path) -> None:
    root = broken_tree(tmp_path, "base/kustomization.yaml", "  - ingress.yaml\n", "  - ingres.yaml\n")
    with pytest.raises(k8s_objects.RenderError, match="ingres.yaml"):
        k8s_objects.render_overlay(root / "overlays" / "dev")


@pytest.mark.parametrize(
    ("relative", "old", "new", "expected"),
    [
        (
            "base/tfserving.yaml",
            "      port: 8501\n",
            "      port: 8601\n",
            "POSTERGENRE_INFERENCE_REST_URL uses port 8501, but tfserving listens on [8500, 8601]",
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
            "POSTERGENRE_S3_SECURE=",
            "POSTERGENRE_S3_SECUR=",
            "POSTERGENRE_S3_SECUR is not a setting",
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
    problems = k8s.check_k8s_semantics(k8s_objects.render_overlay(root / "overlays" / "prod"), "prod")
    assert any(expected in problem for problem in problems), problems


# ---------------------------------------------------------------- probes, shutdown, ingress, policies,
# stores, ordering, scaling, GPUs (each check on each rendered overlay)


def test_no_probe_starts_celery_or_python_and_workers_report_a_heartbeat(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    assert k8s_operations.check_k8s_probes(docs) == []


def test_workers_shut_down_softly_within_their_grace_period(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    assert k8s_operations.check_k8s_worker_shutdown(docs) == []


def test_the_ingress_routes_only_the_page_and_the_public_api(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    assert k8s_operations.check_k8s_ingress(docs) == []


def test_network_policies_deny_by_default_and_allow_exactly_the_wired_connections(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = overlay
    assert k8s_operations.check_k8s_network_policies(docs, name) == []


def test_the_prediction_cache_and_the_broker_are_separate_redis_servers_with_passwords(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = overlay
    assert k8s_operations.check_k8s_redis(docs, name) == []


def test_database_users_wait_for_the_schema_and_only_the_job_migrates(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    assert k8s_operations.check_k8s_migrations(docs) == []


def test_autoscaled_deployments_leave_replicas_to_their_hpa(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    assert k8s_operations.check_k8s_hpa_replicas(docs) == []


def test_gpu_pods_are_scheduled_by_their_gpu_request(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    assert k8s_operations.check_k8s_gpu(docs, name) == []


def test_tfserving_is_ready_when_its_models_are_and_exports_metrics(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    assert k8s_operations.check_k8s_tfserving_readiness(docs) == []


@pytest.mark.parametrize(
    ("path_type", "path", "request_path", "matches"),
    [
        ("Prefix", "/", "/metrics", True),
        ("Prefix", "/api/v1/models", "/api/v1/models", True),
        ("Prefix", "/api/v1/models", "/api/v1/models/", True),
        ("Prefix", "/api/v1/models", "/api/v1/models/genre-2000/1/files/metrics.json", True),
        ("Prefix", "/api/v1/models/", "/api/v1/models", True),
        ("Prefix", "/api/v1/models", "/api/v1/modelsx", False),
        ("Prefix", "/api/v1", "/api/v1/admin/jobs", True),
        ("Prefix", "/static", "/static/app.js", True),
        ("Exact", "/", "/", True),
        ("Exact", "/", "/metrics", False),
        ("Exact", "/api/v1/predictions", "/api/v1/predictions/", False),
        ("Exact", "/api/v1/predictions", "/api/v1/predictions:batch", False),
        ("ImplementationSpecific", "/api/v1/predictions:batch", "/api/v1/predictions:batch", True),
        ("ImplementationSpecific", "/openapi.json", "/openapi.json", True),
        ("ImplementationSpecific", "/api", "/api/v1/admin/jobs", True),
    ],
)
def test_ingress_paths_match_like_kubernetes_and_ingress_nginx(
    path_type: str, path: str, request_path: str, matches: bool
) -> None:
    assert k8s_operations.ingress_path_matches(path_type, path, request_path) is matches


HEARTBEAT_PROBE = (
    'command: ["sh", "-c", "test $(( $(date +%s) - '
    '$(stat -c %Y /tmp/postergenre-worker.heartbeat) )) -lt 120"]'
)


@pytest.mark.parametrize(
    ("overlay_name", "relative", "old", "new", "expected"),
    [
        (
            "prod",
            "base/ingress.yaml",
            "          - path: /api/v1/models\n            pathType: Prefix",
            "          - path: /api/v1\n            pathType: Prefix",
            "Ingress/web Prefix /api/v1 routes the private path /api/v1/admin/jobs",
        ),
        (
            "prod",
            "base/ingress.yaml",
            "          - path: /\n            pathType: Exact",
            "          - path: /\n            pathType: Prefix",
            "Ingress/web Prefix / routes the private path /metrics",
        ),
        (
            "prod",
            "base/ingress.yaml",
            "          - path: /static\n            pathType: Prefix",
            "          - path: /static.d\n            pathType: Prefix",
            "ingress-nginx refuses Prefix path '/static.d'",
        ),
        (
            "prod",
            "base/networkpolicies.yaml",
            '  podSelector: {}\n  policyTypes: ["Ingress"]\n',
            "  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: web\n"
            '  policyTypes: ["Ingress"]\n',
            "prod: no default-deny NetworkPolicy",
        ),
        (
            "prod",
            "base/networkpolicies.yaml",
            "        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: web\n",
            "        - podSelector: {}\n",
            "the NetworkPolicies let crawler reach tfserving:8500, which its settings do not use",
        ),
        (
            "prod",
            "base/networkpolicies.yaml",
            "              kubernetes.io/metadata.name: ingress-nginx\n",
            "              kubernetes.io/metadata.name: ingress\n",
            "no NetworkPolicy lets namespace ingress-nginx reach web:8000",
        ),
        (
            "dev",
            "overlays/dev/networkpolicies.yaml",
            "              app.kubernetes.io/name: migrate\n",
            "              app.kubernetes.io/name: migration\n",
            "dev: no NetworkPolicy lets migrate reach postgres:5432",
        ),
        (
            "dev",
            "overlays/dev/kustomization.yaml",
            "  - networkpolicies.yaml\n",
            "",
            "dev: no NetworkPolicy lets web reach cache:6379",
        ),
        (
            "prod",
            "base/workers.yaml",
            HEARTBEAT_PROBE,
            'command: ["python", "-c", "import os"]',
            "Deployment/crawler/worker: livenessProbe runs",
        ),
        (
            "prod",
            "base/workers.yaml",
            "            - name: REMAP_SIGTERM\n              value: SIGQUIT\n",
            "            - name: REMAP_SIGTERM\n              value: SIGTERM\n",
            "Deployment/crawler: the worker needs env REMAP_SIGTERM=SIGQUIT",
        ),
        (
            "prod",
            "base/workers.yaml",
            "      terminationGracePeriodSeconds: 360\n",
            "      terminationGracePeriodSeconds: 300\n",
            "Deployment/crawler: terminationGracePeriodSeconds 300 < worker_soft_shutdown_s 300 + 60",
        ),
        (
            "prod",
            "base/kustomization.yaml",
            "      - POSTERGENRE_HOME=/var/lib/postergenre\n",
            "      - POSTERGENRE_HOME=/var/lib/postergenre\n      - POSTERGENRE_WORKER_SOFT_SHUTDOWN_S=600\n",
            "terminationGracePeriodSeconds 360 < worker_soft_shutdown_s 600 + 60",
        ),
        (
            "dev",
            "overlays/dev/cache.yaml",
            "            - allkeys-lru\n",
            "            - noeviction\n",
            "Deployment/cache: the cache Redis needs",
        ),
        (
            "dev",
            "overlays/dev/redis.yaml",
            "            - noeviction\n",
            "            - allkeys-lru\n",
            "StatefulSet/redis: the broker Redis needs --maxmemory-policy noeviction",
        ),
        (
            "dev",
            "overlays/dev/cache.yaml",
            "            - --requirepass\n            - $(REDIS_PASSWORD)\n",
            "",
            "Deployment/cache: --requirepass should be",
        ),
        (
            "prod",
            "base/workers.yaml",
            "until postergenre db check",
            "until postergenre db upgrade",
            "Deployment/crawler/wait-for-schema upgrades the schema; only Job/migrate may",
        ),
        (
            "prod",
            "base/web.yaml",
            "until postergenre db check; do",
            "while false; do",
            "Deployment/web: its first init container should wait",
        ),
        (
            "prod",
            "base/web.yaml",
            "  revisionHistoryLimit: 5\n",
            "  replicas: 2\n  revisionHistoryLimit: 5\n",
            "Deployment/web sets spec.replicas; HorizontalPodAutoscaler/web owns it",
        ),
        (
            "prod",
            "base/workers.yaml",
            "      tolerations:\n",
            '      nodeSelector:\n        nvidia.com/gpu.present: "true"\n      tolerations:\n',
            "prod trainer selects nodes by the label nvidia.com/gpu.present",
        ),
        (
            "prod",
            "components/tfserving-gpu/kustomization.yaml",
            "      - op: add\n"
            "        path: /spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu\n"
            "        value: 1\n",
            "",
            "prod tfserving should have the limit nvidia.com/gpu: 1",
        ),
        (
            "prod",
            "base/tfserving.yaml",
            "--monitoring_config_file=/var/lib/postergenre/models/monitoring.config",
            "--monitoring_config_file=/etc/monitoring.config",
            "--monitoring_config_file is '/etc/monitoring.config'",
        ),
        (
            "prod",
            "base/tfserving.yaml",
            'command: ["cat", "/tmp/postergenre-model-sync.ready"]',
            'command: ["true"]',
            "tfserving/model-sync: readinessProbe should be exec cat /tmp/postergenre-model-sync.ready",
        ),
        (
            "prod",
            "base/tfserving.yaml",
            "            - --enable_model_warmup\n",
            "            - --enable_model_warmup\n            - --num_batch_threads=4\n",
            "tfserving: num_batch_threads is hard-coded",
        ),
    ],
)
def test_a_manifest_breaking_the_deployment_rules_is_caught(
    tmp_path: Path, overlay_name: str, relative: str, old: str, new: str, expected: str
) -> None:
    root = broken_tree(tmp_path, relative, old, new)
    docs = k8s_objects.render_overlay(root / "overlays" / overlay_name)
    problems = k8s.check_k8s_semantics(docs, overlay_name)
    assert any(expected in problem for problem in problems), problems
