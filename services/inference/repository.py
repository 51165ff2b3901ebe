"""The local model repository that TF Serving (or the embedded server) serves from.

The registry (``shared.db.ModelVersion``) says which version of each model is served: its blessed
version, labelled ``stable``, and optionally its newest candidate, labelled ``canary``.
:func:`sync_models` copies those versions from the object store into ``settings.models_dir`` in TF
Serving's layout (``<name>/<version>/saved_model.pb``) and writes ``models.config`` (with
``batching.config`` and ``monitoring.config``, TF Serving's other start-up files); TF Serving polls
that file (``--model_config_file_poll_wait_seconds``) and the embedded server polls it too, so a
blessing or a rollback reaches the servers without a restart.

Only the inference side calls :func:`sync_models`: the embedded server at its start and then through
its :class:`RegistryWatcher`, and the model-sync sidecar beside TF Serving. Nothing that changes the
registry (the trainer, the admin rollback) triggers a sync; the watcher notices the change within
``settings.model_sync_interval_s`` (docs/architecture.md, "The model sync").

Writes are atomic: a version folder is downloaded into a hidden temporary folder and renamed into
place, and ``models.config`` is written to a temporary file and renamed, so a poller never sees a
half-copied model or a truncated config.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from sqlalchemy import select

from services.inference.metrics import PROMETHEUS_PATH
from shared.config import Settings
from shared.db import ModelVersion, session_scope
from shared.files import write_text_atomically
from shared.models import RegistryFingerprint, registry_fingerprint, version_prefix
from shared.storage import ObjectStore, download_prefix, object_store_from_settings

log = logging.getLogger(__name__)

STABLE_LABEL = "stable"
CANARY_LABEL = "canary"
BATCHING_CONFIG_NAME = "batching.config"
MONITORING_CONFIG_NAME = "monitoring.config"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
PIXELS_SIGNATURE = "pixels"


@dataclass(frozen=True)
class ServedModel:
    """One model name and the versions the servers should load for it."""

    name: str
    image_size: int
    labels: dict[str, int] = field(default_factory=dict)
    # Each served version's object-store prefix (shared.models.version_prefix).
    prefixes: dict[int, str] = field(default_factory=dict)

    @property
    def versions(self) -> list[int]:
        return sorted(set(self.labels.values()))


def served_models(rows: list[ModelVersion], with_canary: bool = False) -> list[ServedModel]:
    """Decide what to serve from the registry rows: the blessed version of every name (``stable``)
    and, with ``with_canary``, its newest candidate newer than that (``canary``).

    A name without a blessed version is not served: a plain request (no version, no label) gets the
    newest loaded version, and that must never be an unblessed candidate.
    """
    by_name: dict[str, list[ModelVersion]] = {}
    for row in rows:
        by_name.setdefault(row.name, []).append(row)
    models = []
    for name in sorted(by_name):
        versions = by_name[name]
        blessed = [row for row in versions if row.status == "blessed"]
        if not blessed:
            log.info("model %s has no blessed version; not served", name)
            continue
        stable = max(blessed, key=lambda row: row.version)
        labels = {STABLE_LABEL: stable.version}
        if with_canary:
            candidates = [
                row for row in versions if row.status == "candidate" and row.version > stable.version
            ]
            if candidates:
                labels[CANARY_LABEL] = max(candidates, key=lambda row: row.version).version
        prefixes = {row.version: version_prefix(name, row.version, row.exports) for row in versions
                    if row.version in labels.values()}
        models.append(ServedModel(name=name, image_size=stable.image_size, labels=labels, prefixes=prefixes))
    return models


def model_server_config_text(models: list[ServedModel], models_dir: Path) -> str:
    """The text-format ``ModelServerConfig`` (TF Serving's ``--model_config_file``)."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for model in models:
        entry = config.model_config_list.config.add()
        entry.name = model.name
        entry.base_path = str(models_dir / model.name)
        entry.model_platform = "tensorflow"
        entry.model_version_policy.specific.versions.extend(model.versions)
        for label, version in model.labels.items():
            entry.version_labels[label] = version
    return text_format.MessageToString(config)


def batching_parameters_text(max_batch_size: int, batch_timeout_ms: float, num_batch_threads: int) -> str:
    """TF Serving's ``--batching_parameters_file`` (text-format ``BatchingParameters``).

    The message is not in the ``tensorflow-serving-api`` wheel, so it is written by hand; the field
    names are those of ``tensorflow_serving/servables/tensorflow/session_bundle_config.proto``.
    """
    return (
        f"max_batch_size {{ value: {max_batch_size} }}\n"
        f"batch_timeout_micros {{ value: {int(batch_timeout_ms * 1000)} }}\n"
        f"max_enqueued_batches {{ value: 1000 }}\n"
        f"num_batch_threads {{ value: {num_batch_threads} }}\n"
        f"pad_variable_length_inputs: false\n"
    )


def monitoring_config_text(path: str = PROMETHEUS_PATH) -> str:
    """TF Serving's ``--monitoring_config_file`` (text-format ``MonitoringConfig``): Prometheus
    metrics on the REST port at ``path``.

    Like ``BatchingParameters``, the message is not in the ``tensorflow-serving-api`` wheel, so it is
    written by hand after ``tensorflow_serving/config/monitoring_config.proto``.
    """
    return f'prometheus_config {{\n  enable: true\n  path: "{path}"\n}}\n'


def parse_model_server_config(text: str) -> object:
    """Parse a ``models.config`` text back into a ``ModelServerConfig`` message."""
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one rename; an unchanged file is left alone (no poller churn)."""
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    write_text_atomically(path, text)


def write_warmup_requests(version_dir: Path, name: str, image_size: int) -> None:
    """Write ``assets.extra/tf_serving_warmup_requests``: TF Serving runs it on load, so the first
    real request does not pay for graph optimisation."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = PIXELS_SIGNATURE
    request.inputs[PIXELS_SIGNATURE].CopyFrom(
        tf.make_tensor_proto(np.zeros((1, image_size, image_size, 3), np.float32))
    )
    record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(record.SerializeToString())


def copy_version(store: ObjectStore, model: ServedModel, version: int, models_dir: Path) -> Path | None:
    """Copy the version's objects (``models/<name>/<version>/`` unless its registry row says where)
    into ``models_dir/<name>/<version>/`` unless already there.

    Versions are immutable, so a folder that exists is complete (it only appears by rename).
    Returns the folder, or None when the object store has no such version.
    """
    dest = models_dir / model.name / str(version)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".tmp-{version}-"))
    try:
        source = model.prefixes.get(version) or version_prefix(model.name, version, None)
        files = download_prefix(store, source + "/", staging)
        if not files:
            log.error(
                "model %s version %s is in the registry but not in the object store", model.name, version
            )
            return None
        if not (staging / WARMUP_FILE).exists():
            write_warmup_requests(staging, model.name, model.image_size)
        os.rename(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("copied model %s version %s to %s", model.name, version, dest)
    return dest


def prune_versions(models: list[ServedModel], models_dir: Path) -> list[Path]:
    """Delete the local copies of versions no longer served (after the config stopped listing them).

    The servers hold a loaded version in memory, so removing its folder does not disturb a request;
    the object store keeps every version, and a rollback copies it back.
    """
    removed = []
    for model in models:
        for child in (models_dir / model.name).iterdir():
            if child.is_dir() and child.name.isdigit() and int(child.name) not in model.versions:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
                log.info("removed model %s version %s (no longer served)", model.name, child.name)
    return removed


def sync_models(settings: Settings, with_canary: bool = False, store: ObjectStore | None = None,
                progress: Callable[[], None] | None = None) -> Path:
    """Copy the served versions of every registered model and write ``models.config``.

    Called by the inference side only (:class:`RegistryWatcher`, the model-sync sidecar). Returns the
    path of ``models.config``.
    ``progress`` is called after each model's copy: the sync sidecar touches its liveness file there,
    so that a long first copy of many versions is not mistaken for a hung process.
    """
    return sync_served_versions(settings, with_canary, store, progress).config_path


@dataclass(frozen=True)
class SyncOutcome:
    config_path: Path
    # "<name> v<version>" of each served version the object store did not have (left out, logged).
    missing: list[str]


def sync_served_versions(settings: Settings, with_canary: bool = False, store: ObjectStore | None = None,
                         progress: Callable[[], None] | None = None) -> SyncOutcome:
    """:func:`sync_models`, also saying which served versions could not be copied (so a watcher
    tries them again instead of taking the registry as served)."""
    if store is None:
        store = object_store_from_settings(settings)
    with session_scope(settings.effective_database_url) as session:
        rows = list(session.scalars(select(ModelVersion)))
        models = served_models(rows, with_canary=with_canary)
    models_dir = settings.models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    available = []
    missing = []
    for model in models:
        labels = {}
        for label, version in model.labels.items():
            if copy_version(store, model, version, models_dir) is not None:
                labels[label] = version
            else:
                missing.append(f"{model.name} v{version}")
        if labels:
            available.append(ServedModel(model.name, model.image_size, labels, model.prefixes))
        if progress is not None:
            progress()
    write_atomically(
        models_dir / BATCHING_CONFIG_NAME,
        batching_parameters_text(settings.inference_max_batch_size, settings.inference_batch_timeout_ms,
                                 settings.inference_batch_threads),
    )
    write_atomically(models_dir / MONITORING_CONFIG_NAME, monitoring_config_text())
    write_atomically(settings.models_config_path, model_server_config_text(available, models_dir))
    prune_versions(available, models_dir)
    log.info(
        "models.config lists %d models: %s",
        len(available),
        ", ".join(f"{m.name}@{m.labels}" for m in available),
    )
    return SyncOutcome(settings.models_config_path, missing)


class RegistryWatcher:
    """Keeps ``settings.models_dir`` in step with the registry: every ``interval_s`` seconds a
    fingerprint query (:func:`registry_fingerprint`), and a :func:`sync_models` only when it changed.

    A failed sync, or one that found a served version missing from the object store, records
    nothing, so the next round tries again; a failed round is logged and never
    ends the watch (the servers keep serving the last ``models.config``).
    """

    def __init__(self, settings: Settings, interval_s: float | None = None, with_canary: bool = False,
                 store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.interval_s = settings.model_sync_interval_s if interval_s is None else interval_s
        self.with_canary = with_canary
        self._store = store
        self._synced: RegistryFingerprint | None = None
        # One sync at a time: the watch thread and a caller (a start, a test) may both ask.
        self._sync_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def sync_if_changed(self, progress: Callable[[], None] | None = None) -> bool:
        """Sync when the served versions changed since the last successful sync (or never synced);
        True when it synced. Raises what the query or the sync raised."""
        with self._sync_lock:
            fingerprint = registry_fingerprint(self.settings.effective_database_url, self.with_canary)
            if fingerprint == self._synced:
                return False
            if self._store is None:
                self._store = object_store_from_settings(self.settings)
            outcome = sync_served_versions(self.settings, self.with_canary, self._store, progress)
            if outcome.missing:  # not in the store yet: the next round copies what has arrived
                log.warning("not in the object store yet, tried again in %.1f s: %s", self.interval_s,
                            ", ".join(outcome.missing))
            else:
                self._synced = fingerprint
            return True

    def start(self) -> None:
        """Watch in a daemon thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._watch, name="registry-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                if self.sync_if_changed():
                    log.info("the registry changed: models synced")
            except Exception:  # the database or the store is down: try again next round
                log.exception("model sync from the registry failed; retrying in %.1f s", self.interval_s)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
