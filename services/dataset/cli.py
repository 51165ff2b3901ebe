"""Subcommands of the dataset service: ``dataset build``, ``dataset show`` and ``bench dataset``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from services.cli_support import add_output_options
from shared.years import year_span_argument


def _build(args: argparse.Namespace) -> int:
    # TensorFlow (the shard writer) logs its CPU features at INFO; keep the build's output readable.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from services.cli_support import print_json, progress_bar
    from services.dataset.pipeline import build_dataset
    from shared.config import get_settings
    from shared.dataset_params import BuildParams, DatasetInputError
    from shared.db import require_current_schema
    from shared.storage import object_store_from_settings

    settings = get_settings()
    years: range = args.years
    try:
        params = BuildParams(
            first_year=years[0],
            last_year=years[-1],
            window=args.window,
            min_posters=args.min_posters,
            seed=args.seed,
            image_size=args.image_size or settings.image_size,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            min_genre_posters=args.min_genre_posters,
            singleton_max_copies=args.singleton_max_copies,
            min_composite_fraction=args.min_composite,
            max_composite_fraction=args.max_composite,
        )
        require_current_schema(settings.effective_database_url)
        with progress_bar(quiet=args.quiet, total=100, desc="dataset", unit="%",
                          bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}") as bar:

            def progress(percent: float, message: str) -> None:
                bar.set_description_str(message, refresh=False)
                bar.update(max(0.0, min(100.0, percent) - bar.n))

            result = build_dataset(params, object_store_from_settings(), progress=progress,
                                   decode_workers=args.workers)
    except DatasetInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print_json(build_summary(result.dataset_id, result.manifest, reused=result.reused))
        return 0
    for line in result.summary_lines():
        print(line)
    return 0


def build_summary(dataset_id: str, manifest: dict[str, Any], reused: bool) -> dict[str, Any]:
    """What ``dataset build --json`` prints: the id, whether it was reused, each target's years and
    movie counts per split, the skipped targets."""
    return {
        "dataset_id": dataset_id,
        "reused": reused,
        "window": manifest.get("window"),
        "genres": manifest.get("genres", []),
        "targets": target_counts(manifest),
        "skipped": manifest.get("skipped", {}),
    }


def target_counts(manifest: dict[str, Any]) -> dict[str, Any]:
    """Each target's years and movie counts per split."""
    return {name: {"years": info["years"], "counts": info["counts"]["movies"]}
            for name, info in manifest["targets"].items()}


def _show(args: argparse.Namespace) -> int:
    from shared.dataset_manifest import DatasetNotFoundError, load_manifest
    from shared.storage import object_store_from_settings

    try:
        manifest = load_manifest(object_store_from_settings(), args.dataset_id)
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {key: manifest[key] for key in ("id", "content_hash", "window", "params", "genres", "skipped")}
    summary["targets"] = target_counts(manifest)
    print(json.dumps(summary, indent=1))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from services.dataset.bench import run_benchmark

    result = run_benchmark(records=args.records, years=args.year_count, seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for window, info in result["windows"].items():
            print(f"{window}: {info['seconds']:.2f} s, {info['targets']} targets")
        print(f"total {result['total_seconds']:.2f} s, peak {result['peak_memory_mib']} MiB")
    return 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction like 0.15, not {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a fraction must be between 0 and 1, not {text}")
    return value


def register(commands: Any, bench: Any) -> None:
    """Add this service's subcommands to the `postergenre` parser."""
    dataset = commands.add_parser("dataset", help="balanced, leak-free, versioned training sets")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True)
    build = dataset_commands.add_parser(
        "build", help="build a dataset version (one target per year or decade); see docs/datasets.md"
    )
    build.add_argument("--years", type=year_span_argument, required=True, help="model years, e.g. 2000-2019")
    build.add_argument(
        "--window",
        choices=["year", "decade", "rolling"],
        default="year",
        help="year: that year; decade: its decade; rolling: year-5 .. year+4",
    )
    build.add_argument("--min-posters", type=int, default=30, help="skip targets with fewer posters")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--image-size", type=int, default=None, help="shard image side (default: settings)")
    build.add_argument("--val-fraction", type=_fraction, default=0.15)
    build.add_argument("--test-fraction", type=_fraction, default=0.15)
    build.add_argument(
        "--min-genre-posters",
        type=int,
        default=3,
        help="leave out of the vocabulary genres with fewer posters in the selection",
    )
    build.add_argument(
        "--singleton-max-copies", type=int, default=3, help="copies of a composite genre seen once in train"
    )
    build.add_argument(
        "--min-composite",
        type=_fraction,
        default=0.01,
        help="oversample composites up to this share of the train split",
    )
    build.add_argument(
        "--max-composite",
        type=_fraction,
        default=0.04,
        help="undersample composites down to this share of the train split",
    )
    build.add_argument("--workers", type=int, default=4, help="threads decoding posters")
    add_output_options(build, "print the summary (dataset id, targets, counts) as JSON")
    build.set_defaults(handler=_build)
    show = dataset_commands.add_parser("show", help="print a version's parameters and split sizes")
    show.add_argument("dataset_id")
    show.set_defaults(handler=_show)

    bench_dataset = bench.add_parser("dataset", help="split+balance time on synthetic movie records")
    bench_dataset.add_argument("--records", type=int, default=100_000)
    bench_dataset.add_argument("--year-count", type=int, default=20)
    bench_dataset.add_argument("--seed", type=int, default=0)
    bench_dataset.add_argument("--json", action="store_true", help="print the result as JSON")
    bench_dataset.set_defaults(handler=_bench)
