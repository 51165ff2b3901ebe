"""The system as users deploy it: images built, compose.yaml started, the main job run through the
containers, then faults injected into containers, each with its outcome asserted.

The tests run in file order and share one stack (tests/stack/conftest.py): the pipeline first, then
the faults, then `compose down` / `up`. Run by `make stack-test`; see docs/deploy.md.
"""

from __future__ import annotations

import concurrent.futures
import csv
import functools
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared.queues import CRAWL_TASK, DATASET_TASK, TRAIN_TASK
from tests.deploy.observability import PROMETHEUS_CONFIG
from tests.stack.stack import POSTERS, Stack, StackError, poster_bytes, tool_environment

YEARS = "2014-2015"
IMAGE_SIZE = 32
DEADLINE_S = 10.0 + 5.0  # the web's inference deadline (POSTERGENRE_INFERENCE_TIMEOUT_S) and a margin


@dataclass
class Pipeline:
    dataset_id: str = ""
    poster: bytes = b""
    table: list[dict[str, Any]] = field(default_factory=list)


PIPELINE = Pipeline()


def a_real_poster() -> bytes:
    with (POSTERS / "labels.csv").open() as handle:
        row = next(r for r in csv.DictReader(handle) if r["year"] == YEARS[:4])
    return (POSTERS / "images" / f"{row['imdb_id']}.jpg").read_bytes()


def table_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return list(response.json()["years"])


def versions(stack: Stack, status: str = "blessed") -> list[dict[str, Any]]:
    """The registry's rows: the served ones by default, every version with ``status="all"``."""
    response = stack.get("/api/v1/models", params={"status": status})
    response.raise_for_status()
    return list(response.json()["models"])


def test_the_stack_starts_in_order_and_serves_the_page(started: Stack) -> None:
    stack = started
    migrate = stack.compose("ps", "--all", "--format", "{{.Service}} {{.State}} {{.ExitCode}}").stdout
    states = dict(line.split(" ", 1) for line in migrate.splitlines() if line)
    for one_shot in ("migrate", "minio-init", "models-init"):
        assert states[one_shot].startswith("exited 0"), states
    # Health checks run every 10 to 30 s: the last ones turn healthy after /readyz answers.
    for service in ("postgres", "redis", "cache", "minio", "tfserving", "web", "dataset-worker", "crawler",
                    "trainer-cpu", "prometheus"):
        stack.wait_until(f"{service} healthy", functools.partial(stack.is_healthy, service), timeout=120)
    page = stack.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    # TF.js of the in-browser mode is in the web image.
    tfjs = stack.get("/static/vendor/tf.min.js")
    assert tfjs.status_code == 200 and len(tfjs.content) > 500_000


def test_import_build_train_and_predict_through_the_containers(started: Stack) -> None:
    stack = started
    start = time.monotonic()
    out = stack.cli("import", "--from", "/data", "--years", YEARS, volumes=[f"{POSTERS}:/data:ro"])
    stack.timings["import"] = time.monotonic() - start
    assert "imported" in out, out
    out = stack.cli("dataset", "build", "--years", YEARS, "--window", "year", "--min-posters", "30",
                    "--image-size", str(IMAGE_SIZE), "--seed", "0")
    PIPELINE.dataset_id = out.strip().splitlines()[-1].split()[-1]
    stack.timings["dataset build"] = time.monotonic() - start - stack.timings["import"]
    # Training runs in the trainer-cpu container: `train` sends the task through Redis and follows it.
    out = stack.cli("train", "--dataset", PIPELINE.dataset_id, "--years", YEARS, "--layout", "shared",
                    "--arch", "smallcnn", "--weights", "none", "--resolution", str(IMAGE_SIZE),
                    "--batch-size", "32", "--epochs", "3", "--formats", "savedmodel,tflite", timeout=900)
    blessed = [m for m in versions(stack) if m["status"] == "blessed"]
    assert blessed, (out, versions(stack))
    PIPELINE.poster = a_real_poster()

    # The model-sync service saw the blessing and wrote models.config on the shared volume; the
    # inference container loads it.
    def answers() -> bool:
        response = stack.predict(PIPELINE.poster, YEARS)
        return response.status_code == 200 and len(response.json()["years"]) == 2

    stack.wait_until("a prediction from the new model", answers, timeout=120, every=0.5)
    stack.timings["pipeline: import to the first table"] = time.monotonic() - start
    PIPELINE.table = table_of(stack.predict(PIPELINE.poster, YEARS))
    assert [row["year"] for row in PIPELINE.table] == [2014, 2015]
    assert all(len(row["top"]) == 6 for row in PIPELINE.table)


