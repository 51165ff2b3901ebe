"""The compose `observability` profile, offline: the dashboard's queries name exported metrics only,
and Prometheus' targets are the compose services on the ports and paths they serve metrics on. The
k8s prod overlay's ServiceMonitors and PodMonitor: the Prometheus Operator's CRD schemas, and every
pod that serves metrics scraped once, where it serves them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.checks.compose import COMPOSE_FILE
from tests.deploy.checks.k8s_objects import K8S_DIR, render_overlay
from tests.deploy.monitors import check_monitor_schemas, check_monitor_semantics
from tests.deploy.observability import (
    DASHBOARDS_DIR,
    PROMETHEUS_CONFIG,
    TFSERVING_BATCHING_HISTOGRAMS,
    check_dashboard,
    check_prometheus_config,
    exported_names,
    promql_metric_names,
)


def test_every_dashboard_asks_only_for_exported_metrics() -> None:
    dashboards = sorted(DASHBOARDS_DIR.glob("*.json"))
    assert dashboards
    exported = exported_names()
    for path in dashboards:
        assert check_dashboard(path, exported) == []


def test_the_dashboard_shows_the_prediction_path_and_the_training_queue() -> None:
    dashboard = json.loads((DASHBOARDS_DIR / "postergenre.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel.get("targets", [])
               for name in promql_metric_names(target["expr"])}
    for name in ("postergenre_http_requests_total", "postergenre_http_request_duration_seconds_bucket",
                 "postergenre_errors_total", "postergenre_inference_batch_size_sum",
                 "postergenre_celery_queue_length", "postergenre_celery_tasks_running",
                 "postergenre_celery_task_duration_seconds_bucket"):
        assert name in queried, name


def test_the_batching_panels_read_the_embedded_server_and_tf_serving() -> None:
    """Batch size and queue wait come from whichever inference server runs: the embedded server's
    names and TF Serving's own batching histograms, side by side in each panel."""
    dashboard = json.loads((DASHBOARDS_DIR / "postergenre.json").read_text())
    for title, ours, theirs in (
            ("Batch size", "postergenre_inference_batch_size_bucket", TFSERVING_BATCHING_HISTOGRAMS[1]),
            ("Batch queue wait p95", "postergenre_inference_queue_wait_seconds_bucket",
             TFSERVING_BATCHING_HISTOGRAMS[0])):
        panel = next(p for p in dashboard["panels"] if p.get("title") == title)
        queried = {name for target in panel["targets"] for name in promql_metric_names(target["expr"])}
        assert {ours, theirs + "_bucket"} <= queried, (title, queried)


def test_prometheus_scrapes_every_service_where_it_serves_metrics() -> None:
    assert check_prometheus_config() == []


def test_promql_names_are_read_without_labels_functions_or_ranges() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(postergenre_x_bucket{route=~"/a.*",'
            'le!="1"}[$__rate_interval]))) / on (job) group_left sum(up offset 5m) or vector(0)')
    assert promql_metric_names(expr) == {"postergenre_x_bucket", "up"}


def test_a_dashboard_asking_for_an_unexported_metric_is_caught(tmp_path: Path) -> None:
    dashboard = json.loads((DASHBOARDS_DIR / "postergenre.json").read_text())
    dashboard["panels"][1]["targets"][0]["expr"] = "rate(postergenre_http_requests_count[5m])"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(dashboard))
    problems = check_dashboard(path)
    assert len(problems) == 1 and "postergenre_http_requests_count" in problems[0]
    path.write_text("{not json")
    assert "is not JSON" in check_dashboard(path)[0]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('"web:8000"', '"web:8080"', "web exports no metrics on port 8080"),
    ('"crawler:9808"', '"crawl-worker:9808"', "crawl-worker is not a compose service"),
    ("metrics_path: /monitoring/prometheus/metrics", "metrics_path: /metrics",
     "tfserving answers its metrics at /monitoring/prometheus/metrics, not /metrics"),
    ('      - targets: ["dataset-worker:9808"]', '      - targets: []',
     "dataset-worker exports metrics but Prometheus does not scrape it"),
])
def test_a_prometheus_config_missing_a_service_is_caught(tmp_path: Path, old: str, new: str,
                                                          expected: str) -> None:
    text = PROMETHEUS_CONFIG.read_text()
    assert old in text
    broken = tmp_path / "docker" / "observability" / "prometheus.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text.replace(old, new))
    compose = tmp_path / "compose.yaml"
    compose.write_text(COMPOSE_FILE.read_text())
    problems = check_prometheus_config(compose, broken)
    assert any(expected in problem for problem in problems), problems


