"""Admin jobs run in embedded mode: ``postergenre serve web`` starts a worker child for the embedded
queues, which stops with it (even when the server is killed); a job waiting on a queue without a
worker gets a ``warning`` naming the queue and how to start a worker."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.web.consumers import CACHE_S, PENDING_WARNING_S, QueueConsumers, add_warnings
from shared.celery_app import workers_dir
from shared.config import Settings
from tests.conftest import ENV_PREFIX, write_poster_folder

REPO = Path(__file__).resolve().parents[3]
TOKEN = "embedded-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def live_processes() -> dict[int, int]:
    """pid -> parent pid of every process that is not a zombie."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # the name may hold spaces and parentheses
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> set[int]:
    parents = live_processes()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def run_cli(env: dict[str, str], *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def wait_for_jobs(client: httpx.Client, job_ids: list[str], timeout_s: float,
                  log: Path) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [client.get(f"/api/v1/admin/jobs/{job_id}").json() for job_id in job_ids]
        assert not [job for job in jobs if job["state"] == "FAILURE"], jobs
        if all(job["state"] == "SUCCESS" for job in jobs):
            return jobs
        assert time.monotonic() < deadline, f"jobs unfinished: {jobs}\n{log.read_text()[-4000:]}"
        time.sleep(1.0)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="reads /proc; the worker's death signal is Linux's")
def test_serve_web_runs_admin_jobs_on_its_worker_child_which_dies_with_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)}
    env.update({"POSTERGENRE_HOME": str(home), "POSTERGENRE_ADMIN_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1",
                "CUDA_VISIBLE_DEVICES": ""})
    genres = ["Drama", "Comedy", "Action|Thriller", "Drama|Romance", "Horror", "Comedy|Romance"]
    rows = [(f"tt{2000000 + i:07d}", 2000 + i % 2, f"Movie {i}", genres[i % 6]) for i in range(24)]
    folder = write_poster_folder(tmp_path / "posters", rows)
    run_cli(env, "db", "upgrade")
    run_cli(env, "import", "--from", str(folder))

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "web", "--port", str(port),
             "--log-level", "warning"],
            cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    worker_tree: set[int] = set()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30.0) as client:
            deadline = time.monotonic() + 90
            while True:
                assert server.poll() is None, log.read_text()
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)

            started = client.post("/api/v1/admin/datasets", json={
                "years": "2000-2001", "min_posters": 5, "image_size": 16})
            assert started.status_code == 202, started.text
            [dataset] = wait_for_jobs(client, [started.json()["job_id"]], 120, log)
            assert dataset["warning"] is None
            dataset_id = dataset["result"]["dataset_id"]

            started = client.post("/api/v1/admin/trainings", json={
                "dataset": dataset_id, "years": "2000-2001", "layout": "shared", "arch": "smallcnn",
                "epochs": 1, "formats": ["savedmodel"]})
            assert started.status_code == 202, started.text
            [training] = wait_for_jobs(client, started.json()["job_ids"], 150, log)
            assert training["kind"] == "train" and training["warning"] is None

            # The worker is the server's child: one announcement, its pid among the server's descendants.
            worker_tree = descendants(server.pid)
            announced = [json.loads(p.read_text()) for p in workers_dir(Settings(home=home)).glob("*.json")]
            assert [info["pid"] for info in announced] and {a["pid"] for a in announced} <= worker_tree
            assert set(announced[0]["queues"]) == {"gpu", "crawl", "dataset"}
            assert (home / "celery" / "embedded-worker.heartbeat").is_file()
    finally:
        server.send_signal(signal.SIGKILL)  # no chance to stop its child: the death signal must
        server.wait(timeout=30)
    assert worker_tree
    deadline = time.monotonic() + 60
    while remaining := worker_tree & set(live_processes()):
        assert time.monotonic() < deadline, f"worker processes {remaining} outlived the killed server"
        time.sleep(0.5)


class FakeControl:
    def __init__(self, replies: dict[str, list[dict[str, Any]]] | Exception) -> None:
        self.replies = replies
        self.calls = 0

    def inspect(self, timeout: float) -> FakeControl:
        return self

    def active_queues(self) -> dict[str, list[dict[str, Any]]] | None:
        self.calls += 1
        if isinstance(self.replies, Exception):
            raise self.replies
        return self.replies


class FakeCelery:
    def __init__(self, control: FakeControl) -> None:
        self.control = control


def job(kind: str, state: str = "PENDING", age_s: float = PENDING_WARNING_S + 5) -> dict[str, Any]:
    created = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_s)
    return {"id": f"{kind}-{state}-{age_s}", "kind": kind, "state": state,
            "created_at": created.replace(tzinfo=None).isoformat()}  # as SQLite gives it: naive UTC


def stack_consumers(control: FakeControl, clock: list[float]) -> QueueConsumers:
    settings = Settings(home=Path("/nonexistent"), broker_url="redis://127.0.0.1:1/0")
    return QueueConsumers(settings, lambda: FakeCelery(control), clock=lambda: clock[0])  # type: ignore[arg-type,return-value]


def test_stack_mode_warns_about_a_job_whose_queue_no_worker_consumes() -> None:
    control = FakeControl({"trainer@a": [{"name": "gpu"}], "crawler@b": [{"name": "crawl"}]})
    clock = [0.0]
    consumers = stack_consumers(control, clock)
    jobs = add_warnings([job("dataset"), job("train"), job("crawl"), job("dataset", age_s=1),
                         job("dataset", state="STARTED")], consumers)
    warnings = [j["warning"] for j in jobs]
    assert warnings[0] is not None and "'dataset' queue" in warnings[0]
    assert "postergenre worker --queues dataset" in warnings[0] and "--no-worker" not in warnings[0]
    assert warnings[1:] == [None, None, None, None]
    # Polling again within the cache time asks the workers no more; after it, once more.
    add_warnings([job("dataset")], consumers)
    assert control.calls == 1
    clock[0] += CACHE_S
    add_warnings([job("dataset")], consumers)
    assert control.calls == 2
    # Nothing waits long enough: nobody is asked.
    add_warnings([job("dataset", age_s=1)], consumers)
    clock[0] += CACHE_S
    add_warnings([job("dataset", age_s=1), job("train", state="SUCCESS")], consumers)
    assert control.calls == 2


def test_stack_mode_without_an_answer_from_the_broker_warns_nothing() -> None:
    consumers = stack_consumers(FakeControl(ConnectionError("broker down")), [0.0])
    assert add_warnings([job("dataset")], consumers)[0]["warning"] is None
    no_worker = stack_consumers(FakeControl({}), [0.0])  # no worker answered at all
    assert "'dataset' queue" in str(add_warnings([job("dataset")], no_worker)[0]["warning"])


def test_embedded_mode_reads_the_local_workers_announcements(settings: Settings) -> None:
    folder = workers_dir(settings)
    folder.mkdir(parents=True)
    (folder / f"{os.getpid()}.json").write_text(json.dumps({"pid": os.getpid(), "queues": ["dataset"]}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (folder / f"{dead}.json").write_text(json.dumps({"pid": int(dead), "queues": ["gpu"]}))
    consumers = QueueConsumers(settings, lambda: pytest.fail("no broadcast in embedded mode"))
    dataset, train = add_warnings([job("dataset"), job("train")], consumers)
    assert dataset["warning"] is None
    assert "'gpu' queue" in train["warning"] and "postergenre worker --queues gpu" in train["warning"]
    assert "without --no-worker" in train["warning"]
    assert not (folder / f"{dead}.json").exists()  # a dead worker's announcement is dropped
