"""The prediction API against real models on the real stack: results, caching, and bad input."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from services.web.cache import cache_namespace
from shared.images import poster_pixels, sha256_hex
from tests.conftest import make_poster
from tests.services.web.conftest import WebStack

API = "/api/v1/predictions"


def upload(stack: WebStack, data: bytes, name: str = "poster.jpg", path: str = API,
           **params: Any) -> httpx.Response:
    return stack.client.post(path, files={"file": (name, data, "image/jpeg")}, params=params)


def expected_top(stack: WebStack, key: str, data: bytes, year: int, k: int) -> list[tuple[str, float]]:
    model = stack.models[key]
    scores = model.scores(poster_pixels(data, model.image_size)[None])[0]
    if model.years:
        scores = scores[model.years.index(year)]
    order = sorted(range(len(model.genres)), key=lambda i: (-scores[i], model.genres[i]))[:k]
    return [(model.genres[i], float(scores[i])) for i in order]


def test_prediction_per_year_with_the_served_versions(web_stack: WebStack) -> None:
    poster = make_poster(7, size=(60, 90))
    response = upload(web_stack, poster, years="2000-2004")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"poster_sha256", "k", "years", "unavailable_years", "departures", "warnings"}
    assert body["poster_sha256"] == sha256_hex(poster)
    assert body["k"] == 6
    assert [row["year"] for row in body["years"]] == [2000, 2001, 2002, 2003]
    assert body["unavailable_years"] == [2004]
    served = {2000: ("genre-2000", 1), 2001: ("genre-2001", 2), 2002: ("genre-shared", 1),
              2003: ("genre-shared", 1)}
    for row in body["years"]:
        name, version = served[row["year"]]
        assert (row["model"], row["version"]) == (name, version)
        expected = expected_top(web_stack, f"{name}/{version}", poster, row["year"], 6)
        assert [entry["genre"] for entry in row["top"]] == [genre for genre, _ in expected]
        np.testing.assert_allclose([entry["score"] for entry in row["top"]], [s for _, s in expected],
                                   atol=1e-5)
    # The shared model's two years are different rows of its output.
    assert body["years"][2]["top"] != body["years"][3]["top"]


def test_k_and_year_list_and_form_fields(web_stack: WebStack) -> None:
    poster = make_poster(8)
    body = upload(web_stack, poster, years="2003,2000", k=2).json()
    assert [row["year"] for row in body["years"]] == [2000, 2003]
    assert body["k"] == 2 and all(len(row["top"]) == 2 for row in body["years"])
    form = web_stack.client.post(API, files={"file": ("p.jpg", poster, "image/jpeg")},
                                 data={"years": "2001", "k": "3"}).json()
    assert [row["year"] for row in form["years"]] == [2001] and len(form["years"][0]["top"]) == 3


def test_all_scores_for_the_heatmap(web_stack: WebStack) -> None:
    body = upload(web_stack, make_poster(9), years="2000", scores="true").json()
    [row] = body["years"]
    assert sorted(row["scores"]) == sorted(web_stack.models["genre-2000/1"].genres)
    assert row["scores"][row["top"][0]["genre"]] == row["top"][0]["score"]


def test_png_with_alpha_and_exif_rotation_are_read_like_training(web_stack: WebStack) -> None:
    rgba = Image.new("RGBA", (40, 60), (200, 30, 30, 0))
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    body = upload(web_stack, buffer.getvalue(), name="poster.png", years="2000").json()
    expected = expected_top(web_stack, "genre-2000/1", buffer.getvalue(), 2000, 6)
    assert [entry["genre"] for entry in body["years"][0]["top"]] == [genre for genre, _ in expected]


def test_repeated_poster_is_served_from_the_redis_cache(web_stack: WebStack) -> None:
    import redis

    poster = make_poster(10)
    first = upload(web_stack, poster, years="2000-2003").json()
    client = redis.Redis.from_url(web_stack.settings.redis_url)
    namespace = cache_namespace(web_stack.settings.effective_database_url)
    keys = client.keys(f"postergenre:scores:{namespace}:{sha256_hex(poster)}:*")
    names = sorted(str(key, "utf-8").split(":")[-2] for key in keys)  # type: ignore[arg-type]
    assert names == ["genre-2000", "genre-2001", "genre-shared"]
    before = cache_hits(web_stack)
    second = upload(web_stack, poster, years="2000-2003").json()
    assert second == first
    assert cache_hits(web_stack) - before == 3
    client.delete(*keys)


def metric(stack: WebStack, sample: str) -> float:
    for line in stack.client.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def cache_hits(stack: WebStack) -> float:
    return metric(stack, 'postergenre_prediction_cache_total{result="hit"}')


def test_batch_gives_each_poster_its_answer_or_its_error(web_stack: WebStack) -> None:
    files = [("files", ("a.jpg", make_poster(1), "image/jpeg")),
             ("files", ("b.txt", b"hello, not a poster", "text/plain")),
             ("files", ("c.jpg", make_poster(2), "image/jpeg"))]
    response = web_stack.client.post(f"{API}:batch", files=files, params={"years": "2000-2001", "k": 3})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [item["filename"] for item in results] == ["a.jpg", "b.txt", "c.jpg"]
    assert results[1]["error"]["code"] == "not_an_image" and "prediction" not in results[1]
    for item, seed in ((results[0], 1), (results[2], 2)):
        single = upload(web_stack, make_poster(seed), years="2000-2001", k=3).json()
        assert item["prediction"] == single


def test_batch_of_more_than_32_files_is_refused(web_stack: WebStack) -> None:
    poster = make_poster(3, size=(8, 12))
    files = [("files", (f"{i}.jpg", poster, "image/jpeg")) for i in range(33)]
    response = web_stack.client.post(f"{API}:batch", files=files)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "too_many_files"


def truncated_jpeg() -> bytes:
    return make_poster(4)[:300]


@pytest.mark.parametrize(("data", "status", "code"), [
    (b"", 422, "empty_file"),
    (b"%PDF-1.4 not an image at all" * 10, 415, "not_an_image"),
    ("truncated", 422, "bad_image"),
])
def test_bad_posters_get_a_named_4xx_error(web_stack: WebStack, data: bytes | str, status: int,
                                           code: str) -> None:
    payload = truncated_jpeg() if data == "truncated" else data
    assert isinstance(payload, bytes)
    response = upload(web_stack, payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def test_oversized_upload_is_refused_while_streaming(web_stack: WebStack) -> None:
    limit = web_stack.settings.max_upload_bytes
    response = upload(web_stack, b"\xff\xd8" + b"\x00" * (limit + 10))
    assert response.status_code == 413
    assert response.json()["error"]["code"] in ("payload_too_large", "file_too_large")
    assert str(limit) in response.json()["error"]["message"]


@pytest.mark.parametrize(("params", "fragment"), [
    ({"years": "2019-2000"}, "backwards"), ({"years": "20x0"}, "bad years"), ({"years": "1200"}, "between"),
    ({"years": "2000,,2001"}, "bad years"), ({"k": 0}, "k"), ({"k": 51}, "k"), ({"k": "six"}, "k"),
])
def test_bad_years_or_k_get_422_naming_the_problem(web_stack: WebStack, params: dict[str, Any],
                                                   fragment: str) -> None:
    response = upload(web_stack, make_poster(5), **params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] in ("invalid_years", "invalid_request") and fragment in error["message"]


def test_missing_file_field(web_stack: WebStack) -> None:
    response = web_stack.client.post(API, data={"years": "2000"})
    assert response.status_code == 422
    assert "file" in response.json()["error"]["message"]


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def top_of(stack: WebStack, data: bytes) -> list[dict[str, Any]]:
    response = upload(stack, data, years="2000")
    assert response.status_code == 200, response.text
    return list(response.json()["years"][0]["top"])


def test_first_frame_exif_orientation_and_modes_are_read_like_training(web_stack: WebStack) -> None:
    rng = np.random.default_rng(3)
    first = Image.fromarray(rng.integers(0, 256, (48, 32, 3), dtype=np.uint8))
    second = Image.fromarray(np.full((48, 32, 3), 250, np.uint8))
    animated = encoded(first, "GIF", save_all=True, append_images=[second], duration=100)
    assert top_of(web_stack, animated) == top_of(web_stack, encoded(Image.open(io.BytesIO(animated)), "PNG"))

    # EXIF orientation 6 (rotate 90° clockwise to display): read as the upright poster.
    exif = Image.Exif()
    exif[0x0112] = 6
    gradient = np.linspace(0, 255, 90, dtype=np.uint8)[None, :, None]  # dark left, light right
    wide = Image.fromarray(np.repeat(np.repeat(gradient, 60, 0), 3, 2))
    stored = encoded(wide, "JPEG", exif=exif, quality=95)
    upright = encoded(Image.open(io.BytesIO(stored)).transpose(Image.Transpose.ROTATE_270), "PNG")
    ignored = encoded(Image.open(io.BytesIO(stored)), "PNG")  # the stored pixels, orientation ignored
    assert top_of(web_stack, stored) == top_of(web_stack, upright) != top_of(web_stack, ignored)

    for mode in ("L", "CMYK", "P"):
        data = encoded(first.convert(mode), "JPEG" if mode == "CMYK" else "PNG")
        expected = expected_top(web_stack, "genre-2000/1", data, 2000, 6)
        assert [entry["genre"] for entry in top_of(web_stack, data)] == [genre for genre, _ in expected], mode


def test_decompression_bomb_is_refused(web_stack: WebStack) -> None:
    bomb = encoded(Image.new("L", (10_000, 10_000)), "PNG", optimize=True)  # 100 Mpx in a few KB
    assert len(bomb) < web_stack.settings.max_upload_bytes
    response = upload(web_stack, bomb, name="bomb.png")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "image_too_large"


def test_an_oversized_file_in_a_batch_is_cut_off_at_the_limit(web_stack: WebStack) -> None:
    limit = web_stack.settings.max_upload_bytes
    files = [("files", ("big.jpg", b"\xff\xd8" + b"\x00" * (limit + 1), "image/jpeg")),
             ("files", ("ok.jpg", make_poster(12), "image/jpeg"))]
    results = web_stack.client.post(f"{API}:batch", files=files, params={"years": "2000"}).json()["results"]
    assert results[0]["error"]["code"] == "file_too_large" and str(limit) in results[0]["error"]["message"]
    assert results[1]["prediction"]["years"][0]["year"] == 2000


def test_uploads_store_nothing(web_stack: WebStack) -> None:
    from services.web.state import WebState
    from shared.db import Movie, RejectedPoster, session_scope

    store = WebState(web_stack.settings, admin_token="").store
    before = set(store.list())
    upload(web_stack, make_poster(13))
    upload(web_stack, b"not an image")
    assert set(store.list()) == before
    assert not any(key.startswith("posters/") for key in before)
    with session_scope(web_stack.settings.effective_database_url) as session:
        assert session.query(Movie).count() == 0 and session.query(RejectedPoster).count() == 0


def test_a_blessed_model_the_server_does_not_serve_is_an_unavailable_year(web_stack: WebStack) -> None:
    """Blessed in the registry, but never synced to the inference server: NOT_FOUND -> unavailable."""
    from shared.db import ModelVersion, session_scope

    with session_scope(web_stack.settings.effective_database_url) as session:
        session.add(ModelVersion(name="genre-2004", version=1, year=2004, image_size=32, genres=["Drama"],
                                 years=[2004], status="blessed"))
    poster = make_poster(14)
    unavailable_2004 = 'postergenre_unavailable_years_total{year="2004"}'
    before = metric(web_stack, unavailable_2004)
    for _ in range(2):  # a NOT_FOUND is asked again next time, never cached
        body = upload(web_stack, poster, years="2000,2004").json()
        assert [row["year"] for row in body["years"]] == [2000] and body["unavailable_years"] == [2004]
    assert metric(web_stack, unavailable_2004) - before == 2
