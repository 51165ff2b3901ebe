"""Offline checks of the observability files: the Grafana dashboard asks only for metrics that the
services export, and Prometheus scrapes every service that has an endpoint, by its compose name, on
the port and path it listens on. Like :mod:`tests.deploy.checks`, each ``check_*`` returns a list
of problems.

The exported names come from the metric classes themselves (not from a list kept by hand), so a
renamed metric breaks the dashboard check.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.deploy.checks.common import REPO, WEB_PORT, as_list, as_mapping, command_flags, load_yaml
from tests.deploy.checks.compose import COMPOSE_FILE, compose_mounts, is_celery_worker

OBSERVABILITY_DIR = REPO / "docker" / "observability"
PROMETHEUS_CONFIG = OBSERVABILITY_DIR / "prometheus.yml"
DASHBOARDS_DIR = OBSERVABILITY_DIR / "grafana" / "dashboards"
DATASOURCES_DIR = OBSERVABILITY_DIR / "grafana" / "provisioning" / "datasources"
PROMETHEUS_PORT = 9090

# PromQL words that look like metric names: aggregation modifiers and binary operators.
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                   "bool", "offset", "inf", "nan"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",), "summary": ("", "_count", "_sum", "_created"), "info": ("_info",)}


# TF Serving's own batching histograms (with --enable_batching), the batching panels' alternatives
# to the embedded server's names: tensorflow/serving tensorflow_serving/batching/batching_session.cc
# (queuing_latency, microseconds) and batching_util.h (processed_batch_size, padding included), at
# commit 9d981c5c; its Prometheus exporter (util/prometheus_exporter.cc) turns each `/` into `:`.
TFSERVING_BATCHING_HISTOGRAMS = (":tensorflow:serving:batching_session:queuing_latency",
                                 ":tensorflow:serving:batching_session:processed_batch_size")


def exported_names() -> set[str]:
    """Every sample name the services' metrics expose (``x_total``, ``x_bucket``, ...), and the
    histograms of TF Serving's that the dashboard reads (written down from its source: it is no
    Python package here)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from services.crawler.metrics import crawler_metrics
    from services.dataset.metrics import dataset_metrics
    from services.inference.metrics import LOADED_VERSIONS_FAMILY, InferenceMetrics
    from services.web.metrics import WebMetrics
    from shared.worker_metrics import QUEUE_LENGTH_FAMILY, WorkerMetrics

    names = {QUEUE_LENGTH_FAMILY, LOADED_VERSIONS_FAMILY}
    names.update(name + suffix for name in TFSERVING_BATCHING_HISTOGRAMS for suffix in SUFFIXES["histogram"])
    holders: list[Any] = [WebMetrics(), InferenceMetrics(), WorkerMetrics(CollectorRegistry()),
                          crawler_metrics(), dataset_metrics()]
    for holder in holders:
        for metric in vars(holder).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            for family in metric.describe():
                names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (label matchers, strings, ranges, grouping labels,
    function names and Grafana's ``$__`` variables left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)
    names = set()
    # Not after a digit: the unit of a duration (5m) or an exponent (1e3) is no name.
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        following = text[match.end():].lstrip()
        if word.lower() in PROMQL_KEYWORDS or following.startswith("("):
            continue
        names.add(word)
    return names


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels += panel.get("panels", [])  # a collapsed row holds its panels
    return panels


def check_dashboard(path: Path, exported: set[str] | None = None) -> list[str]:
    """The dashboard parses, every graph panel has a query, and each query names only exported metrics."""
    try:
        dashboard = json.loads(path.read_text())
    except ValueError as exc:
        return [f"{path.name} is not JSON: {exc}"]
    exported = exported if exported is not None else exported_names()
    problems = []
    if not dashboard.get("uid") or not dashboard.get("title"):
        problems.append(f"{path.name}: a provisioned dashboard needs a uid and a title")
    for panel in dashboard_panels(dashboard):
        if panel.get("type") == "row":
            continue
        title = panel.get("title", "?")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{path.name}: panel {title!r} has no query")
        for target in targets:
            expr = str(target.get("expr", ""))
            if not expr:
                problems.append(f"{path.name}: panel {title!r} has a target without a PromQL expr")
            for name in sorted(promql_metric_names(expr) - exported):
                problems.append(f"{path.name}: panel {title!r} asks for {name}, which no service exports")
    return problems


def _listening(service: dict[str, Any]) -> dict[int, str]:
    """Port -> metrics path of a compose service's Prometheus endpoint (empty: it has none)."""
    command = as_list(service.get("command"))
    if command[:2] == ["serve", "web"]:
        port = command[command.index("--port") + 1] if "--port" in command[:-1] else WEB_PORT
        return {int(port): "/metrics"}
    if is_celery_worker(service):
        port = int(as_mapping(service.get("environment")).get("POSTERGENRE_WORKER_METRICS_PORT") or 0)
        return {port: "/metrics"} if port else {}
    if str(service.get("image", "")).startswith("tensorflow/serving"):
        from services.inference.metrics import PROMETHEUS_PATH

        flags = command_flags(command)
        if "monitoring_config_file" not in flags:
            return {}
        return {int(flags.get("rest_api_port", 8501)): PROMETHEUS_PATH}
    return {}


def check_prometheus_config(compose_path: Path = COMPOSE_FILE, config_path: Path = PROMETHEUS_CONFIG
                            ) -> list[str]:
    """Every target is a compose service listening there (port and path); every service with an
    endpoint is scraped; the compose Prometheus and Grafana load these files."""
    services: dict[str, Any] = load_yaml(compose_path).get("services", {})
    config = load_yaml(config_path)
    problems: list[str] = []
    scraped: set[str] = set()
    for job in config.get("scrape_configs", []):
        path = job.get("metrics_path", "/metrics")
        for static in job.get("static_configs", []):
            for target in static.get("targets", []):
                host, _, port_text = str(target).rpartition(":")
                if host == "localhost" and int(port_text) == PROMETHEUS_PORT:
                    continue  # Prometheus itself
                if host not in services:
                    problems.append(f"job {job.get('job_name')}: target {target}: {host} is not a "
                                    "compose service")
                    continue
                endpoints = _listening(services[host])
                if int(port_text) not in endpoints:
                    problems.append(f"job {job.get('job_name')}: target {target}: {host} exports no metrics "
                                    f"on port {port_text} (it does on {sorted(endpoints) or 'none'})")
                elif endpoints[int(port_text)] != path:
                    problems.append(f"job {job.get('job_name')}: {host} answers its metrics at "
                                    f"{endpoints[int(port_text)]}, not {path}")
                scraped.add(host)
    for name, service in services.items():
        if _listening(service) and name not in scraped:
            problems.append(f"{name} exports metrics but Prometheus does not scrape it")
        if is_celery_worker(service) and not _listening(service):
            problems.append(f"{name}: a worker without POSTERGENRE_WORKER_METRICS_PORT exports no metrics")
    prometheus = services.get("prometheus", {})
    config_flag = command_flags(as_list(prometheus.get("command"))).get("config.file", "")
    mounts = compose_mounts(prometheus)
    if "observability" not in prometheus.get("profiles", []) or "observability" not in services.get(
            "grafana", {}).get("profiles", []):
        problems.append("prometheus and grafana belong to the `observability` profile")
    if (compose_path.parent / mounts.get(config_flag, "")).resolve() != config_path.resolve():
        problems.append(f"prometheus: --config.file={config_flag} is not a mount of {config_path.name}")
    grafana = compose_mounts(services.get("grafana", {}))
    if (compose_path.parent / grafana.get("/etc/grafana/provisioning", "")).resolve() != (
            config_path.parent / "grafana" / "provisioning").resolve():
        problems.append("grafana: /etc/grafana/provisioning is not docker/observability/grafana/provisioning")
    for source in sorted(DATASOURCES_DIR.glob("*.yaml")):
        for datasource in load_yaml(source).get("datasources", []):
            if datasource.get("url") != f"http://prometheus:{PROMETHEUS_PORT}":
                problems.append(f"{source.name}: datasource {datasource.get('name')} does not point at the "
                                f"compose prometheus (http://prometheus:{PROMETHEUS_PORT})")
    return problems
