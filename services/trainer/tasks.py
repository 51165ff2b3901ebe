"""Celery task ``postergenre.train``: one model per task, on the ``gpu`` queue.

The task is acknowledged late, so a worker killed mid-training leaves the message to another worker
(at once with the prefork pool's ``reject_on_worker_lost``; after ``broker_visibility_timeout`` when the
whole worker dies on Redis). The redelivered task finds the checkpoint uploaded after the last epoch
and continues from there. It registers at most one model version: the version row is keyed by the
task id (unique in ``model_versions``), and every step after training checks what is already done.

After training: export (:func:`services.trainer.export.export_all`) into a temporary folder, upload it
under ``models/<name>/<version>/`` (immutable), record the exports and metrics in the registry, bless
when the bless rule allows, and let the inference service pick the blessed versions up.

Worker announcement: a worker that imports this module writes ``<home>/celery/workers/<pid>.json``
while it runs, so that ``postergenre train`` and the web service in embedded mode know whether a local
worker exists (``shared.celery_app.local_workers``).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import tempfile
from pathlib import Path
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown

from shared.celery_app import celery_app, workers_dir
from shared.config import Settings, get_settings
from shared.jobs import update_job
from shared.queues import TRAIN_TASK
from shared.storage import ObjectExistsError, ObjectStore
from shared.training_plan import EXPORT_FORMATS

logger = logging.getLogger(__name__)

TRAINING_SHARE = 90.0  # progress percent spent training; the rest is export and registration
FEATURES_SHARE = 0.3  # features strategy with a fine-tune: share of training before the first epoch


@worker_ready.connect
def _announce_worker(sender: Any = None, **_kwargs: Any) -> None:
    try:
        queues = sorted(sender.app.amqp.queues.consume_from) if sender is not None else []
    except AttributeError:
        queues = []
    folder = workers_dir(get_settings())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{os.getpid()}.json").write_text(json.dumps({"pid": os.getpid(), "queues": queues}))


@worker_shutdown.connect
def _retract_worker(**_kwargs: Any) -> None:
    (workers_dir(get_settings()) / f"{os.getpid()}.json").unlink(missing_ok=True)


def available_formats(requested: list[str] | None) -> list[str]:
    """The requested export formats; by default all of them, TF.js only where its converter is installed."""
    from services.trainer import export

    if requested:
        return list(requested)
    formats = list(EXPORT_FORMATS)
    try:
        export.tfjs_converter_path()
    except export.ExportError as exc:
        logger.warning("no TF.js export: %s", exc)
        formats.remove("tfjs")
    return formats


def content_type_of(path: Path) -> str:
    if path.suffix == ".json":
        return "application/json"
    if path.suffix == ".png":
        return "image/png"
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def upload_version(store: Any, folder: Path, prefix: str) -> list[str]:
    """Upload a version folder, immutable (``overwrite=False``), with explicit content types."""
    keys = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            store.put(key, path.read_bytes(), content_type=content_type_of(path), overwrite=False)
            keys.append(key)
    return keys


def export_model(model: Any, dest: Path, image_size: int, sample_pixels: Any, formats: list[str],
                 metadata: dict[str, Any], outcome: Any = None) -> dict[str, Any]:
    """Export one version; with the training ``outcome``, the full-integer LiteRT model too,
    calibrated on its training posters and checked on its test posters."""
    from services.trainer.export import AgreementSplit, export_all

    kwargs: dict[str, Any] = {"sample_pixels": sample_pixels, "formats": tuple(formats), "metadata": metadata}
    if outcome is not None and outcome.calibration_pixels is not None:
        kwargs["calibration_pixels"] = outcome.calibration_pixels
        test = outcome.test_split
        if test is not None and len(test.labels):
            kwargs["agreement_split"] = AgreementSplit(test.pixels, test.labels, test.heads)
    return dict(export_all(model, dest, image_size, **kwargs))


def served_within(settings: Settings) -> str:
    """What a blessing or a rollback means for the servers: the inference side watches the registry
    (docs/architecture.md, "The model sync"), so nothing is synced from here."""
    return (f"the inference servers serve it within {settings.model_sync_interval_s:g} s "
            "(they watch the registry)")


def _progress_reporter(job_id: str, epochs: int, resumed_from: int, start: float = 0.0) -> Any:
    def report(epoch: int, batch: int, batches: int, logs: dict[str, float]) -> None:
        done = start + (1.0 - start) * (epoch - 1 + (batch / batches if batch else 1.0)) / max(1, epochs)
        counts: dict[str, Any] = {"epoch": epoch, "epochs": epochs, "batch": batch or batches,
                                  "batches": batches, "metrics": {k: round(v, 5) for k, v in logs.items()}}
        if resumed_from:
            counts["resumed_from_epoch"] = resumed_from
        update_job(job_id, state="PROGRESS", progress=TRAINING_SHARE * done, counts=counts)

    return report


def _stage_reporter(job_id: str, finetune_epochs: int) -> Any:
    """Progress of the features strategy's steps before any epoch: features, then heads."""
    # With a fine-tune after the heads, the epochs' reporter takes the share after this one.
    share = TRAINING_SHARE * (1.0 if finetune_epochs == 0 else FEATURES_SHARE)

    def report(name: str, done: int, total: int, logs: dict[str, float]) -> None:
        fraction = done / max(1, total)
        part = 0.8 * fraction if name == "features" else 0.8 + 0.2 * fraction
        counts: dict[str, Any] = {"stage": name, "done": done, "total": total}
        if name == "heads":
            counts.update({"epoch": done, "epochs": total,
                           "metrics": {k: round(v, 5) for k, v in logs.items()}})
        update_job(job_id, state="PROGRESS", progress=share * part, counts=counts)

    return report


