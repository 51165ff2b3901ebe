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


LITERT_FLOAT_FILE = "model.tflite"  # the trainer's fp32 export
LITERT_INT8_FILE = "model_full_int8.tflite"  # its integer export (int8, outlier layers float)
LITERT_INT8_CHECK_FILE = "model_full_int8.json"  # the trainer's agreement verdict on that export


def int8_verdict(path: Path) -> dict[str, Any] | None:
    """The version's recorded int8 agreement check (``exports/model_full_int8.json``), if readable."""
    try:
        verdict = json.loads((path / "exports" / LITERT_INT8_CHECK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return verdict if isinstance(verdict, dict) else None


def litert_model_file(path: Path, prefer_float: bool = False) -> Path | None:
    """The LiteRT file to serve a version from: the full-integer model when the trainer's agreement
    check passed on it (and the operator does not prefer float), else the fp32 one; None if neither.

    The verdict is read from the version folder, written there at export time, not from the registry:
    the inference server has no database in the stack, and the folder is what it serves.
    """
    exports = path / "exports"
    if not prefer_float and (exports / LITERT_INT8_FILE).is_file():
        verdict = int8_verdict(path)
        if verdict is not None and verdict.get("passed") is True:
            return exports / LITERT_INT8_FILE
    if (exports / LITERT_FLOAT_FILE).is_file():
        return exports / LITERT_FLOAT_FILE
    return None


MADV_DONTNEED = 4  # Linux <sys/mman.h>


def release_mapped_file(path: Path) -> int:
    """Drop this process's resident pages of ``path``'s memory mappings; returns the bytes released.

    LiteRT maps the .tflite file and XNNPACK packs the weights into its own buffers when the
    interpreter is prepared, after which the mapped weights are no longer read by the delegated
    operators: without this, each version would keep both copies resident. The mapping is read-only
    and backed by the file, so a page read again later (an operator XNNPACK does not run) is simply
    faulted back in from the file. Linux only; elsewhere nothing is released.
    """
    import ctypes
    import ctypes.util

    try:
        maps = Path("/proc/self/maps").read_text()
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return 0
    target = str(path.resolve())
    released = 0
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5] != target or "w" in fields[1]:
            continue
        start, end = (int(value, 16) for value in fields[0].split("-"))
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED) == 0:
            released += end - start
    return released


def _input_spec(info: Any) -> InputSpec:
    """An ``InputSpec`` from a SignatureDef's ``TensorInfo`` (read without loading the model)."""
    from tensorflow.python.framework import dtypes

    dtype = np.dtype(dtypes.as_dtype(info.dtype).as_numpy_dtype)
    shape = info.tensor_shape
    dims = None if shape.unknown_rank else tuple(None if d.size < 0 else int(d.size) for d in shape.dim)
    return InputSpec(dtype, dims)


