"""The models an inference server holds: which versions to load, loading them, hot reload.

:class:`ModelManager` reads ``models.config`` (TF Serving's ``ModelServerConfig``; without one,
every ``<name>/<version>/`` folder under the models directory, latest version of each), loads every
wanted version with TensorFlow and keeps an immutable :class:`ServingState` snapshot. A poll thread
re-reads the config and the version folders; a new version is loaded *before* the snapshot is
swapped, and an old one is closed only after, so a request always finds a loaded model and one that
is running keeps its own reference until it is answered. A version that fails to load is recorded
with its error (the status endpoint reports it by name) and retried only when its folder changes;
the other models keep serving.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.inference.batching import Batcher, Tensors

if TYPE_CHECKING:
    from services.inference.metrics import InferenceMetrics

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
LITERT_SIGNATURE = "pixels"  # the signature the trainer converts to TFLite
BACKENDS = ("tensorflow", "litert")
WARMUP_SIGNATURE = "pixels"


class ErrorCode(Enum):
    """The gRPC status codes a serving error maps to (same names as ``grpc.StatusCode``)."""

    NOT_FOUND = "NOT_FOUND"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class ServingError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class InputSpec:
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...] | None  # None: unknown rank

    def check(self, key: str, value: np.ndarray) -> np.ndarray:
        """Cast ``value`` to the expected dtype and check its shape, or say what is wrong."""
        if value.dtype != self.dtype:
            if value.dtype.kind in "OSU" or self.dtype.kind in "OSU":
                if value.dtype.kind in "OSU" and self.dtype.kind in "OSU":
                    value = value.astype(object)
                else:
                    raise ServingError(
                        ErrorCode.INVALID_ARGUMENT,
                        f"input {key!r} must be {self.dtype.name}, got {value.dtype.name}",
                    )
            else:
                value = value.astype(self.dtype)
        if self.shape is not None:
            expected = self.shape
            if value.ndim != len(expected) or any(
                want is not None and want != got for want, got in zip(expected, value.shape, strict=True)
            ):
                shown = "[" + ", ".join("None" if d is None else str(d) for d in expected) + "]"
                raise ServingError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"input {key!r} must have shape {shown}, got {list(value.shape)}",
                )
            if value.ndim == 0 or value.shape[0] == 0:
                raise ServingError(ErrorCode.INVALID_ARGUMENT, f"input {key!r} holds no examples")
        return value


@dataclass
class Signature:
    name: str
    inputs: dict[str, InputSpec]
    outputs: list[str]
    batcher: Batcher


class Servable:
    """One loaded version of one model, with one batcher per signature."""

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        max_batch_size: int,
        batch_timeout_s: float,
        batch_threads: int = 1,
        backend: str = "tensorflow",
        metrics: InferenceMetrics | None = None,
    ) -> None:
        import tensorflow as tf

        self.name = name
        self.version = version
        self.path = path
        self.backend = "tensorflow"
        self._loaded = tf.saved_model.load(str(path))
        self.signatures: dict[str, Signature] = {}
        for key, function in self._loaded.signatures.items():
            _, specs = function.structured_input_signature
            inputs = {
                arg: InputSpec(
                    np.dtype(spec.dtype.as_numpy_dtype),
                    None if spec.shape.rank is None else tuple(spec.shape.as_list()),
                )
                for arg, spec in specs.items()
            }
            outputs = sorted(function.structured_outputs)
            runner = self._runner(function)
            if key == LITERT_SIGNATURE and backend == "litert":
                runner = self._litert_runner(runner)
            self.signatures[key] = Signature(
                key,
                inputs,
                outputs,
                Batcher(
                    runner,
                    max_batch_size,
                    batch_timeout_s,
                    f"{name}-{version}-{key}",
                    threads=batch_threads,
                    observer=metrics.batch_observer(name, version, key) if metrics else None,
                ),
            )
        if not self.signatures:
            raise ValueError("the SavedModel has no serving signature")
        self.genres = self._read_genres()
        self.warm_up()

    @staticmethod
    def _runner(function: Any) -> Any:
        import tensorflow as tf

        def run(inputs: Tensors) -> Tensors:
            outputs = function(**{key: tf.constant(value) for key, value in inputs.items()})
            return {key: value.numpy() for key, value in outputs.items()}

        return run

    def _litert_runner(self, tensorflow_runner: Any) -> Any:
        """The ``pixels`` signature run by LiteRT from ``exports/model.tflite`` (the trainer's fp32
        export), or TensorFlow's when the version has no TFLite export."""
        tflite = self.path / "exports" / "model.tflite"
        if not tflite.is_file():
            log.info("model %s version %d has no %s: served with TensorFlow", self.name, self.version, tflite)
            return tensorflow_runner
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # the optional `litert` extra is not installed
            log.warning(
                "ai-edge-litert is not installed: model %s version %d served with TensorFlow",
                self.name,
                self.version,
            )
            return tensorflow_runner

        interpreter = Interpreter(model_path=str(tflite), num_threads=os.cpu_count() or 1)
        signature = interpreter.get_signature_runner(LITERT_SIGNATURE)
        lock = threading.Lock()  # an interpreter is not thread-safe; its batcher is its only caller

        def run(inputs: Tensors) -> Tensors:
            with lock:
                outputs = signature(**inputs)
                # Copies: the interpreter reuses its output buffers on the next call.
                return {key: np.array(value) for key, value in outputs.items()}

        self.backend = "litert"
        return run

    def _read_genres(self) -> list[str]:
        path = self.path / "assets.extra" / "genres.json"
        try:
            layout = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        # The trainer writes {"genres": [...], "years": [...], "image_size": S}; a bare list is accepted too.
        genres = layout.get("genres") if isinstance(layout, dict) else layout
        return [str(g) for g in genres] if isinstance(genres, list) else []

    def warm_up(self) -> None:
        """Run one zero example through the pixels signature: the first real request then does not pay
        for graph optimisation, and a model that loads but cannot run fails here, at load time."""
        signature = self.signatures.get(WARMUP_SIGNATURE)
        if signature is None or len(signature.inputs) != 1:
            return
        spec = next(iter(signature.inputs.values()))
        if spec.shape is None or any(d is None for d in spec.shape[1:]):
            return
        dims = [int(d) for d in spec.shape[1:] if d is not None]
        zeros = np.zeros((1, *dims), dtype=spec.dtype)
        signature.batcher.run_batch({next(iter(signature.inputs)): zeros})

    def signature(self, name: str) -> Signature:
        signature = self.signatures.get(name or DEFAULT_SIGNATURE)
        if signature is None:
            raise ServingError(
                ErrorCode.INVALID_ARGUMENT,
                f'Serving signature key "{name or DEFAULT_SIGNATURE}" not found; model '
                f"{self.name} version {self.version} has {sorted(self.signatures)}",
            )
        return signature

    def predict(self, signature_name: str, inputs: Tensors, timeout: float | None) -> Tensors:
        """Validate ``inputs`` against the signature and run them through its batcher."""
        signature = self.signature(signature_name)
        missing = sorted(set(signature.inputs) - set(inputs))
        unknown = sorted(set(inputs) - set(signature.inputs))
        if missing or unknown:
            raise ServingError(
                ErrorCode.INVALID_ARGUMENT,
                f"signature {signature.name!r} of {self.name} takes inputs {sorted(signature.inputs)}"
                f"; missing {missing}, unexpected {unknown}",
            )
        checked = {key: signature.inputs[key].check(key, value) for key, value in inputs.items()}
        if len({value.shape[0] for value in checked.values()}) > 1:
            raise ServingError(ErrorCode.INVALID_ARGUMENT, "inputs disagree on the batch size")
        future = signature.batcher.submit(checked)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            raise ServingError(
                ErrorCode.DEADLINE_EXCEEDED, f"{self.name} version {self.version} did not answer in time"
            ) from None
        except ServingError:
            raise
        except Exception as exc:  # a TensorFlow error on this input
            raise ServingError(
                ErrorCode.INVALID_ARGUMENT if "InvalidArgument" in type(exc).__name__ else ErrorCode.INTERNAL,
                f"{self.name} version {self.version}: {exc}",
            ) from None

    def signature_defs(self) -> Any:
        """The ``SignatureDef`` protos, read from ``saved_model.pb`` (for GetModelMetadata)."""
        from tensorflow.core.protobuf import saved_model_pb2

        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString((self.path / "saved_model.pb").read_bytes())
        return saved.meta_graphs[0].signature_def

    def close(self) -> None:
        for signature in self.signatures.values():
            signature.batcher.close()