@pytest.fixture(scope="module")
def prod() -> list[dict[str, Any]]:
    return render_overlay(K8S_DIR / "overlays" / "prod")


def _monitor(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_prod_monitors_match_the_prometheus_operators_crd_schemas(prod: list[dict[str, Any]]) -> None:
    monitors = {(d["kind"], d["metadata"]["name"]) for d in prod if d["apiVersion"].startswith("monitoring.")}
    assert monitors == {("ServiceMonitor", "web"), ("ServiceMonitor", "tfserving"), ("PodMonitor", "workers")}
    assert check_monitor_schemas(prod) == []


def test_every_pod_serving_metrics_is_scraped_once_where_it_serves_them(prod: list[dict[str, Any]]) -> None:
    assert check_monitor_semantics(prod) == []
    # The dev overlay has no operator: its pods' annotations are enough there, and nothing is missing.
    assert check_monitor_semantics(render_overlay(K8S_DIR / "overlays" / "dev")) == []


def test_a_monitor_breaking_the_crd_schema_is_caught(prod: list[dict[str, Any]]) -> None:
    docs = copy.deepcopy(prod)
    web = _monitor(docs, "ServiceMonitor", "web")
    web["spec"]["endpoints"][0]["scrapeInterval"] = "30s"  # a typo the operator's API would prune
    web["spec"]["endpoints"][0]["scheme"] = "ftp"
    _monitor(docs, "PodMonitor", "workers")["spec"].pop("selector")
    problems = check_monitor_schemas(docs)
    typo = "ServiceMonitor/web: unknown field /spec/endpoints/0/scrapeInterval"
    assert any(typo in p for p in problems), problems
    assert any("ServiceMonitor/web: 'ftp' is not one of" in p for p in problems), problems
    assert any("PodMonitor/workers: 'selector' is a required property" in p for p in problems), problems


@pytest.mark.parametrize(("kind", "name", "change", "expected"), [
    ("ServiceMonitor", "web", lambda m: m["spec"]["endpoints"][0].update(path="/metrics/"),
     "ServiceMonitor/web: scrapes Deployment/web at :8000/metrics/, but its pods serve metrics at "
     ":8000/metrics"),
    ("ServiceMonitor", "tfserving", lambda m: m["spec"]["endpoints"][0].update(port="grpc"),
     "ServiceMonitor/tfserving: scrapes Deployment/tfserving at :8500/monitoring/prometheus/metrics"),
    ("ServiceMonitor", "tfserving", lambda m: m["spec"]["endpoints"][0].update(port="metrics"),
     "ServiceMonitor/tfserving: endpoint 0 (port metrics) reaches no pod"),
    ("PodMonitor", "workers", lambda m: m["spec"]["selector"]["matchLabels"].update(
        {"app.kubernetes.io/component": "workers"}),
     "Deployment/trainer serves metrics but no ServiceMonitor"),
    ("PodMonitor", "workers", lambda m: m["spec"].update(selector={}),
     "PodMonitor/workers: scrapes Job/migrate, whose pods announce no metrics"),
    ("ServiceMonitor", "web", lambda m: m["spec"].update(namespaceSelector={"any": True}),
     "a namespaceSelector would scrape other namespaces"),
])
def test_a_monitor_missing_its_pods_or_their_port_is_caught(prod: list[dict[str, Any]], kind: str, name: str,
                                                             change: Any, expected: str) -> None:
    docs = copy.deepcopy(prod)
    change(_monitor(docs, kind, name))
    problems = check_monitor_semantics(docs)
    assert any(expected in problem for problem in problems), problems


def test_a_pod_scraped_twice_is_caught(prod: list[dict[str, Any]]) -> None:
    docs = copy.deepcopy(prod)
    again = copy.deepcopy(_monitor(docs, "PodMonitor", "workers"))
    again["metadata"]["name"] = "crawler"
    again["spec"]["selector"] = {"matchExpressions": [
        {"key": "app.kubernetes.io/name", "operator": "In", "values": ["crawler"]}]}
    docs.append(again)
    assert "Deployment/crawler is scraped 2 times: PodMonitor/crawler, PodMonitor/workers" in \
        check_monitor_semantics(docs)
