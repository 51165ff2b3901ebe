"""The compose `observability` profile, offline: the dashboard's queries name exported metrics only,
and Prometheus' targets are the compose services on the ports and paths they serve metrics on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.deploy.checks.compose import COMPOSE_FILE
from tests.deploy.observability import (
    DASHBOARDS_DIR,
    PROMETHEUS_CONFIG,
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
