"""Likely genres, departures from the mean over the years and the not-a-poster warning in the
prediction API, against real models on the real stack (issue 16)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from services.web.year_table import DEPARTURE_MARGIN
from shared.images import poster_pixels
from tests.conftest import SHARED_POSTERS, make_poster
from tests.services.web.conftest import TINY_THRESHOLDS, WebStack

API = "/api/v1/predictions"


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def predict(stack: WebStack, data: bytes, **params: Any) -> dict[str, Any]:
    response = stack.client.post(API, files={"file": ("poster.png", data, "image/png")}, params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_genres_are_marked_likely_by_the_versions_validation_thresholds(web_stack: WebStack) -> None:
    seen: set[bool] = set()
    for seed in range(6):
        poster = make_poster(40 + seed)
        body = predict(web_stack, poster, years="2000-2003", k=7)
        for row in body["years"]:
            key = f"{row['model']}/{row['version']}"
            if key not in TINY_THRESHOLDS:  # genre-2001 v2 records no thresholds: no marks, and it says so
                assert row["has_thresholds"] is False and all("likely" not in e for e in row["top"]), row
                continue
            assert row["has_thresholds"] is True
            model = web_stack.models[key]
            scores = model.scores(poster_pixels(poster, model.image_size)[None])[0]
            if model.years:
                scores = scores[model.years.index(row["year"])]
            by_genre = dict(zip(model.genres, scores, strict=True))
            for entry in row["top"]:
                threshold = TINY_THRESHOLDS[key][entry["genre"]]
                assert entry["likely"] == bool(by_genre[entry["genre"]] >= threshold)
                seen.add(entry["likely"])
    assert seen == {True, False}  # the marks tell genres apart, not all one way


def test_years_departing_from_a_genres_mean_are_listed_per_row(web_stack: WebStack) -> None:
    body = predict(web_stack, make_poster(50), years="2000-2004", scores="true")
    assert body["departures"]["margin"] == DEPARTURE_MARGIN and body["departures"]["margin_source"] == "fixed"
    rows = body["years"]
    genres = sorted({genre for row in rows for genre in row["scores"]})
    departing = 0
    for genre in genres:
        values = [row["scores"][genre] for row in rows if genre in row["scores"]]
        mean = sum(values) / len(values)
        assert abs(body["departures"]["means"][genre] - mean) < 1e-5
        for row in rows:
            delta = row["scores"][genre] - mean
            if abs(delta) > DEPARTURE_MARGIN + 1e-5:
                assert abs(row["departs"][genre] - delta) < 1e-5, (genre, row)
                departing += 1
            elif abs(delta) < DEPARTURE_MARGIN - 1e-5:
                assert genre not in row["departs"], (genre, row)
    assert departing > 0  # the four tiny models disagree: some year departs
    # One year alone has nothing to depart from.
    [alone] = predict(web_stack, make_poster(50), years="2000")["years"]
    assert alone["departs"] == {}


def test_noise_and_flat_images_are_answered_with_a_warning(web_stack: WebStack) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (300, 900, 3), dtype=np.uint8)
    flat = np.zeros((600, 400, 3), np.uint8)
    flat[:, :200], flat[:, 200:] = (200, 30, 30), (20, 20, 120)
    for image in (noise, flat):
        body = predict(web_stack, png(image), years="2000")
        assert len(body["years"]) == 1 and body["years"][0]["top"]  # never refused
        [warning] = body["warnings"]
        assert warning["code"] == "not_a_poster" and "not be a movie poster" in warning["message"]
        assert warning["poster_score"] < 0.5
    assert predict(web_stack, png(noise), years="2000")["warnings"][0]["aspect_ratio"] == 3.0


def test_a_real_poster_gets_no_warning(web_stack: WebStack) -> None:
    real = SHARED_POSTERS / "images" / "tt0211915.jpg"
    data = real.read_bytes() if real.is_file() else _real_looking_poster()
    response = web_stack.client.post(API, files={"file": ("p.jpg", data, "image/jpeg")},
                                     params={"years": "2000"})
    assert response.status_code == 200 and response.json()["warnings"] == [], response.text


def _real_looking_poster() -> bytes:
    """Without the shared posters: a drawn poster (title block, figure, gradient sky), 2:3."""
    from PIL import ImageDraw

    image = Image.new("RGB", (400, 600), (20, 30, 60))
    draw = ImageDraw.Draw(image)
    for y in range(600):
        draw.line([(0, y), (400, y)], fill=(20 + y // 6, 30 + y // 10, 60 + y // 8))
    draw.ellipse((120, 180, 280, 420), fill=(200, 160, 120), outline=(0, 0, 0), width=4)
    draw.rectangle((40, 470, 360, 560), fill=(240, 220, 40))
    draw.text((60, 500), "A MOVIE TITLE", fill=(0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_the_batch_carries_each_posters_warnings_and_bad_input_keeps_its_error(web_stack: WebStack) -> None:
    noise = png(np.random.default_rng(1).integers(0, 256, (300, 900, 3), dtype=np.uint8))
    response = web_stack.client.post(f"{API}:batch", params={"years": "2000"}, files=[
        ("files", ("noise.png", noise, "image/png")), ("files", ("bad.txt", b"not an image", "text/plain"))])
    assert response.status_code == 200, response.text
    noisy, bad = response.json()["results"]
    assert [w["code"] for w in noisy["prediction"]["warnings"]] == ["not_a_poster"]
    assert bad["error"]["code"] == "not_an_image" and "prediction" not in bad
    empty = web_stack.client.post(API, files={"file": ("e.png", b"", "image/png")})
    assert empty.status_code == 422 and empty.json() == {
        "error": {"code": "empty_file", "message": "the uploaded file is empty"}}


def test_the_models_listing_says_thresholds_and_tfjs(web_stack: WebStack) -> None:
    listing = {m["name"]: m for m in web_stack.client.get("/api/v1/models").json()["models"]}
    assert listing["genre-2000"]["thresholds"] == TINY_THRESHOLDS["genre-2000/1"]
    assert "thresholds" not in listing["genre-2001"]  # v2 has none
    assert all(model["tfjs"] is False for model in listing.values())  # these versions have no TF.js export


def test_openapi_documents_likely_departures_and_warnings(web_stack: WebStack) -> None:
    schemas = web_stack.client.get("/openapi.json").json()["components"]["schemas"]
    assert "likely" in schemas["GenreScore"]["properties"]
    assert {"departures", "warnings"} <= set(schemas["Prediction"]["required"])
    assert {"has_thresholds", "departs"} <= set(schemas["YearPrediction"]["properties"])
    assert {"tfjs", "thresholds"} <= set(schemas["ModelInfo"]["properties"])
    assert schemas["PosterWarning"]["properties"]["code"]
