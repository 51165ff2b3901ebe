"""End to end in a real browser (Playwright driving Debian's chromium): upload a poster on the page,
see the table and the heatmap, switch to the in-browser TF.js mode and get the same table, and see
the error banner when inference is down.

The models are tiny real SavedModels served by the embedded gRPC server, and their TF.js exports
come from the trainer's converter (``services.trainer.export.export_tfjs``). Set
``POSTERGENRE_UPDATE_SCREENSHOT=1`` to write docs/screenshot.png.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shared.config import Settings
from shared.images import poster_pixels
from shared.storage import open_object_store, upload_folder
from tests import servers
from tests.conftest import SHARED_POSTERS, make_poster
from tests.services.web.conftest import register_models, stack_settings_for
from tests.services.web.tiny_models import TinyModel, build_tiny_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "screenshot.png"
GENRES = ["Action", "Adventure", "Animation", "Comedy", "Crime", "Drama", "Family", "Horror", "Romance",
          "Sci-Fi", "Thriller"]
YEARS = "2000-2019"
# The site's validation thresholds (genre-shared has none: its rows say "no thresholds").
SITE_THRESHOLDS = {"genre-2000/1": {genre: round(0.2 + 0.06 * index, 2)
                                    for index, genre in enumerate(GENRES)}}
PAGE_SHOT = Path("/tmp/likely/page.png")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The web app under uvicorn on a free loopback port, in a thread of this process."""
    import uvicorn

    from services.embedded import create_app

    port = servers.free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                          log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        servers.wait_for_port("127.0.0.1", port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def with_tfjs_export(model: TinyModel, store: Any) -> None:
    from services.trainer.export import export_tfjs

    exports = model.folder.parent / f"{model.version}-tfjs"
    export_tfjs(model.folder, exports)
    upload_folder(store, exports, f"models/{model.name}/{model.version}/exports/tfjs")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str, redis_url: str,
         s3_endpoint: str) -> Iterator[tuple[str, Settings]]:
    """genre-2000 (32 px) and genre-shared (24 px, 2001-2018) with TF.js exports; 2019 has no model."""
    from services.trainer.export import TfjsConverterMissing, tfjs_converter_path

    root = tmp_path_factory.mktemp("browser-models")
    models = [build_tiny_model(root, "genre-2000", 1, 32, seed=21, genres=GENRES),
              build_tiny_model(root, "genre-shared", 3, 24, seed=22, genres=GENRES,
                               years=list(range(2001, 2019)))]
    home = tmp_path_factory.mktemp("browser-home")
    database_url = servers.create_database(postgres_admin_url, prefix="webbrowser")
    settings = stack_settings_for(home, database_url, redis_url, s3_endpoint, f"browser-{home.name[-1]}-"
                                  f"{os.getpid()}")
    register_models(settings, models, retired=set(), thresholds=SITE_THRESHOLDS)
    try:
        tfjs_converter_path()
    except TfjsConverterMissing:
        pass  # the in-browser test skips; the server-mode test still runs
    else:
        store = open_object_store(settings.effective_object_store, settings.s3_endpoint,
                                  settings.s3_access_key, settings.s3_secret_key)
        with ThreadPoolExecutor(max_workers=2) as pool:  # the converter is a slow subprocess
            list(pool.map(lambda model: with_tfjs_export(model, store), models))
    try:
        with serve(settings) as url:
            yield url, settings
    finally:
        servers.drop_database(postgres_admin_url, database_url)