class VersionTakenError(RuntimeError):
    """The object store already holds this model version, written by another training."""


def claim_version_prefix(store: ObjectStore, prefix: str, job_id: str) -> None:
    """Record that ``job_id`` writes ``prefix``, or refuse when another task (or nobody known) did.

    The registry gives version numbers; if the database were restored from a backup older than the
    object store, a new training could be given the number of a version that exists in the store.
    Objects there are only ever replaced by a redelivery of the task that claimed them.
    """
    claim = f"model-claims/{prefix.removeprefix('models/')}"
    try:
        store.put(claim, job_id.encode(), content_type="text/plain", overwrite=False)
    except ObjectExistsError:
        owner = store.get(claim).decode()
        if owner != job_id:
            raise VersionTakenError(f"{prefix} belongs to training {owner}; not overwriting it") from None
        return
    if any(True for _ in store.list(prefix + "/")):
        store.delete(claim)
        raise VersionTakenError(f"{prefix} already holds objects of an unknown training; refusing to "
                                "overwrite it (is the database older than the object store?)")


def run_training(job_id: str, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Train, export, upload, register and (maybe) bless one model. Safe to run again for ``job_id``."""
    from services.trainer import checkpoints, training
    from shared import registry
    from shared.hyperparameters import Hyperparameters
    from shared.storage import object_store_from_settings

    store = object_store_from_settings()
    name = str(params["model_name"])
    done = registry.find_by_task(job_id)
    if done is not None and done["exports"]:
        logger.info("task %s already registered %s version %s", job_id, name, done["version"])
        return finish(job_id, done, params, settings)

    request = training.TrainRequest(task_id=job_id, dataset_id=str(params["dataset_id"]),
                                    targets=[str(t) for t in params["targets"]], layout=str(params["layout"]),
                                    model_name=name, hp=Hyperparameters.from_dict(params["hyperparameters"]))
    formats = available_formats(params.get("formats"))
    resumed_from = _checkpoint_epoch(store, settings, job_id)
    if resumed_from:
        update_job(job_id, state="PROGRESS", counts={"resumed_from_epoch": resumed_from})
    features = request.hp.strategy == "features"
    progress = _progress_reporter(job_id, request.hp.epochs, resumed_from,
                                  start=FEATURES_SHARE if features else 0.0)
    stage = _stage_reporter(job_id, request.hp.epochs) if features else None
    with tempfile.TemporaryDirectory(prefix=f"train-{job_id[:8]}-") as tmp:
        outcome = training.train(request, store, settings.home_dir, Path(tmp) / "work", progress=progress,
                                 stage=stage)
        update_job(job_id, progress=TRAINING_SHARE,
                   counts={"epochs_run": outcome.epochs_run, "stage": "export"})

        architecture = request.hp.architecture
        target = request.targets[0]
        row = registry.register(
            name=name, task_id=job_id, year=int(target) if request.layout != "shared" and target.isdigit()
            else None, window=outcome.window, layout=request.layout, architecture=architecture,
            image_size=outcome.image_size, dataset_version=request.dataset_id, genres=outcome.genres,
            years=outcome.years, metrics=_json_safe(outcome.metrics), status_reason="exporting")
        version = int(row["version"])
        prefix = f"models/{name}/{version}"
        claim_version_prefix(store, prefix, job_id)
        # A previous delivery of this same task may have died half-way through its upload.
        for key in list(store.list(prefix + "/")):
            store.delete(key)
        dest = Path(tmp) / "export" / name / str(version)
        metadata = {"name": name, "version": version, "genres": outcome.genres, "years": outcome.years,
                    "layout": request.layout, "architecture": architecture, "image_size": outcome.image_size,
                    "dataset_version": request.dataset_id, "window": outcome.window, "task_id": job_id}
        exports = export_model(outcome.model, dest, outcome.image_size, outcome.sample_pixels, formats,
                               metadata, outcome)
        for file_name in outcome.files.values():
            (dest / file_name).write_bytes((outcome.work_dir / file_name).read_bytes())
        tensorboard = outcome.work_dir / "tensorboard"
        upload_version(store, dest, prefix)
        if tensorboard.is_dir():
            upload_version(store, tensorboard, f"{prefix}/tensorboard")
        exports = {**_json_safe(exports), "prefix": prefix, "reports": outcome.files}
        # The int8 verdict is also a metric of the version (the server reads its copy in the folder).
        metrics = {**(row.get("metrics") or {}), "int8_check": exports["full_int8"]} \
            if "full_int8" in exports else None
        row = registry.update(name, version, exports=exports, metrics=metrics, status_reason="exported")
        checkpoints.delete_checkpoint(store, checkpoints.checkpoint_dir(settings.home_dir, job_id), job_id)
    return finish(job_id, row, params, settings)


def finish(job_id: str, row: dict[str, Any], params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Bless (when asked and allowed) and report the result on the job."""
    from services.trainer import metrics
    from shared import registry

    if params.get("bless", True) and row["status"] == "candidate" and \
            not str(row["status_reason"]).startswith("not blessed"):
        row = registry.bless(row["name"], row["version"],
                             tolerance=float(params.get("tolerance", registry.DEFAULT_TOLERANCE)))
    sync = served_within(settings) if row["status"] == "blessed" else "not blessed: nothing to serve"
    test = (row.get("metrics") or {}).get("test") or {}
    baselines = ((row.get("metrics") or {}).get("baselines") or {}).get("test") or {}
    result = {
        "model": row["name"], "version": row["version"], "status": row["status"],
        "status_reason": row["status_reason"], "sync": sync,
        "epochs_run": (row.get("metrics") or {}).get("epochs_run"),
        "resumed_from_epoch": ((row.get("metrics") or {}).get("resumed_from_epochs") or [0])[-1],
        "test": metrics.summary(test) if test else {},
        "baselines": {name: metrics.summary(values) for name, values in baselines.items()},
    }
    update_job(job_id, state="SUCCESS", progress=100.0, result=result)
    return result


def _checkpoint_epoch(store: Any, settings: Settings, job_id: str) -> int:
    from services.trainer import checkpoints

    state = checkpoints.fetch_checkpoint(store, checkpoints.checkpoint_dir(settings.home_dir, job_id), job_id)
    return int((state or {}).get("epoch", 0))


def _json_safe(value: Any) -> Any:
    from services.trainer.reports import json_safe

    return json.loads(json.dumps(json_safe(value), default=str))


@celery_app.task(name=TRAIN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def train(self: Task, params: dict[str, Any]) -> dict[str, Any]:
    """Train one model (see :func:`run_training`); ``params`` is what ``postergenre train`` sends."""
    job_id = str(self.request.id)
    settings = get_settings()
    # The pid and host say which worker runs it (a test kills exactly that one).
    update_job(job_id, state="STARTED", counts={"worker": str(self.request.hostname), "pid": os.getpid()})
    try:
        return run_training(job_id, params, settings)
    except Exception as exc:
        logger.exception("training task %s failed", job_id)
        update_job(job_id, state="FAILURE", error=f"{type(exc).__name__}: {exc}")
        raise