@dataclass(frozen=True)
class ModelSource:
    """One entry of the model config: where a model's versions live and which ones to load."""

    name: str
    base_path: Path
    specific_versions: tuple[int, ...] = ()
    latest: int = 1  # used when no specific versions are given; 0 means all
    labels: dict[str, int] = field(default_factory=dict)

    def version_folders(self) -> dict[int, Path]:
        found = {}
        if self.base_path.is_dir():
            for child in self.base_path.iterdir():
                if child.is_dir() and child.name.isdigit():  # hidden .tmp-* staging folders are skipped
                    found[int(child.name)] = child
        if self.specific_versions:
            return {v: p for v, p in found.items() if v in self.specific_versions}
        newest = sorted(found, reverse=True)
        keep = newest if self.latest == 0 else newest[: self.latest]
        return {v: found[v] for v in keep}


def read_model_sources(config_path: Path | None, models_dir: Path) -> list[ModelSource]:
    """The models to serve: from ``models.config`` when it exists, else one per folder."""
    if config_path is not None and config_path.is_file():
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        config = text_format.Parse(config_path.read_text(), model_server_config_pb2.ModelServerConfig())
        sources = []
        for entry in config.model_config_list.config:
            base = Path(entry.base_path)
            if not base.is_absolute():
                base = config_path.parent / base
            policy = entry.model_version_policy
            which = policy.WhichOneof("policy_choice")
            specific = tuple(policy.specific.versions) if which == "specific" else ()
            latest = 0 if which == "all" else (policy.latest.num_versions or 1)
            sources.append(ModelSource(entry.name, base, specific, latest, dict(entry.version_labels)))
        return sources
    if not models_dir.is_dir():
        return []
    return [
        ModelSource(child.name, child)
        for child in sorted(models_dir.iterdir())
        if child.is_dir() and not child.name.startswith(".")
    ]