def read_table(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all("#prediction-table tbody tr", """rows => rows.map(row => ({
        year: Number(row.dataset.year), model: row.dataset.model || null,
        version: row.dataset.version ? Number(row.dataset.version) : null,
        top: [...row.querySelectorAll('td.genre')].map(td => [td.dataset.genre, Number(td.dataset.score)]),
        unavailable: row.classList.contains('unavailable')}))""")


def wait_for_results(page: Any, mode: str) -> list[dict[str, Any]]:
    """The table once the page shows ``mode``'s results; an error banner fails at once, with its text."""
    page.wait_for_selector(f"#results[data-mode={mode}]:not([hidden]), #banner:not([hidden])",
                           timeout=120_000)
    banner = page.locator("#banner")
    assert banner.is_hidden(), f"the page shows an error: {banner.inner_text()}"
    return read_table(page)


def upload_poster(page: Any, poster: Path, mode: str) -> list[dict[str, Any]]:
    page.fill("#years", YEARS)
    page.set_input_files("#poster-file", str(poster))
    return wait_for_results(page, mode)


@pytest.fixture
def poster(tmp_path: Path) -> Path:
    path = tmp_path / "poster.jpg"
    path.write_bytes(make_poster(31, size=(180, 270)))
    return path


def test_the_years_field_defaults_to_the_latest_twenty_years_with_a_model(browser: Any,
                                                                        site: tuple[str, Settings]) -> None:
    url, _ = site
    page = browser.new_page()
    try:
        page.goto(url)
        page.wait_for_selector("#years[data-default-from-models]", timeout=30_000)
        # genre-2000 and the shared model (2001-2018) are served; 2019 has no model.
        assert page.input_value("#years") == "2000-2018"
    finally:
        page.close()


def test_a_late_years_default_leaves_the_field_and_the_table_in_agreement(
        browser: Any, site: tuple[str, Settings], poster: Path) -> None:
    """A poster chosen before the models' listing arrives is read for the years the field shows then;
    the listing, answered afterwards, must not rewrite the field under that table."""
    url, _ = site
    page = browser.new_page()
    held: list[Any] = []

    def hold(route: Any) -> None:  # the listing waits until the test lets it through
        held.append(route)

    page.route("**/api/v1/models", hold)
    try:
        page.goto(url)
        page.set_input_files("#poster-file", str(poster))
        table = wait_for_results(page, "server")
        assert held, "the page did not ask for the models' listing"
        assert page.input_value("#years") == YEARS
        assert [row["year"] for row in table] == list(range(2000, 2020))
        held[0].continue_()
        page.wait_for_function("() => performance.getEntriesByType('resource')"
                               ".some(e => e.name.endsWith('/api/v1/models'))", timeout=30_000)
        page.wait_for_timeout(500)  # the listing's handler has run
        assert page.input_value("#years") == YEARS
        assert [row["year"] for row in read_table(page)] == list(range(2000, 2020))
    finally:
        page.close()


def test_upload_shows_the_table_and_heatmap(browser: Any, site: tuple[str, Settings], poster: Path) -> None:
    url, _ = site
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    table = upload_poster(page, poster, "server")
    api = httpx.post(f"{url}/api/v1/predictions", params={"years": YEARS},
                     files={"file": ("poster.jpg", poster.read_bytes(), "image/jpeg")}, timeout=60).json()
    assert [row["year"] for row in table] == list(range(2000, 2020))
    assert [row["year"] for row in table if row["unavailable"]] == api["unavailable_years"] == [2019]
    expected = {row["year"]: row for row in api["years"]}
    for row in table[:-1]:
        wanted = expected[row["year"]]
        assert (row["model"], row["version"]) == (wanted["model"], wanted["version"])
        assert row["top"] == [[entry["genre"], entry["score"]] for entry in wanted["top"]]
    assert page.locator("#prediction-table tbody tr.unavailable").inner_text().count("no model") == 1
    # The heatmap: a row per genre, a column per answered year, every cell a score.
    assert page.locator("#heatmap tbody tr").count() == len(GENRES)
    assert page.locator("#heatmap thead th").count() == 1 + 19
    assert page.locator("#heatmap tbody td[data-score]").count() == len(GENRES) * 19
    assert page.locator("#banner").is_hidden()
    # On a phone the page fits the screen's width; the wide tables scroll inside their own frames.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.locator("#prediction-table").is_visible() and page.locator("#poster-file").is_visible()
    page.set_viewport_size({"width": 1280, "height": 900})
    if os.environ.get("POSTERGENRE_UPDATE_SCREENSHOT"):
        real = SHARED_POSTERS / "images" / "tt0211915.jpg"  # a real poster reads better, when present
        if real.is_file():
            upload_poster(page, real, "server")
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.close()


def test_in_browser_mode_gives_the_same_table(browser: Any, site: tuple[str, Settings], poster: Path) -> None:
    from services.trainer.export import TfjsConverterMissing, tfjs_converter_path
    from services.web.vendor import VendorError, ensure_tfjs

    try:
        tfjs_converter_path()
        ensure_tfjs()
    except (TfjsConverterMissing, VendorError) as exc:
        pytest.skip(f"in-browser mode needs the TF.js converter and tf.min.js: {exc}")
    url, _ = site
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{url}/?backend=cpu")
    server_table = upload_poster(page, poster, "server")
    page.check("input[name=mode][value=browser]")
    browser_table = wait_for_results(page, "browser")
    # The page's decoding and resizing give exactly the pixels shared.images gives the server.
    browser_pixels = page.evaluate("""async ([b64, size]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const decoded = await PosterPixels.decodePoster(new Blob([bytes], { type: "image/jpeg" }));
        return Array.from(PosterPixels.posterPixels(decoded, size)); }""",
        [base64.b64encode(poster.read_bytes()).decode(), 24])
    assert np.array_equal(np.asarray(browser_pixels, np.uint8).reshape(24, 24, 3),
                          poster_pixels(poster.read_bytes(), 24))
    assert errors == [] and page.locator("#banner").is_hidden(), page.locator("#banner").inner_text()
    assert [(r["year"], r["model"], r["version"], r["unavailable"]) for r in browser_table] == \
        [(r["year"], r["model"], r["version"], r["unavailable"]) for r in server_table]
    for in_browser, on_server in zip(browser_table, server_table, strict=True):
        assert [genre for genre, _ in in_browser["top"]] == [genre for genre, _ in on_server["top"]], \
            (in_browser, on_server)
        for (_, score_browser), (_, score_server) in zip(in_browser["top"], on_server["top"], strict=True):
            assert abs(score_browser - score_server) <= 1e-3, (in_browser, on_server)
    page.close()


def test_the_page_says_when_inference_is_down(browser: Any, tmp_path: Path, postgres_url: str, redis_url: str,
                                              s3_endpoint: str, s3_bucket_url: str, poster: Path) -> None:
    settings = stack_settings_for(tmp_path, postgres_url, redis_url, s3_endpoint, s3_bucket_url[5:],
                                  inference_url=f"grpc://127.0.0.1:{servers.free_port()}",
                                  inference_timeout_s=1.0)
    model = build_tiny_model(tmp_path / "models", "genre-2000", 1, 16, seed=5)
    register_models(settings, [model], retired=set())
    with serve(settings) as url:
        page = browser.new_page()
        page.goto(url)
        page.set_input_files("#poster-file", str(poster))
        page.wait_for_selector("#banner:not([hidden])", timeout=60_000)
        message = page.locator("#banner").inner_text()
        assert "unavailable" in message and page.locator("#results").is_hidden()
        page.close()


def test_admin_page_shows_live_job_progress_and_models(browser: Any, site: tuple[str, Settings]) -> None:
    from shared.jobs import create_job, update_job
    from tests.services.web.conftest import ADMIN_TOKEN

    url, settings = site
    database = settings.effective_database_url
    create_job("job-live-progress", "train", {"model_name": "genre-2000"}, url=database)
    update_job("job-live-progress", state="PROGRESS", progress=20, counts={"epoch": 1}, url=database)
    page = browser.new_page()
    page.goto(f"{url}/admin")
    page.fill("#token", ADMIN_TOKEN)
    page.click("#token-form button")
    bar = page.locator('tr[data-job="job-live-progress"] progress')
    bar.wait_for(timeout=30_000)
    assert bar.get_attribute("value") == "20"
    update_job("job-live-progress", progress=65, counts={"epoch": 3}, url=database)
    page.wait_for_function("""() => document.querySelector('tr[data-job="job-live-progress"] progress')
                                     .getAttribute('value') === '65'""", timeout=30_000)
    assert "epoch: 3" in page.locator('tr[data-job="job-live-progress"]').inner_text()
    assert page.locator("#models article h3").all_inner_texts() == ["genre-2000 v1", "genre-shared v3"]
    assert page.locator("#banner").is_hidden()
    page.fill("#token", "wrong-token")
    page.click("#token-form button")
    page.wait_for_selector("#banner:not([hidden])", timeout=30_000)
    assert "wrong admin token" in page.locator("#banner").inner_text()
    page.close()


# --- likely genres, departures, the not-a-poster warning, in-browser only with TF.js (issue 16) ---------


def noise_poster(path: Path) -> Path:
    """A 900x300 image of random noise: what the not-a-poster warning is for."""
    from PIL import Image

    Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 900, 3), dtype=np.uint8)).save(path)
    return path