def test_the_admin_api_starts_a_job_and_reports_its_progress(started: Stack) -> None:
    stack = started
    response = stack.post("/api/v1/admin/datasets", headers=stack.admin_headers,
                          json={"years": YEARS, "window": "decade", "image_size": IMAGE_SIZE,
                                "min_posters": 30})
    assert response.status_code == 202, response.text
    seen: list[dict[str, Any]] = []
    final = stack.wait_job(response.json()["job_id"], timeout=300, seen=seen)
    assert final["state"] == "SUCCESS", final
    assert final["progress"] == pytest.approx(100.0)  # percent
    assert {info["state"] for info in seen} - {"SUCCESS"}, "no intermediate state was reported"


# What each scrape job of docker/observability/prometheus.yml must have sampled once the pipeline, the
# admin job above and the test's crawl have run: promised families per service (PromQL selectors, the
# job's label added). The tfserving job scrapes the project's protocol-compatible server in this test
# (compose.override.yaml), hence its names and not TF Serving's own. The crawler exports task counts
# only once it has run a task (its queue length only while messages wait), hence the test's crawl.
SCRAPED_FAMILIES = {
    "web": ["postergenre_http_requests_total", "postergenre_predictions_total", "process_cpu_seconds_total"],
    "tfserving": ["postergenre_inference_requests_total", "postergenre_inference_batch_size_count"],
    "dataset-worker": [f'postergenre_celery_tasks_total{{task="{DATASET_TASK}",state="SUCCESS"}}',
                       "postergenre_dataset_builds_total"],
    "trainer": [f'postergenre_celery_tasks_total{{task="{TRAIN_TASK}",state="SUCCESS"}}'],
    "crawler": [f'postergenre_celery_tasks_total{{task="{CRAWL_TASK}",state="FAILURE"}}'],
    "prometheus": ["prometheus_build_info"],
}


def with_job(selector: str, job: str) -> str:
    name, _, labels = selector.partition("{")
    return f'{name}{{job="{job}",{labels}' if labels else f'{name}{{job="{job}"}}'


def test_prometheus_scrapes_every_running_service_and_their_metrics(started: Stack) -> None:
    """The `observability` profile's Prometheus with the repository's prometheus.yml: every target of
    a running service is up (a service outside the started profiles is down, not an error), and each
    job has samples of the families its service promises."""
    stack = started
    start = time.monotonic()
    # The stack has no TMDB credentials: a crawl fails its job with the reason, in the crawler.
    response = stack.post("/api/v1/admin/crawls", headers=stack.admin_headers,
                          json={"years": YEARS, "max_movies_per_year": 1})
    assert response.status_code == 202, response.text
    crawl = stack.wait_job(response.json()["job_id"], timeout=120)
    assert crawl["state"] == "FAILURE" and any("no TMDB credentials" in e for e in crawl["errors"]), crawl
    running = set(stack.compose("ps", "--services", "--status", "running").stdout.split())
    assert "prometheus" in running
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {(job["job_name"], target) for job in config["scrape_configs"]
               for static in job["static_configs"] for target in static["targets"]}
    # localhost is Prometheus itself; trainer (the gpu profile) is the one target not started here.
    expected_up = {key for key in targets if key[1].rpartition(":")[0] in running | {"localhost"}}
    assert {target for _, target in targets - expected_up} == {"trainer:9808"}, targets - expected_up
    up: dict[tuple[str, str], str] = {}

    def every_running_target_up() -> bool:
        up.clear()
        for sample in stack.prometheus("/api/v1/query", query="up")["result"]:
            up[(sample["metric"]["job"], sample["metric"]["instance"])] = sample["value"][1]
        return all(up.get(key) == "1" for key in expected_up)

    stack.wait_until("every running target up in Prometheus", every_running_target_up, timeout=90)
    assert {key: value for key, value in up.items() if key not in expected_up} == {
        key: "0" for key in targets - expected_up}
    active = stack.prometheus("/api/v1/targets", state="active")["activeTargets"]
    health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in active}
    assert {key for key, state in health.items() if state == "up"} == expected_up, health
    missing: list[str] = []

    def every_family_sampled() -> bool:
        missing[:] = [with_job(selector, job) for job, selectors in SCRAPED_FAMILIES.items()
                      for selector in selectors
                      if not stack.prometheus("/api/v1/query", query=with_job(selector, job))["result"]]
        return not missing

    try:  # a counter counted just now shows after the next scrape (every 15 s)
        stack.wait_until("the promised families in Prometheus", every_family_sampled, timeout=60)
    except StackError:
        pytest.fail(f"no samples in Prometheus for {missing}")
    stack.timings["prometheus: every running target up and sampled"] = time.monotonic() - start


