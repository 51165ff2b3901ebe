"""The page's readings (static/readings.js) under Node: the heatmap's text keeps WCAG AA contrast at
every score, and the in-browser departures are the server's (services.web.year_table.departures)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.web.year_table import DEPARTURE_MARGIN, departures

READINGS_JS = Path(__file__).resolve().parents[3] / "services" / "web" / "static" / "readings.js"
RUNNER = """
const R = require(process.argv[1]);
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const heat = input.scores.map((s) => { const c = R.heatColours(s); return [c.backgroundRgb, c.colorRgb]; });
const rows = input.rows.map((scores) => ({ scores }));
const summary = R.departures(rows);
process.stdout.write(JSON.stringify({ heat, departs: rows.map((r) => r.departs), summary,
                                      margin: R.DEPARTURE_MARGIN }));
"""


def relative_luminance(rgb: list[int]) -> float:
    """WCAG 2.x relative luminance, written here independently of the page's code."""
    channels = []
    for value in rgb:
        c = value / 255
        channels.append(c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4)
    return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]


def contrast_ratio(first: list[int], second: list[int]) -> float:
    a, b = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (a + 0.05) / (b + 0.05)


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.skip("needs Node.js to run static/readings.js")
    return found


def run_js(node: str, scores: list[float], rows: list[dict[str, float]]) -> dict[str, Any]:
    result = subprocess.run([node, "-e", RUNNER, str(READINGS_JS)],
                            input=json.dumps({"scores": scores, "rows": rows}),
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_heatmap_text_keeps_aa_contrast_at_every_score(node: str) -> None:
    scores = [i / 1000 for i in range(1001)]
    heat = run_js(node, scores, [])["heat"]
    ratios = [contrast_ratio(background, text) for background, text in heat]
    worst = min(ratios)
    assert worst >= 4.5, (worst, scores[int(np.argmin(ratios))])
    # The background darkens with the score, and the text turns from black to white on the way.
    assert heat[0][1] == [0, 0, 0] and heat[-1][1] == [255, 255, 255]
    assert relative_luminance(heat[0][0]) > relative_luminance(heat[500][0]) > relative_luminance(heat[-1][0])


def test_the_old_fixed_text_colours_failed_aa_somewhere() -> None:
    """Why the colour is computed: the page's former rule (#1b1d21 below 0.55, white above) on the same
    backgrounds drops under 4.5:1 around the switch."""
    def background(score: float) -> list[int]:
        alpha = max(0.04, score)
        return [round(c * alpha + 255 * (1 - alpha)) for c in (31, 95, 191)]

    old = [contrast_ratio(background(s), [255, 255, 255] if s > 0.55 else [27, 29, 33])
           for s in np.linspace(0, 1, 1001)]
    assert min(old) < 4.5


def test_in_browser_departures_are_the_servers(node: str) -> None:
    rng = np.random.default_rng(4)
    genres = ["Action", "Comedy", "Drama", "Horror"]
    rows = [{genre: float(rng.random()) for genre in genres[: 4 if year % 3 else 3]} for year in range(12)]
    got = run_js(node, [], rows)
    assert got["margin"] == DEPARTURE_MARGIN
    server_rows: list[tuple[dict[str, Any], dict[str, float]]] = [({}, scores) for scores in rows]
    means = departures(server_rows)
    for (server_row, _), browser in zip(server_rows, got["departs"], strict=True):
        assert sorted(server_row["departs"]) == sorted(browser)
        for genre, delta in browser.items():
            assert abs(server_row["departs"][genre] - delta) < 1e-5
    assert any(row["departs"] for row, _ in server_rows)
    assert got["summary"]["means"] == pytest.approx(means, abs=1e-6)