def test_the_page_marks_likely_genres_departures_and_a_non_poster(browser: Any, site: tuple[str, Settings],
                                                                 tmp_path: Path) -> None:
    url, _ = site
    image = noise_poster(tmp_path / "noise.png")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url)
        upload_poster(page, image, "server")
        api = httpx.post(f"{url}/api/v1/predictions", params={"years": YEARS, "scores": "true"},
                         files={"file": ("noise.png", image.read_bytes(), "image/png")}, timeout=60).json()
        # Likely: the same genres as the API, said in words (a "likely" mark), not by colour alone.
        marks = page.eval_on_selector_all("#prediction-table td.genre", """cells => cells.map(td => [
            td.closest('tr').dataset.year, td.dataset.genre, td.dataset.likely ?? null,
            td.querySelector('.likely-mark') ? td.querySelector('.likely-mark').textContent : null])""")
        expected = {(str(row["year"]), entry["genre"]): entry.get("likely") for row in api["years"]
                    for entry in row["top"]}
        assert len(marks) == len(expected)
        for year, genre, likely, mark in marks:
            wanted = expected[year, genre]
            assert likely == (None if wanted is None else str(wanted).lower()), (year, genre)
            assert mark == ("likely" if wanted else None), (year, genre)
        assert {True, False} <= set(expected.values())  # genre-2000 has thresholds: some of each
        assert page.locator("#prediction-table tr[data-model=genre-shared] .no-thresholds").count() == 18
        # Departures: the heatmap marks exactly the API's departing (year, genre) cells, with an arrow.
        departing = page.eval_on_selector_all("#heatmap td.departs", """cells => cells.map(td => [
            td.closest('tr').querySelector('th').textContent,
            td.closest('table').tHead.rows[0].cells[td.cellIndex].textContent,
            td.querySelector('.departure-mark').textContent, td.getAttribute('aria-label')])""")
        wanted_departs = {(genre, str(row["year"])): delta for row in api["years"]
                          for genre, delta in row["departs"].items()}
        assert wanted_departs and {(g, y) for g, y, _, _ in departing} == set(wanted_departs)
        for genre, year, arrow, label in departing:
            assert arrow == ("▲" if wanted_departs[genre, year] > 0 else "▼")
            assert ("above" if wanted_departs[genre, year] > 0 else "below") in label
        help_text = page.locator("#heatmap-help").inner_text()
        assert "▲" in help_text and "departs" in help_text and "0.10" in help_text
        assert "likely" in page.locator("#likely-help").inner_text()
        # The not-a-poster warning is visible, and the table is there all the same.
        warning = page.locator("#warnings")
        assert warning.is_visible() and "may not be a movie poster" in warning.inner_text()
        assert page.locator("#banner").is_hidden()
        # The heatmap's text colour is computed per cell: AA contrast on the cell's own background.
        ratios = page.eval_on_selector_all("#heatmap td[data-score]", """cells => cells.map(td => {
            const parse = (c) => c.match(/\\d+/g).slice(0, 3).map(Number);
            return PosterReadings.contrast(parse(getComputedStyle(td).color),
                                           parse(getComputedStyle(td).backgroundColor)); })""")
        assert ratios and min(ratios) >= 4.5
        PAGE_SHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(PAGE_SHOT), full_page=True)
        # A real poster gets no warning.
        real = SHARED_POSTERS / "images" / "tt0211915.jpg"
        if real.is_file():
            page.set_input_files("#poster-file", str(real))
            # The results are already shown: wait for this poster's own (its sha256 in the caption).
            page.wait_for_function("sha => document.getElementById('poster-id').textContent.includes(sha)",
                                   arg=hashlib.sha256(real.read_bytes()).hexdigest()[:12], timeout=60_000)
            assert page.locator("#warnings").is_hidden() and page.locator("#banner").is_hidden()
    finally:
        page.close()


