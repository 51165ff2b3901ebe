"""The web process imports no training code: no Keras, no tensorflow.keras (issue 14).

The admin API validates requests with plain schemas (shared.hyperparameters), sends tasks by name
(shared.queues) and rolls back through shared.registry. The app is built and its admin routes run in
a fresh interpreter, without the lifespan's inference connection: the gRPC client's TF Serving protos
(tensorflow_serving.apis) import ``tensorflow``, whose ``__init__`` itself imports Keras, so a process
that talks to the inference server still loads Keras until the client stops depending on those protos
(the remaining work of issue 14).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[3]
PROBE = """
import sys
from fastapi.testclient import TestClient
from services.web.app import create_app

client = TestClient(create_app())  # no `with`: no lifespan, so no inference connection
auth = {"Authorization": "Bearer a-test-token-long-enough"}
assert client.get("/healthz").status_code == 200
assert client.get("/api/v1/models").status_code == 200
# The training route imports what it needs to plan tasks before it finds the dataset missing.
answer = client.post("/api/v1/admin/trainings", json={"dataset": "missing", "years": "2000"}, headers=auth)
assert answer.status_code == 422, answer.text
assert client.post("/api/v1/admin/models/genre-2000/rollback", json={}, headers=auth).status_code == 404
loaded = sorted(name for name in sys.modules
                if name in ("keras", "tensorflow", "tensorflow.keras") or name.startswith("keras."))
print("LOADED", loaded)
"""


def test_the_web_app_and_its_admin_routes_import_no_keras(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("POSTERGENRE_")},
           "POSTERGENRE_HOME": str(tmp_path / "home"), "POSTERGENRE_ADMIN_TOKEN": "a-test-token-long-enough"}
    subprocess.run([sys.executable, "-m", "services.cli", "db", "upgrade"], env=env, check=True,
                   capture_output=True, cwd=ROOT)
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED []" in result.stdout, result.stdout