def test_inference_killed_during_a_request_stream(started: Stack) -> None:
    """503 within the deadline while the container is down, answers again once it is restarted."""
    stack = started
    outcomes: list[tuple[float, int, float]] = []  # (start offset, status, seconds)
    start = time.monotonic()
    stop_at = start + 150

    def stream() -> None:
        seed = 0
        recovered_after_kill = False
        while time.monotonic() < stop_at and not recovered_after_kill:
            seed += 1
            t0 = time.monotonic()
            try:
                status = stack.predict(poster_bytes(seed), YEARS, timeout=DEADLINE_S + 30).status_code
            except httpx.HTTPError:
                status = -1
            outcomes.append((t0 - start, status, time.monotonic() - t0))
            recovered_after_kill = status == 200 and any(s == 503 for _, s, _ in outcomes)
            time.sleep(0.2)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(stream)
        time.sleep(3)
        restarts = stack.inspect("tfserving")["RestartCount"]
        stack.crash("tfserving")
        future.result()
    statuses = [status for _, status, _ in outcomes]
    failing = [offset for offset, status, _ in outcomes if status != 200]
    stack.timings["inference crash: seconds without an answer"] = failing[-1] - failing[0] if failing else 0.0
    assert 503 in statuses, outcomes
    assert statuses[-1] == 200, f"no answer after the restart: {outcomes}"
    assert set(statuses) <= {200, 503}, outcomes
    assert max(seconds for _, _, seconds in outcomes) <= DEADLINE_S, outcomes
    assert stack.inspect("tfserving")["RestartCount"] == restarts + 1


def test_a_killed_trainer_container_resumes_from_its_checkpoint(started: Stack) -> None:
    """The task is redelivered after the broker's visibility timeout and resumes; one version."""
    stack = started
    before = {(m["name"], m["version"]) for m in versions(stack, "all")}
    response = stack.post("/api/v1/admin/trainings", headers=stack.admin_headers,
                          json={"dataset": PIPELINE.dataset_id, "years": YEARS, "layout": "shared",
                                "epochs": 12, "formats": ["savedmodel", "tflite"]})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    def past_epoch_two() -> bool:
        counts = stack.job(job_id)["counts"]
        return int(counts.get("epoch", 0)) >= 3

    stack.wait_until("training past its second epoch", past_epoch_two, timeout=300, every=1)
    restarts = stack.inspect("trainer-cpu")["RestartCount"]
    killed_at = time.monotonic()
    stack.crash("trainer-cpu")
    stack.wait_until("trainer-cpu restarted", lambda: stack.inspect("trainer-cpu")["RestartCount"] > restarts,
                     timeout=60)
    seen: list[dict[str, Any]] = []
    final = stack.wait_job(job_id, timeout=900, seen=seen)
    stack.timings["trainer crash: kill to the job's success"] = time.monotonic() - killed_at
    assert final["state"] == "SUCCESS", final
    assert any(int(info["counts"].get("resumed_from_epoch", 0)) >= 2 for info in seen), seen[-5:]
    # One version whether or not it was good enough to be blessed (it may not beat the first).
    new = {(m["name"], m["version"]) for m in versions(stack, "all")} - before
    assert len(new) == 1, new


def test_a_task_queued_across_a_redis_restart_still_runs(started: Stack) -> None:
    stack = started
    stack.compose("stop", "dataset-worker")
    try:
        response = stack.post("/api/v1/admin/datasets", headers=stack.admin_headers,
                              json={"years": YEARS, "window": "year", "image_size": IMAGE_SIZE, "seed": 7,
                                    "min_posters": 30})
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        stack.compose("restart", "redis")
        stack.wait_until("redis healthy", lambda: stack.health("redis") == "healthy", timeout=90)
    finally:
        stack.compose("start", "dataset-worker")
    final = stack.wait_job(job_id, timeout=300)
    assert final["state"] == "SUCCESS", final


