"""The foundation path end to end, as a user runs it, in embedded mode:

import -> dataset build -> train (through a real Celery worker on the filesystem broker)
-> web service with the embedded inference server over real gRPC -> POST /api/v1/predictions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_poster
from tests.servers import free_port, wait_for_port


def postergenre(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    result = subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"postergenre {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_import_dataset_train_serve_predict(tmp_path: Path, poster_folder: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTERGENRE_")}
    env["POSTERGENRE_HOME"] = str(tmp_path / "home")
    env["PYTHONUNBUFFERED"] = "1"
    postergenre(env, "import", "--from", str(poster_folder), "--quiet")
    out = postergenre(env, "dataset", "build", "--years", "2000-2001", "--window", "year",
                      "--min-posters", "5", "--image-size", "32", "--seed", "1")
    dataset_id = out.strip().splitlines()[-1].split()[-1]
    postergenre(env, "train", "--dataset", dataset_id, "--years", "2000-2001", "--layout", "independent",
                "--arch", "smallcnn", "--weights", "none", "--epochs", "1", "--formats", "savedmodel")
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "web", "--host", "127.0.0.1",
                            "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    try:
        wait_for_port("127.0.0.1", port, timeout=120, proc=web)
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{port}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "web service never became ready"
            time.sleep(0.5)
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200
        assert 'type="file"' in page.text
        poster = make_poster(99, size=(80, 120))
        response = httpx.post(f"http://127.0.0.1:{port}/api/v1/predictions",
                              files={"file": ("poster.jpg", poster, "image/jpeg")},
                              params={"years": "2000-2002"}, timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"poster_sha256", "k", "years", "unavailable_years", "departures", "warnings"}
        assert body["k"] == 6
        assert [row["year"] for row in body["years"]] == [2000, 2001]
        assert body["unavailable_years"] == [2002]
        for row in body["years"]:
            assert row["model"] == f"genre-{row['year']}" and row["version"] == 1
            scores = [entry["score"] for entry in row["top"]]
            assert 1 <= len(scores) <= 6 and scores == sorted(scores, reverse=True)
            assert all(0.0 <= s <= 1.0 for s in scores)
            # The training recorded its validation thresholds: every genre says whether it is likely.
            assert row["has_thresholds"] is True and all(isinstance(e["likely"], bool) for e in row["top"])
    finally:
        web.terminate()
        web.wait(timeout=30)
