"""KEDA's objects in the prod overlay, offline: against KEDA's CRD schemas (vendored, strict) and
against the workers they scale (queue, broker, running tasks, replicas left to KEDA)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.deploy.checks import k8s_objects, k8s_operations
from tests.deploy.keda import check_keda_schemas, check_keda_semantics


@pytest.fixture(scope="module")
def prod() -> list[dict[str, Any]]:
    return k8s_objects.render_overlay(k8s_objects.K8S_DIR / "overlays" / "prod")


def test_keda_objects_match_kedas_crd_schemas(prod: list[dict[str, Any]]) -> None:
    kinds = {doc["kind"] for doc in prod if doc["apiVersion"].startswith("keda.sh/")}
    assert kinds == {"ScaledObject", "TriggerAuthentication"}
    assert check_keda_schemas(prod) == []


def test_every_worker_scales_on_its_own_queue_and_running_tasks(prod: list[dict[str, Any]]) -> None:
    scaled = {doc["spec"]["scaleTargetRef"]["name"] for doc in prod if doc["kind"] == "ScaledObject"}
    assert scaled == {"trainer", "crawler", "dataset-worker"}
    assert check_keda_semantics(prod, k8s_objects.read_secret_example()) == []
    assert k8s_operations.check_k8s_hpa_replicas(prod) == []


def _scaled_object(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "ScaledObject" and d["metadata"]["name"] == name)


def test_a_scaled_object_breaking_the_crd_schema_is_caught(prod: list[dict[str, Any]]) -> None:
    docs = copy.deepcopy(prod)
    trainer = _scaled_object(docs, "trainer")
    trainer["spec"]["cooldownPeriods"] = 300  # a typo KEDA would silently drop
    trainer["spec"]["minReplicaCount"] = "zero"
    trainer["spec"]["triggers"][0].pop("type")
    problems = check_keda_schemas(docs)
    assert any("unknown field /spec/cooldownPeriods" in p for p in problems), problems
    assert any("'zero' is not of type 'integer'" in p for p in problems), problems
    assert any("'type' is a required property" in p for p in problems), problems


@pytest.mark.parametrize(("change", "expected"), [
    (lambda so: so["spec"]["triggers"][0]["metadata"].update(listName="crawl"),
     "watches list 'crawl' but trainer consumes ['gpu']"),
    (lambda so: so["spec"]["triggers"][0]["metadata"].update(address="redis:6379"),
     "is not the broker redis:6379"),
    (lambda so: so["spec"]["triggers"][0]["metadata"].update(databaseIndex="1"), "databaseIndex 1"),
    (lambda so: so["spec"]["triggers"][0]["metadata"].update(listLenght="1"), "unknown metadata listLenght"),
    (lambda so: so["spec"]["triggers"][0].pop("authenticationRef"), "authenticationRef None"),
    (lambda so: so["spec"]["triggers"][1]["metadata"].update(
        query='sum(postergenre_celery_tasks_running{task="postergenre.crawl"})'), "the prometheus query"),
    (lambda so: so["spec"].update(minReplicaCount=1), "minReplicaCount should be 0"),
    (lambda so: so["spec"].pop("advanced"), "scale-down stabilization window"),
    (lambda so: so["spec"]["triggers"].pop(1), "want redis (waiting) and prometheus"),
])
def test_a_scaled_object_disagreeing_with_its_worker_is_caught(prod: list[dict[str, Any]], change: Any,
                                                               expected: str) -> None:
    docs = copy.deepcopy(prod)
    change(_scaled_object(docs, "trainer"))
    problems = check_keda_semantics(docs, k8s_objects.read_secret_example())
    assert any(expected in p for p in problems), problems


def test_a_worker_without_a_scaled_object_or_with_replicas_is_caught(prod: list[dict[str, Any]]) -> None:
    docs = [d for d in copy.deepcopy(prod) if not (d["kind"] == "ScaledObject"
                                                   and d["metadata"]["name"] == "crawler")]
    assert "Deployment/crawler is a worker without a ScaledObject" in check_keda_semantics(docs)
    docs = copy.deepcopy(prod)
    next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "trainer")["spec"][
        "replicas"] = 2
    assert k8s_operations.check_k8s_hpa_replicas(docs) == [
        "Deployment/trainer sets spec.replicas; ScaledObject/trainer owns it"]