def test_postgres_restart_is_a_503_gap_then_recovery_without_restarting_web(started: Stack) -> None:
    """What needs the database answers 503 while it is down (never a 500), and everything answers
    again once it is back, without restarting web."""
    stack = started
    web_started = stack.inspect("web")["State"]["StartedAt"]
    predictions: list[int] = []
    stop = threading.Event()

    def stream() -> None:  # predictions throughout: only ever 200 or 503
        seed = 10_000
        while not stop.is_set():
            seed += 1
            try:
                response = stack.predict(poster_bytes(seed), YEARS, timeout=DEADLINE_S + 30)
                predictions.append(response.status_code)
            except httpx.HTTPError:
                predictions.append(-1)
            time.sleep(0.3)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(stream)
        try:
            time.sleep(2)
            stack.compose("stop", "--timeout", "10", "postgres")
            stack.wait_until("/readyz saying the database is gone",
                             lambda: stack.get("/readyz", timeout=20).status_code == 503,
                             timeout=60, every=0.5)
            registry = stack.get("/api/v1/models", timeout=20)  # a read of the registry, in the gap
            time.sleep(5)
            stack.compose("start", "postgres")
            stack.timings["postgres restart: start to /readyz"] = stack.wait_until(
                "ready again", stack.ready, timeout=90, every=0.5)
            time.sleep(3)
        finally:
            stop.set()
            future.result()
    assert registry.status_code == 503, registry.text
    assert set(predictions) <= {200, 503}, predictions
    assert predictions[-1] == 200, predictions
    assert stack.get("/api/v1/models").status_code == 200
    assert stack.inspect("web")["State"]["StartedAt"] == web_started
    stack.timings["postgres restart: 503 answers to predictions"] = float(predictions.count(503))


def test_a_port_in_use_stops_web_with_the_message_and_no_restart_loop(started: Stack) -> None:
    """A stack that cannot start says why and stays down; it does not restart in a loop."""
    stack = started
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = stack.compose("up", "--detach", "--no-build", "web", check=False,
                               env={"WEB_PUBLISH": f"127.0.0.1:{port}"})
        assert result.returncode != 0
        assert "address already in use" in result.stderr.lower(), result.stderr[-2000:]
        time.sleep(10)
        state = stack.inspect("web")
        assert state["State"]["Status"] != "running" and state["RestartCount"] == 0, state["State"]
    stack.compose("up", "--detach", "--no-build", "web")
    stack.wait_until("web back on its own port", stack.ready, timeout=180)


def test_a_missing_secret_refuses_compose_up_with_the_message(tmp_path: Path) -> None:
    """compose.yaml's required secrets: nothing starts, and the message names what to set."""
    unset = Stack(project_dir=tmp_path / "no-secret", name="postergenre-stacktest-nosecret")
    unset.write_env()
    env_file = unset.project_dir / ".env"
    env_file.write_text("".join(line + "\n" for line in env_file.read_text().splitlines()
                                if not line.startswith("POSTGRES_PASSWORD=")))
    result = unset.compose("up", "--detach", "--no-build", check=False)
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr, result.stderr[-2000:]
    created = subprocess.run(["docker", "ps", "--all", "--quiet", "--filter",
                              f"label=com.docker.compose.project={unset.name}"],
                             capture_output=True, text=True, check=True, env=tool_environment()).stdout
    assert created.strip() == ""


def test_down_then_up_keeps_posters_datasets_models_and_the_answer(started: Stack) -> None:
    stack = started
    before = table_of(stack.predict(PIPELINE.poster, YEARS))  # the model served now (retrained above)
    models = sorted((m["name"], m["version"], m["status"]) for m in versions(stack, "all"))
    datasets = stack.get("/api/v1/admin/datasets", headers=stack.admin_headers).json()
    start = time.monotonic()
    stack.compose("down", "--timeout", "30")
    result = stack.compose("up", "--detach", "--no-build", check=False, timeout=600)
    if result.returncode != 0:
        raise StackError(f"compose up failed:\n{result.stderr[-4000:]}")
    stack.wait_until("the web service ready", stack.ready, timeout=300, every=0.5)
    stack.timings["compose down, then up to /readyz"] = time.monotonic() - start
    assert sorted((m["name"], m["version"], m["status"]) for m in versions(stack, "all")) == models
    assert stack.get("/api/v1/admin/datasets", headers=stack.admin_headers).json() == datasets
    stack.wait_until("the served model back",
                     lambda: stack.predict(PIPELINE.poster, YEARS).status_code == 200, timeout=120)
    again = table_of(stack.predict(PIPELINE.poster, YEARS))
    assert [(r["year"], [g["genre"] for g in r["top"]]) for r in again] == \
        [(r["year"], [g["genre"] for g in r["top"]]) for r in before]
    for new_row, old_row in zip(again, before, strict=True):
        for new, old in zip(new_row["top"], old_row["top"], strict=True):
            assert new["score"] == pytest.approx(old["score"], abs=1e-4)
