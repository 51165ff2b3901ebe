"""Offline checks of the Prometheus Operator's objects of the k8s overlays (ServiceMonitor,
PodMonitor): the operator's own CRD schemas (vendored in ``schemas/prometheus-operator``, strictly),
and agreement with the workloads: every pod that says it serves metrics (the ``prometheus.io/*``
annotations) is scraped by exactly one monitor, on the port and path of its annotations, and every
monitor endpoint reaches a pod.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.deploy.checks.k8s_objects import containers, named_port, pod_labels, pod_spec
from tests.deploy.crds import VendoredCrds

SCHEMAS_DIR = Path(__file__).parent / "schemas" / "prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "0.93.0"
API_GROUP = "monitoring.coreos.com"
MONITOR_CRDS = VendoredCrds("Prometheus Operator", f"{API_GROUP}/v1", SCHEMAS_DIR,
                            (("ServiceMonitor", "monitoring.coreos.com_servicemonitors.yaml"),
                             ("PodMonitor", "monitoring.coreos.com_podmonitors.yaml")))
# Where each monitor kind keeps its endpoints.
ENDPOINTS = {"ServiceMonitor": "endpoints", "PodMonitor": "podMetricsEndpoints"}


def check_monitor_schemas(docs: list[dict[str, Any]]) -> list[str]:
    """Every monitoring.coreos.com object against its CRD's schema (jsonschema), with no unknown field."""
    return MONITOR_CRDS.check(docs)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a set of labels; an
    empty selector selects everything, as in the API."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def scrape_annotations(workload: dict[str, Any]) -> tuple[int, str] | None:
    """Port and path a workload's pods announce with ``prometheus.io/*`` (None: they announce none)."""
    template = workload["spec"]["template"] if workload.get("kind") != "CronJob" else \
        workload["spec"]["jobTemplate"]["spec"]["template"]
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    if annotations.get("prometheus.io/scrape") != "true":
        return None
    port = int(annotations.get("prometheus.io/port", 0))
    return port, str(annotations.get("prometheus.io/path", "/metrics"))


def container_port(workload: dict[str, Any], port: Any) -> int | None:
    """The number of a pod's port given by name or number (None: no container has it)."""
    for container in containers(pod_spec(workload) or {}):
        number = named_port(container, port)
        if number is not None:
            return number
    return None


def _service_endpoint_targets(monitor: dict[str, Any], endpoint: dict[str, Any],
                              services: list[dict[str, Any]], workloads: list[dict[str, Any]]
                              ) -> list[tuple[str, int | None]]:
    """(workload, pod port) pairs a ServiceMonitor endpoint scrapes: Services it selects that have the
    endpoint's port, then the workloads those Services route to, on the port's targetPort."""
    reached = []
    for service in services:
        if not selects(monitor["spec"]["selector"], service["metadata"].get("labels") or {}):
            continue
        for port in service["spec"].get("ports", []):
            if port.get("name") != endpoint.get("port"):
                continue
            for workload in workloads:
                if selects({"matchLabels": service["spec"].get("selector") or {}}, pod_labels(workload)):
                    target = port.get("targetPort", port["port"])
                    reached.append((workload["metadata"]["name"], container_port(workload, target)))
    return reached


def _pod_endpoint_targets(monitor: dict[str, Any], endpoint: dict[str, Any],
                          workloads: list[dict[str, Any]]) -> list[tuple[str, int | None]]:
    """(workload, pod port) pairs a PodMonitor endpoint scrapes."""
    reached = []
    for workload in workloads:
        if selects(monitor["spec"]["selector"], pod_labels(workload)):
            port = endpoint.get("portNumber", endpoint.get("port"))
            reached.append((workload["metadata"]["name"], container_port(workload, port)))
    return reached


def check_monitor_semantics(docs: list[dict[str, Any]]) -> list[str]:
    """Each pod announcing metrics is scraped once, where it announces them; each endpoint reaches pods."""
    workloads = [doc for doc in docs if pod_spec(doc) is not None and doc.get("kind") != "CronJob"]
    services = [doc for doc in docs if doc.get("kind") == "Service"]
    monitors = [doc for doc in docs if doc.get("kind") in MONITOR_CRDS.kinds
                and str(doc.get("apiVersion", "")).startswith(f"{API_GROUP}/")]
    problems: list[str] = []
    scraped_by: dict[str, list[str]] = {}
    for monitor in monitors:
        where = f"{monitor['kind']}/{monitor['metadata']['name']}"
        if monitor["spec"].get("namespaceSelector"):
            problems.append(f"{where}: a namespaceSelector would scrape other namespaces; the overlay's "
                            "monitors watch their own")
        for index, endpoint in enumerate(monitor["spec"].get(ENDPOINTS[monitor["kind"]], [])):
            if monitor["kind"] == "ServiceMonitor":
                reached = _service_endpoint_targets(monitor, endpoint, services, workloads)
            else:
                reached = _pod_endpoint_targets(monitor, endpoint, workloads)
            if not reached:
                problems.append(f"{where}: endpoint {index} (port {endpoint.get('port')}) reaches no pod")
            for name, port in reached:
                workload = next(w for w in workloads if w["metadata"]["name"] == name)
                announced = scrape_annotations(workload)
                scraped_by.setdefault(name, []).append(where)
                if announced is None:
                    problems.append(f"{where}: scrapes {workload['kind']}/{name}, whose pods announce no "
                                    "metrics (prometheus.io/scrape)")
                    continue
                path = str(endpoint.get("path", "/metrics"))
                if (port, path) != announced:
                    problems.append(f"{where}: scrapes {workload['kind']}/{name} at :{port}{path}, but its "
                                    f"pods serve metrics at :{announced[0]}{announced[1]}")
    for workload in workloads:
        name = workload["metadata"]["name"]
        if scrape_annotations(workload) is None:
            continue
        count = len(scraped_by.get(name, []))
        if monitors and count == 0:
            problems.append(f"{workload['kind']}/{name} serves metrics but no ServiceMonitor or PodMonitor "
                            "scrapes it")
        elif count > 1:
            problems.append(f"{workload['kind']}/{name} is scraped {count} times: "
                            f"{', '.join(sorted(scraped_by[name]))}")
    return problems
