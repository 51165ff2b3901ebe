"""Offline checks of the KEDA objects of the k8s overlays: KEDA's own CRD schemas (vendored in
``schemas/keda``, strictly), and agreement with the code: each ScaledObject scales a worker
Deployment on the queue that worker consumes, reads the broker the settings name, and counts the
running tasks of that queue's task."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.deploy.checks.common import host_port
from tests.deploy.checks.k8s_objects import K8sIndex, container_environment, containers, k8s_index, pod_spec
from tests.deploy.checks.settings import postergenre_cli_problems
from tests.deploy.crds import VendoredCrds

SCHEMAS_DIR = Path(__file__).parent / "schemas" / "keda"
KEDA_VERSION = "2.20.2"
KEDA_CRDS = VendoredCrds("KEDA", "keda.sh/v1alpha1", SCHEMAS_DIR,
                         (("ScaledObject", "keda.sh_scaledobjects.yaml"),
                          ("TriggerAuthentication", "keda.sh_triggerauthentications.yaml")))
# Trigger metadata each scaler reads (KEDA v2.20.2, pkg/scalers/redis_scaler.go and
# prometheus_scaler.go, the `keda:"name=..."` tags); anything else is a typo KEDA would ignore.
TRIGGER_METADATA = {
    "redis": {"address", "addresses", "host", "hosts", "port", "ports", "username", "password",
              "usernameFromEnv", "passwordFromEnv", "addressFromEnv", "hostFromEnv", "portFromEnv",
              "listName", "listLength", "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl"},
    "prometheus": {"serverAddress", "query", "queryParameters", "threshold", "activationThreshold",
                   "namespace", "customHeaders", "ignoreNullValues", "unsafeSsl", "awsRegion"},
}
RUNNING_TASKS = "postergenre_celery_tasks_running"


def check_keda_schemas(docs: list[dict[str, Any]]) -> list[str]:
    """Every keda.sh object against its CRD's schema (jsonschema), with no unknown field."""
    return KEDA_CRDS.check(docs)


def _worker_args(deployment: dict[str, Any]) -> tuple[list[str], int]:
    """Queues and concurrency of a worker Deployment's ``postergenre worker`` command."""
    for container in containers(pod_spec(deployment) or {}):
        args = [str(a) for a in container.get("args", [])]
        if args[:1] == ["worker"]:
            queues = args[args.index("--queues") + 1].split(",") if "--queues" in args else []
            concurrency = int(args[args.index("--concurrency") + 1]) if "--concurrency" in args else 1
            return queues, concurrency
    return [], 0


def _broker(deployment: dict[str, Any], index: K8sIndex) -> str:
    for container in containers(pod_spec(deployment) or {}):
        broker = container_environment(container, index).get("POSTERGENRE_BROKER_URL")
        if broker:
            return broker
    return ""


def check_keda_semantics(docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]] | None = None
                         ) -> list[str]:
    """Each worker Deployment has a ScaledObject whose triggers watch its own queue and tasks."""
    from shared.queues import TASK_QUEUES

    index = k8s_index(docs, secrets)
    tasks_of = {queue: task for task, queue in TASK_QUEUES.items()}
    deployments = index.by_kind.get("Deployment", {})
    scaled_objects = index.by_kind.get("ScaledObject", {})
    authentications = index.by_kind.get("TriggerAuthentication", {})
    services = index.by_kind.get("Service", {})
    problems = []
    workers = {name for name, doc in deployments.items() if _worker_args(doc)[0]}
    targets = {so["spec"]["scaleTargetRef"]["name"] for so in scaled_objects.values()}
    problems += [f"Deployment/{name} is a worker without a ScaledObject"
                 for name in sorted(workers - targets)]
    for name, scaled in sorted(scaled_objects.items()):
        where = f"ScaledObject/{name}"
        spec = scaled["spec"]
        target = deployments.get(spec["scaleTargetRef"]["name"])
        if target is None or spec["scaleTargetRef"].get("kind", "Deployment") != "Deployment":
            problems.append(f"{where}: scales {spec['scaleTargetRef']}, which is not a Deployment here")
            continue
        queues, concurrency = _worker_args(target)
        problems += postergenre_cli_problems(
            [str(a) for c in containers(pod_spec(target) or {}) for a in c.get("args", [])], where)
        if spec.get("minReplicaCount", 0) != 0:
            problems.append(f"{where}: minReplicaCount should be 0 (scale to zero on an empty queue)")
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
        if int(behavior.get("scaleDown", {}).get("stabilizationWindowSeconds", 0)) < 300:
            problems.append(f"{where}: a scale-down stabilization window of 5 minutes or more keeps "
                            "busy workers from being stopped on a passing empty queue")
        broker_host, broker_port = host_port(_broker(target, index))
        broker_db = urlsplit(_broker(target, index)).path.strip("/") or "0"
        kinds = {trigger["type"] for trigger in spec.get("triggers", [])}
        if kinds != {"redis", "prometheus"}:
            problems.append(f"{where}: triggers {sorted(kinds)}; want redis (waiting) and prometheus "
                            "(running)")
        for trigger in spec.get("triggers", []):
            metadata = trigger.get("metadata", {})
            known = TRIGGER_METADATA.get(trigger["type"], set())
            problems += [f"{where}: {trigger['type']} trigger: unknown metadata {key}"
                         for key in sorted(set(metadata) - known)]
            if trigger["type"] == "redis":
                if metadata.get("listName") not in queues:
                    problems.append(f"{where}: watches list {metadata.get('listName')!r} but "
                                    f"{target['metadata']['name']} consumes {queues}")
                # KEDA's operator runs in its own namespace: the Service's name alone would not resolve.
                host, port = host_port(str(metadata.get("address", "")))
                namespace = scaled["metadata"].get("namespace", "default")
                if (host, port) != (f"{broker_host}.{namespace}.svc.cluster.local", broker_port) or \
                        broker_host not in services:
                    problems.append(f"{where}: redis address {metadata.get('address')} is not the broker "
                                    f"{broker_host}:{broker_port} of POSTERGENRE_BROKER_URL")
                if str(metadata.get("databaseIndex", "0")) != broker_db:
                    problems.append(f"{where}: databaseIndex {metadata.get('databaseIndex')} but the broker "
                                    f"uses database {broker_db}")
                if str(metadata.get("listLength")) != str(concurrency):
                    problems.append(f"{where}: listLength {metadata.get('listLength')} should be the "
                                    f"worker's --concurrency {concurrency} (tasks one replica takes)")
                reference = (trigger.get("authenticationRef") or {}).get("name")
                authentication = authentications.get(str(reference))
                if authentication is None:
                    problems.append(f"{where}: the broker has a password: authenticationRef "
                                    f"{reference!r} is not a TriggerAuthentication here")
                    continue
                for ref in authentication["spec"].get("secretTargetRef", []):
                    if secrets is not None and ref["key"] not in secrets.get(ref["name"], {}):
                        problems.append(f"TriggerAuthentication/{reference}: Secret {ref['name']} has no "
                                        f"key {ref['key']} (k8s/secret.example.yaml)")
            if trigger["type"] == "prometheus":
                query = str(metadata.get("query", ""))
                wanted = {tasks_of[q] for q in queues if q in tasks_of}
                named = set(re.findall(r'task="([^"]+)"', query))
                if RUNNING_TASKS not in query or not named or named - wanted:
                    problems.append(f"{where}: the prometheus query should count {RUNNING_TASKS} of "
                                    f"{sorted(wanted)}: {query}")
    return problems
