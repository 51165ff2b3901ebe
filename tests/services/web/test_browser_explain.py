"""Explanations in a real browser (Playwright driving Debian's chromium): clicking a genre of the table,
or pressing Enter or Space on it, shows where that year's model looked, over the poster; a model
version without explanations says so in the caption. Writes a screenshot to /tmp/explain/page.png."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.config import Settings
from tests import servers
from tests.conftest import make_poster
from tests.services.inference.explainable import EXPLAIN_GENRES, ExplainableModel, build_explainable_model
from tests.services.web.conftest import register_models, stack_settings_for
from tests.services.web.test_browser import browser, serve, wait_for_results  # noqa: F401 (fixture)
from tests.services.web.tiny_models import TinyModel, build_tiny_model

SCREENSHOT = Path("/tmp/explain/page.png")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str, redis_url: str,
         s3_endpoint: str) -> Iterator[tuple[str, Settings]]:
    """genre-shared (2000-2002, with explanations) and genre-2003 (exported before explanations)."""
    root = tmp_path_factory.mktemp("browser-explain-models")
    models: list[ExplainableModel | TinyModel] = [
        build_explainable_model(root, "genre-shared", 1, seed=41, years=[2000, 2001, 2002], image_size=48),
        build_tiny_model(root, "genre-2003", 1, 32, seed=42, genres=EXPLAIN_GENRES),
    ]
    home = tmp_path_factory.mktemp("browser-explain-home")
    database_url = servers.create_database(postgres_admin_url, prefix="webexplain")
    settings = stack_settings_for(home, database_url, redis_url, s3_endpoint, f"explain-{os.getpid()}")
    register_models(settings, models, retired=set())
    try:
        with serve(settings) as url:
            yield url, settings
    finally:
        servers.drop_database(postgres_admin_url, database_url)


def shown(page: Any) -> dict[str, Any]:
    page.wait_for_selector("#explanation[data-state]:not([data-state=loading])", timeout=120_000)
    return page.eval_on_selector("#explanation", """figure => ({
        state: figure.dataset.state, genre: figure.dataset.genre, year: Number(figure.dataset.year),
        caption: figure.querySelector('figcaption').textContent, hidden: figure.hidden,
        src: figure.querySelector('img').getAttribute('src') || ''})""")


def pressed(page: Any) -> list[str]:
    return page.eval_on_selector_all("td[aria-pressed=true]", "cells => cells.map(td => td.dataset.genre)")


def test_a_genre_cell_shows_its_explanation_by_click_and_by_keyboard(browser: Any,  # noqa: F811
                                                                      site: tuple[str, Settings],
                                                                      tmp_path: Path) -> None:
    url, _ = site
    poster = tmp_path / "poster.jpg"
    poster.write_bytes(make_poster(43, size=(180, 270)))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url)
        page.fill("#years", "2000-2003")
        page.locator("#years").blur()  # the edit's change event now, not when the first click moves focus
        page.set_input_files("#poster-file", str(poster))
        wait_for_results(page, "server")
        assert page.locator("#explanation").is_hidden()

        cell = page.locator('#prediction-table tr[data-year="2001"] td.genre').nth(1)
        genre = cell.get_attribute("data-genre")
        assert cell.get_attribute("role") == "button" and cell.get_attribute("tabindex") == "0"
        assert genre in (cell.get_attribute("aria-label") or "")
        cell.click()
        answer = shown(page)
        assert (answer["state"], answer["genre"], answer["year"]) == ("shown", genre, 2001)
        assert genre in answer["caption"] and "2001" in answer["caption"]
        api = httpx.post(f"{url}/api/v1/explanations", data={"year": "2001", "genre": genre},
                         files={"file": ("poster.jpg", poster.read_bytes(), "image/jpeg")}, timeout=60).json()
        assert answer["src"] == api["explanations"][0]["overlay_png"]
        assert pressed(page) == [genre]
        assert page.locator("#explanation-image").evaluate("img => img.complete && img.naturalWidth") > 0
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # Keyboard: Tab from the explained cell to the next genre, Enter; then Space on the next.
        page.keyboard.press("Tab")
        following = page.evaluate("document.activeElement.dataset.genre")
        assert following and following != genre
        page.keyboard.press("Enter")
        answer = shown(page)
        assert (answer["genre"], answer["year"]) == (following, 2001)
        page.keyboard.press("Tab")
        third = page.evaluate("document.activeElement.dataset.genre")
        page.keyboard.press(" ")
        page.wait_for_function(f"document.querySelector('#explanation').dataset.genre === {third!r}")
        assert shown(page)["state"] == "shown" and pressed(page) == [third]
        page.keyboard.press(" ")  # a second press closes it
        page.wait_for_selector("#explanation", state="hidden")
        assert pressed(page) == []

        # A model version exported before explanations: the caption says why, nothing breaks.
        page.locator('#prediction-table tr[data-year="2003"] td.genre').first.click()
        answer = shown(page)
        assert answer["state"] == "error" and "no explanations" in answer["caption"]
        assert page.locator("#banner").is_hidden()
    finally:
        page.close()
