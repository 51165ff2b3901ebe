"""The README's screenshot: the poster page of a running service, a poster read year by year, and the
explanation of one genre shown over it (Playwright driving Debian's chromium).

    .venv/bin/python scripts/screenshot_page.py --url http://127.0.0.1:8000 \
        --poster ../shared/data/posters-imdb/images/tt0110912.jpg --years 1996-2015 --out docs/screenshot.png

Start the page first (`make demo`, or `postergenre serve web` over models that exist). The script
chooses the poster, waits for the table, clicks the first genre of the first row and waits for its
explanation before taking the picture, so a page that answers nothing fails instead of being pictured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def take(url: str, poster: Path, years: str, out: Path, width: int, height: int) -> None:
    if not poster.is_file():
        raise SystemExit(f"no poster at {poster}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        page.fill("#years", years)
        page.set_input_files("#poster-file", str(poster))
        page.wait_for_selector("#prediction-table td[data-genre]", timeout=180_000)
        page.click("#prediction-table td[data-genre] >> nth=0")
        page.wait_for_selector("#explanation[data-state=shown]", timeout=180_000)
        # The poster, its overlay and the first rows of the table in one picture.
        page.eval_on_selector("#results", "section => window.scrollTo(0, section.offsetTop - 8)")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=False)
        browser.close()
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--poster", type=Path, required=True)
    parser.add_argument("--years", default="1996-2015")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshot.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    take(args.url, args.poster, args.years, args.out, args.width, args.height)


if __name__ == "__main__":
    main()