@dataclass(frozen=True)
class LoadFailure:
    version: int
    path: Path
    error: str
    stamp: tuple[float, ...]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    versions: dict[int, Servable]
    labels: dict[str, int]
    failures: dict[int, LoadFailure]


@dataclass(frozen=True)
class ServingState:
    models: dict[str, ModelEntry]


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # AVAILABLE or END (failed to load), as TF Serving's ModelVersionStatus.State
    error: str = ""


def folder_stamp(path: Path) -> tuple[float, ...]:
    """Changes when a version folder is replaced or rewritten, so a failed load is retried then."""
    try:
        stamps = [path.stat().st_mtime]
        stamps += [child.stat().st_mtime for child in sorted(path.iterdir())]
    except OSError:
        return ()
    return tuple(stamps)


class ModelManager:
    """Loads, serves and hot-reloads the models of a config file or a models folder."""

    def __init__(
        self,
        models_dir: Path,
        config_path: Path | None,
        max_batch_size: int = 32,
        batch_timeout_s: float = 0.002,
        poll_seconds: float = 1.0,
        load_threads: int = 4,
        batch_threads: int = 1,
        backend: str = "litert",
        metrics: InferenceMetrics | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.backend = backend
        self.models_dir = models_dir
        self.config_path = config_path
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_s
        self.poll_seconds = poll_seconds
        self.load_threads = load_threads
        self.batch_threads = batch_threads
        self.metrics = metrics
        self._state = ServingState({})
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> ServingState:
        return self._state

    def refresh(self) -> None:
        """Bring the loaded versions in line with the config and the folders (load, swap, unload)."""
        with self._refresh_lock:
            try:
                sources = read_model_sources(self.config_path, self.models_dir)
            except Exception as exc:  # a bad config keeps the models that are serving
                log.error("cannot read model config %s: %s; keeping the loaded models", self.config_path, exc)
                return
            old = self._state
            plan: list[tuple[ModelSource, dict[int, Servable], dict[int, LoadFailure]]] = []
            to_load: list[tuple[str, int, Path, tuple[float, ...]]] = []
            for source in sources:
                previous = old.models.get(source.name)
                versions: dict[int, Servable] = {}
                failures: dict[int, LoadFailure] = {}
                for version, path in sorted(source.version_folders().items()):
                    loaded = previous.versions.get(version) if previous else None
                    if loaded is not None and loaded.path == path:
                        versions[version] = loaded
                        continue
                    stamp = folder_stamp(path)
                    failed = previous.failures.get(version) if previous else None
                    if failed is not None and failed.stamp == stamp:
                        failures[version] = failed
                        continue
                    to_load.append((source.name, version, path, stamp))
                plan.append((source, versions, failures))
            # Loading is mostly file reading and graph building: a few at once shortens a cold start.
            with ThreadPoolExecutor(max_workers=max(1, min(self.load_threads, len(to_load)))) as pool:
                outcomes = list(pool.map(lambda job: self._load(*job), to_load))
            loaded_now = {(job[0], job[1]): outcome for job, outcome in zip(to_load, outcomes, strict=True)}
            models: dict[str, ModelEntry] = {}
            for source, versions, failures in plan:
                for (name, version), outcome in loaded_now.items():
                    if name != source.name:
                        continue
                    if isinstance(outcome, LoadFailure):
                        failures[version] = outcome
                    else:
                        versions[version] = outcome
                models[source.name] = ModelEntry(source.name, versions, source.labels, failures)
            self._state = ServingState(models)  # the swap: requests from now on see the new versions
            kept = {id(s) for entry in models.values() for s in entry.versions.values()}
            for entry in old.models.values():
                for servable in entry.versions.values():
                    if id(servable) not in kept:
                        log.info("unloading model %s version %d", servable.name, servable.version)
                        servable.close()
                        if self.metrics is not None:
                            self.metrics.unload(servable.name)

    def _load(self, name: str, version: int, path: Path, stamp: tuple[float, ...]) -> Servable | LoadFailure:
        # A reload: the model already serves (or tried) a version, this one arrives while it runs.
        kind = "reload" if name in self._state.models else "load"
        started = time.monotonic()
        try:
            servable = Servable(
                name,
                version,
                path,
                self.max_batch_size,
                self.batch_timeout_s,
                self.batch_threads,
                self.backend,
                self.metrics,
            )
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}".strip()[:2000]
            log.error("model %s version %d failed to load from %s: %s", name, version, path, message)
            if self.metrics is not None:
                self.metrics.load(name, version, kind, False, time.monotonic() - started)
            return LoadFailure(version, path, message, stamp)
        log.info("loaded model %s version %d from %s", name, version, path)
        if self.metrics is not None:
            self.metrics.load(name, version, kind, True, time.monotonic() - started)
        return servable

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for a request: a given version, a labelled one, or the newest loaded."""
        entry = self._state.models.get(name)
        if entry is None:
            raise ServingError(
                ErrorCode.NOT_FOUND, f"Servable not found for request: model {name!r} is not served"
            )
        if label:
            if label not in entry.labels:
                raise ServingError(ErrorCode.NOT_FOUND, f"model {name!r} has no version labelled {label!r}")
            version = entry.labels[label]
        if version is not None:
            servable = entry.versions.get(version)
            if servable is None:
                reason = entry.failures[version].error if version in entry.failures else "not loaded"
                raise ServingError(
                    ErrorCode.NOT_FOUND,
                    f"Servable not found for request: model {name!r} version {version} ({reason})",
                )
            return servable
        if not entry.versions:
            reasons = "; ".join(f"version {f.version}: {f.error}" for f in entry.failures.values())
            raise ServingError(
                ErrorCode.NOT_FOUND,
                f"Servable not found for request: no version of model {name!r} is loaded"
                + (f" (failed to load: {reasons})" if reasons else ""),
            )
        return entry.versions[max(entry.versions)]

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        entry = self._state.models.get(name)
        if entry is None:
            raise ServingError(ErrorCode.NOT_FOUND, f"Could not find any versions of model {name}")
        if label:
            if label not in entry.labels:
                raise ServingError(ErrorCode.NOT_FOUND, f"model {name!r} has no version labelled {label!r}")
            version = entry.labels[label]
        statuses = [VersionStatus(v, "AVAILABLE") for v in entry.versions]
        statuses += [VersionStatus(f.version, "END", f.error) for f in entry.failures.values()]
        if version is not None:
            statuses = [s for s in statuses if s.version == version]
        if not statuses:
            raise ServingError(
                ErrorCode.NOT_FOUND,
                f"Could not find version {version} of model {name}"
                if version is not None
                else f"Could not find any versions of model {name}",
            )
        return sorted(statuses, key=lambda s: s.version)

    def failures(self) -> dict[str, list[LoadFailure]]:
        """Models with versions that failed to load, by name."""
        return {
            name: list(entry.failures.values())
            for name, entry in self._state.models.items()
            if entry.failures
        }

    def start_polling(self) -> None:
        if self._thread is not None or self.poll_seconds <= 0:
            return
        self._thread = threading.Thread(target=self._poll, name="model-poller", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # never let the poller die: the next poll tries again
                log.exception("model refresh failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._refresh_lock:
            for entry in self._state.models.values():
                for servable in entry.versions.values():
                    servable.close()
            self._state = ServingState({})
