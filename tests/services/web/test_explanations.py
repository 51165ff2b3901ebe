"""``POST /api/v1/explanations`` on the real stack: Grad-CAM answered by the embedded gRPC server from
models exported by the trainer, and every bad input refused by name with the predictions' error shape."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from shared.images import poster_pixels, sha256_hex
from tests import servers
from tests.conftest import make_poster
from tests.services.inference.explainable import (
    EXPLAIN_GENRES,
    ExplainableModel,
    build_explainable_model,
    reference_grad_cam,
)
from tests.services.web.conftest import register_models, stack_settings_for, wait_until_ready
from tests.services.web.tiny_models import TinyModel, build_tiny_model

API = "/api/v1/explanations"


@pytest.fixture(scope="module")
def explain_stack(tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str, redis_url: str,
                  s3_endpoint: str) -> Iterator[tuple[TestClient, dict[str, ExplainableModel | TinyModel]]]:
    """genre-2000 (one year) and genre-shared (2002-2003) with explanations; genre-2001, a model
    exported before explanations existed (no ``explain`` signature)."""
    from services.embedded import create_app

    root = tmp_path_factory.mktemp("explain-models")
    models: list[ExplainableModel | TinyModel] = [
        build_explainable_model(root, "genre-2000", 1, seed=21),
        build_explainable_model(root, "genre-shared", 1, seed=22, years=[2002, 2003]),
        build_tiny_model(root, "genre-2001", 1, 32, seed=23, genres=EXPLAIN_GENRES),
    ]
    home = tmp_path_factory.mktemp("explain-home")
    database_url = servers.create_database(postgres_admin_url, prefix="explaintest")
    bucket = f"explain-{uuid.uuid4().hex[:12]}"
    settings = stack_settings_for(home, database_url, redis_url, s3_endpoint, bucket,
                                  max_upload_bytes=200_000)
    register_models(settings, models, retired=set())
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            wait_until_ready(client)
            yield client, {model.name: model for model in models}
    finally:
        servers.drop_database(postgres_admin_url, database_url)


def explain(client: TestClient, data: bytes, **form: Any) -> httpx.Response:
    return client.post(API, files={"file": ("poster.jpg", data, "image/jpeg")},
                       data={key: str(value) for key, value in form.items()})


def decode_overlay(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


@pytest.mark.parametrize(("year", "name", "head"), [(2000, "genre-2000", 0), (2003, "genre-shared", 1)])
def test_one_genre_is_explained_as_keras_computes_it(explain_stack, year, name, head):
    client, models = explain_stack
    model = models[name]
    assert isinstance(model, ExplainableModel)
    poster = make_poster(31, size=(60, 90))
    response = explain(client, poster, year=year, genre="drama")  # genre names are case-insensitive
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["poster_sha256"], body["year"], body["model"], body["version"]) == (
        sha256_hex(poster), year, name, 1)
    assert body["grid"] == {"height": 4, "width": 4}
    [item] = body["explanations"]
    pixels = poster_pixels(poster, model.image_size)[None].astype(np.float32)
    expected, scores = reference_grad_cam(model.keras_model, pixels, head, EXPLAIN_GENRES.index("Drama"))
    assert item["genre"] == "Drama"
    assert item["score"] == pytest.approx(float(scores[0][EXPLAIN_GENRES.index("Drama")]), abs=1e-5)
    np.testing.assert_allclose(np.array(item["heatmap"]), expected[0], atol=1e-3)  # 3 decimals
    overlay = decode_overlay(item["overlay_png"])
    assert overlay.size == (213, 320)  # the poster's 60x90 aspect, 320 px high
    assert overlay.mode == "RGB"


def test_without_a_genre_the_years_six_best_are_explained_best_first(explain_stack):
    client, _ = explain_stack
    poster = make_poster(32)
    body = explain(client, poster, year=2002).json()
    table = client.post("/api/v1/predictions", files={"file": ("p.jpg", poster, "image/jpeg")},
                        params={"years": "2002"}).json()
    top = [(row["genre"], row["score"]) for row in table["years"][0]["top"]]
    assert [(item["genre"], item["score"]) for item in body["explanations"]] == top
    assert len(top) == 6
    maps = [np.array(item["heatmap"]) for item in body["explanations"]]
    assert all(m.shape == (4, 4) and m.min() >= 0 and m.max() <= 1 for m in maps)
    assert any(not np.array_equal(maps[0], other) for other in maps[1:])


def test_bad_input_gets_a_named_error(explain_stack):
    client, _ = explain_stack
    poster = make_poster(33)
    cases = [
        (explain(client, poster, year=1990), 404, "no_model_for_year"),
        (explain(client, poster, year=2000, genre="Western"), 422, "unknown_genre"),
        (explain(client, b"this is not an image", year=2000), 415, "not_an_image"),
        (explain(client, b"", year=2000), 422, "empty_file"),
        (explain(client, b"\xff\xd8\xff\xe0broken jpeg", year=2000), 422, "bad_image"),
        (explain(client, poster, year="soon"), 422, "invalid_request"),
        (client.post(API, data={"year": "2000"}), 422, "invalid_request"),
        (explain(client, poster, year=2001, genre="Drama"), 409, "explanations_unsupported"),
        (explain(client, bytes(300_000), year=2000), 413, "payload_too_large"),  # refused unread
    ]
    for response, status, code in cases:
        assert response.status_code == status, (code, response.text)
        assert set(response.json()) == {"error"}
        assert response.json()["error"]["code"] == code, response.text
    assert "Western" in cases[1][0].json()["error"]["message"]
    assert "genre-2001" in cases[7][0].json()["error"]["message"]


def test_the_endpoint_is_in_the_openapi_document(explain_stack):
    client, _ = explain_stack
    document = client.get("/openapi.json").json()
    operation = document["paths"][API]["post"]
    assert {"200", "404", "409", "413", "415", "422", "503"} <= set(operation["responses"])
    assert "Explanation" in document["components"]["schemas"]