def test_without_any_tfjs_export_the_page_says_why_and_offers_the_server(
        browser: Any, tmp_path: Path, postgres_url: str, redis_url: str, s3_endpoint: str,
        s3_bucket_url: str) -> None:
    """The demo's case: its models have no TF.js export. The in-browser switch is off and says why
    (the models' listing alone decides it, so no inference server is started here)."""
    settings = stack_settings_for(tmp_path, postgres_url, redis_url, s3_endpoint, s3_bucket_url[5:],
                                  inference_url=f"grpc://127.0.0.1:{servers.free_port()}",
                                  inference_timeout_s=1.0)
    model = build_tiny_model(tmp_path / "models", "genre-2000", 1, 16, seed=6)
    register_models(settings, [model], retired=set())
    with serve(settings) as url:
        assert [m["tfjs"] for m in httpx.get(f"{url}/api/v1/models", timeout=30).json()["models"]] == [False]
        page = browser.new_page()
        try:
            page.goto(url)
            page.wait_for_selector("#poster-form[data-tfjs-checked]", timeout=30_000)
            assert page.locator("input[name=mode][value=browser]").is_disabled()
            assert page.locator("input[name=mode][value=server]").is_checked()
            note = page.locator("#mode-note")
            assert note.is_visible() and "TF.js export" in note.inner_text() and "server" in note.inner_text()
        finally:
            page.close()