class Servable:
    """One loaded version of one model, with one batcher per signature.

    Each version is held once, in the backend that serves it. With ``backend="litert"`` and a
    LiteRT export, only the LiteRT interpreter is loaded: the signatures are read from
    ``saved_model.pb`` (a few kB of protobuf), and the SavedModel's variables are loaded only if a
    client calls a signature LiteRT does not serve (the bytes signature ``serving_default``; the web
    service sends pixels). Holding both, as before, cost about three copies of the weights per version
    (TF variables, the mapped .tflite file, XNNPACK's packed copy).
    """

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
        prefer_float: bool = False,
        release_mapped_weights: bool = True,  # False only to measure what releasing them saves
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.backend = "tensorflow"
        self.litert_file: Path | None = None  # the LiteRT model serving ``pixels``, when one does
        self._loaded: Any = None
        self._load_lock = threading.Lock()
        litert = self._litert_runner(prefer_float) if backend == "litert" else None
        if litert is None:
            specs = self._load_signatures()
        else:
            specs = self._read_signatures()
        self.signatures: dict[str, Signature] = {}
        for key, (inputs, outputs) in specs.items():
            runner = litert if key == LITERT_SIGNATURE and litert is not None else None
            runner = runner or self._tensorflow_runner(key)
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
        if litert is not None and LITERT_SIGNATURE not in self.signatures:
            raise ValueError(f"the SavedModel has no {LITERT_SIGNATURE!r} signature for its LiteRT export")
        self.genres = self._read_genres()
        self.warm_up()
        if self.litert_file is not None and release_mapped_weights:  # XNNPACK has packed its own copy by now
            release_mapped_file(self.litert_file)

    @property
    def precision(self) -> str:
        """``int8`` when the full-integer LiteRT model serves ``pixels``, else ``float32``."""
        int8 = self.litert_file is not None and self.litert_file.name == LITERT_INT8_FILE
        return "int8" if int8 else "float32"

    def _saved_model(self) -> Any:
        """The SavedModel loaded by TensorFlow, once (at construction for the tensorflow backend,
        on the first call of a signature LiteRT does not serve otherwise)."""
        with self._load_lock:
            if self._loaded is None:
                import tensorflow as tf

                if self.litert_file is not None:
                    log.info("model %s version %d: loading the SavedModel for a signature LiteRT does "
                             "not serve", self.name, self.version)
                self._loaded = tf.saved_model.load(str(self.path))
            return self._loaded

    def _load_signatures(self) -> dict[str, tuple[dict[str, InputSpec], list[str]]]:
        specs = {}
        for key, function in self._saved_model().signatures.items():
            _, inputs = function.structured_input_signature
            specs[key] = (
                {
                    arg: InputSpec(
                        np.dtype(spec.dtype.as_numpy_dtype),
                        None if spec.shape.rank is None else tuple(spec.shape.as_list()),
                    )
                    for arg, spec in inputs.items()
                },
                sorted(function.structured_outputs),
            )
        return specs

    def _read_signatures(self) -> dict[str, tuple[dict[str, InputSpec], list[str]]]:
        return {
            key: ({arg: _input_spec(info) for arg, info in definition.inputs.items()},
                  sorted(definition.outputs))
            for key, definition in self.signature_defs().items()
            if key != "__saved_model_init_op"
        }

    def _tensorflow_runner(self, key: str) -> Any:
        import tensorflow as tf

        function: list[Any] = []  # looked up on the first call: the SavedModel may not be loaded yet

        def run(inputs: Tensors) -> Tensors:
            if not function:
                function.append(self._saved_model().signatures[key])
            outputs = function[0](**{name: tf.constant(value) for name, value in inputs.items()})
            return {name: value.numpy() for name, value in outputs.items()}

        return run

    def _litert_runner(self, prefer_float: bool) -> Any:
        """The ``pixels`` signature run by LiteRT from the version's LiteRT export (full-integer when
        its check passed, see :func:`litert_model_file`), or None: then TensorFlow serves it."""
        tflite = litert_model_file(self.path, prefer_float)
        if tflite is None:
            log.info("model %s version %d has no LiteRT export: served with TensorFlow",
                     self.name, self.version)
            return None
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # the optional `litert` extra is not installed
            log.warning(
                "ai-edge-litert is not installed: model %s version %d served with TensorFlow",
                self.name,
                self.version,
            )
            return None

        interpreter = Interpreter(model_path=str(tflite), num_threads=os.cpu_count() or 1)
        signature = interpreter.get_signature_runner(LITERT_SIGNATURE)
        lock = threading.Lock()  # an interpreter is not thread-safe; its batcher is its only caller

        def run(inputs: Tensors) -> Tensors:
            with lock:
                outputs = signature(**inputs)
                # Copies: the interpreter reuses its output buffers on the next call.
                return {key: np.array(value) for key, value in outputs.items()}

        self.backend = "litert"
        self.litert_file = tflite
        log.info("model %s version %d: pixels served by LiteRT from %s", self.name, self.version, tflite.name)
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
        prefer_float: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.backend = backend
        self.prefer_float = prefer_float  # serve fp32 LiteRT even where the int8 export passed its check
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
                self.prefer_float,
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