@pytest.fixture(scope="module")
def site_with_one_tfjs_export(tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str,
                              redis_url: str, s3_endpoint: str) -> Iterator[str]:
    """genre-2000 without a TF.js export, genre-2001 with one."""
    from services.trainer.export import TfjsConverterMissing, tfjs_converter_path
    from services.web.vendor import VendorError, ensure_tfjs

    try:
        tfjs_converter_path()
        ensure_tfjs()
    except (TfjsConverterMissing, VendorError) as exc:
        pytest.skip(f"in-browser mode needs the TF.js converter and tf.min.js: {exc}")
    root = tmp_path_factory.mktemp("one-tfjs-models")
    models = [build_tiny_model(root, "genre-2000", 1, 16, seed=31, genres=GENRES),
              build_tiny_model(root, "genre-2001", 1, 16, seed=32, genres=GENRES)]
    home = tmp_path_factory.mktemp("one-tfjs-home")
    database_url = servers.create_database(postgres_admin_url, prefix="webonetfjs")
    settings = stack_settings_for(home, database_url, redis_url, s3_endpoint, f"onetfjs-{os.getpid()}")
    register_models(settings, models, retired=set())
    store = open_object_store(settings.effective_object_store, settings.s3_endpoint,
                              settings.s3_access_key, settings.s3_secret_key)
    with_tfjs_export(models[1], store)
    try:
        with serve(settings) as url:
            yield url
    finally:
        servers.drop_database(postgres_admin_url, database_url)


def test_years_whose_model_has_no_tfjs_export_are_read_on_the_server_and_the_page_says_why(
        browser: Any, site_with_one_tfjs_export: str, poster: Path) -> None:
    url = site_with_one_tfjs_export
    listing = {m["name"]: m for m in httpx.get(f"{url}/api/v1/models", timeout=30).json()["models"]}
    assert (listing["genre-2000"]["tfjs"], listing["genre-2001"]["tfjs"]) == (False, True)
    page = browser.new_page()
    try:
        page.goto(f"{url}/?backend=cpu")
        page.wait_for_selector("#poster-form[data-tfjs-checked]", timeout=30_000)
        assert page.locator("input[name=mode][value=browser]").is_enabled()
        assert page.locator("#mode-note").is_hidden()
        page.fill("#years", "2000-2001")
        page.check("input[name=mode][value=browser]")
        page.set_input_files("#poster-file", str(poster))
        table = wait_for_results(page, "server")
        assert [row["year"] for row in table if not row["unavailable"]] == [2000, 2001]
        note = page.locator("#mode-note").inner_text()
        assert "genre-2000" in note and "TF.js export" in note and "on the server" in note
        # Years whose models all have an export run in the browser, and the note goes.
        page.fill("#years", "2001")
        page.locator("#years").dispatch_event("change")
        table = wait_for_results(page, "browser")
        assert [row["year"] for row in table] == [2001] and page.locator("#mode-note").is_hidden()
    finally:
        page.close()
