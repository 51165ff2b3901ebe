"""The embedded inference server: TF Serving's protocols over the same SavedModel folders.

``postergenre serve inference`` (or :func:`start_embedded`, in-process) answers TF Serving's gRPC
``PredictionService`` (``Predict``, ``GetModelMetadata``) and ``ModelService`` (``GetModelStatus``),
and its REST routes ``GET /v1/models/NAME[/versions/N|/labels/L][/metadata]`` and
``POST /v1/models/NAME[...]:predict``, with TF Serving's status codes (``NOT_FOUND`` for an unknown
model or version, ``INVALID_ARGUMENT`` for bad input), so a client cannot tell it from TF Serving.
The models, hot reload and batching live in :mod:`services.inference.models`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np

# TF Serving's generated services: the servicers below subclass them (their unimplemented methods,
# Classify and the others, answer UNIMPLEMENTED as TF Serving's do).
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from services.inference.metrics import PROMETHEUS_PATH, InferenceMetrics
from services.inference.models import ErrorCode, ModelManager, Servable, ServingError, VersionStatus
from services.inference.repository import RegistryWatcher
from shared.config import Settings

log = logging.getLogger(__name__)

HTTP_STATUS = {
    ErrorCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    ErrorCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    ErrorCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    ErrorCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
}


def tensor_to_array(proto: Any) -> np.ndarray:
    import tensorflow as tf

    return np.asarray(tf.make_ndarray(proto))


def array_to_tensor(array: np.ndarray) -> Any:
    """A ``TensorProto``; float32 goes through ``tensor_content`` (one copy, no per-value encoding)."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    if array.dtype == np.float32:
        shape = tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]
        )
        return tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, tensor_shape=shape, tensor_content=np.ascontiguousarray(array).tobytes()
        )
    return tf.make_tensor_proto(array)


def _spec_version(spec: Any) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return int(spec.version.value), None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


def _status_proto(status: VersionStatus) -> Any:
    message = get_model_status_pb2.ModelVersionStatus(version=status.version)
    message.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
    if status.error:
        message.status.error_code = 2  # tensorflow.error.UNKNOWN
        message.status.error_message = status.error
    return message


class InferenceCore:
    """Protocol-independent request handling shared by the gRPC and REST front ends."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def predict(
        self,
        name: str,
        version: int | None,
        label: str | None,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        timeout: float | None,
    ) -> tuple[Servable, dict[str, np.ndarray]]:
        started = time.monotonic()
        servable: Servable | None = None
        outcome = "OK"
        try:
            if not inputs:
                raise ServingError(ErrorCode.INVALID_ARGUMENT, "the request has no inputs")
            servable = self.manager.resolve(name, version, label)
            return servable, servable.predict(signature_name, inputs, timeout)
        except ServingError as exc:
            outcome = exc.code.value
            raise
        except Exception:
            outcome = ErrorCode.INTERNAL.value
            raise
        finally:
            if self.manager.metrics is not None:
                self.manager.metrics.request(
                    name, servable.version if servable else version, signature_name, outcome,
                    time.monotonic() - started,
                )


def _grpc_code(code: ErrorCode) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, code.value)  # type: ignore[no-any-return]


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    """TF Serving's ``PredictionService`` (``Predict``, ``GetModelMetadata``) over an :class:`InferenceCore`;
    its other methods answer ``UNIMPLEMENTED``, as the generated base class does."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 (gRPC name)
        version, label = _spec_version(request.model_spec)
        try:
            inputs = {key: tensor_to_array(proto) for key, proto in request.inputs.items()}
        except Exception as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot read the input tensors: {exc}")
        try:
            servable, outputs = self.core.predict(
                request.model_spec.name,
                version,
                label,
                request.model_spec.signature_name,
                inputs,
                context.time_remaining(),
            )
        except ServingError as exc:
            context.abort(_grpc_code(exc.code), exc.message)
        wanted = set(request.output_filter) or set(outputs)
        unknown = wanted - set(outputs)
        if unknown:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown output_filter {sorted(unknown)}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
        for key in sorted(wanted):
            response.outputs[key].CopyFrom(array_to_tensor(outputs[key]))
        return response

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "metadata_field must be exactly ['signature_def']"
            )
        version, label = _spec_version(request.model_spec)
        try:
            servable = self.core.manager.resolve(request.model_spec.name, version, label)
        except ServingError as exc:
            context.abort(_grpc_code(exc.code), exc.message)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in servable.signature_defs().items():
            signature_map.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    """TF Serving's ``ModelService`` (``GetModelStatus``) over an :class:`InferenceCore`."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        version, label = _spec_version(request.model_spec)
        try:
            statuses = self.core.manager.status(request.model_spec.name, version, label)
        except ServingError as exc:
            context.abort(_grpc_code(exc.code), exc.message)
        return get_model_status_pb2.GetModelStatusResponse(
            model_version_status=[_status_proto(s) for s in statuses]
        )


def build_grpc_server(
    core: InferenceCore, port: int, host: str = "127.0.0.1", max_workers: int = 256
) -> tuple[grpc.Server, int]:
    from shared.logs import request_id_server_interceptor

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[request_id_server_interceptor()],  # binds each call's x-request-id
        options=[
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    return server, bound


# ---------------------------------------------------------------------------------------------- REST

REST_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict)?$"
)


def _rows_to_inputs(body: dict[str, Any], input_names: list[str]) -> dict[str, np.ndarray]:
    """TF Serving's REST request formats: ``instances`` (row) or ``inputs`` (columnar)."""
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError(ErrorCode.INVALID_ARGUMENT, "'instances' must be a non-empty list")
        if isinstance(instances[0], dict):
            return {key: np.asarray([row[key] for row in instances]) for key in instances[0]}
        if len(input_names) != 1:
            raise ServingError(
                ErrorCode.INVALID_ARGUMENT, f"the signature takes {input_names}: send named instances"
            )
        return {input_names[0]: np.asarray(instances)}
    if "inputs" in body:
        inputs = body["inputs"]
        if isinstance(inputs, dict):
            return {key: np.asarray(value) for key, value in inputs.items()}
        if len(input_names) != 1:
            raise ServingError(
                ErrorCode.INVALID_ARGUMENT, f"the signature takes {input_names}: send named inputs"
            )
        return {input_names[0]: np.asarray(inputs)}
    raise ServingError(ErrorCode.INVALID_ARGUMENT, "the request body needs 'instances' or 'inputs'")


class RestHandler(BaseHTTPRequestHandler):
    core: InferenceCore  # set on the subclass made by build_rest_server
    timeout_s: float
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("rest %s", format % args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> tuple[str, int | None, str | None, str]:
        match = REST_ROUTE.match(self.path.split("?", 1)[0])
        if match is None:
            raise ServingError(ErrorCode.NOT_FOUND, f"no route {self.path}")
        version = int(match["version"]) if match["version"] else None
        return match["name"], version, match["label"], match["suffix"] or ""

    def _send_metrics(self) -> None:
        # TF Serving answers its Prometheus metrics on the REST port too (--monitoring_config_file).
        metrics = self.core.manager.metrics
        if metrics is None:
            self._send(HTTPStatus.NOT_FOUND, {"error": "metrics are off"})
            return
        from prometheus_client import CONTENT_TYPE_LATEST

        body = metrics.exposition()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        if self.path.split("?", 1)[0] == PROMETHEUS_PATH:
            self._send_metrics()
            return
        try:
            name, version, label, suffix = self._route()
            if suffix == ":predict":
                raise ServingError(ErrorCode.INVALID_ARGUMENT, "predict needs POST")
            if suffix == "/metadata":
                self._send(HTTPStatus.OK, self._metadata(name, version, label))
                return
            statuses = self.core.manager.status(name, version, label)
            self._send(
                HTTPStatus.OK,
                {
                    "model_version_status": [
                        {
                            "version": str(s.version),
                            "state": s.state,
                            "status": {
                                "error_code": "UNKNOWN" if s.error else "OK",
                                "error_message": s.error,
                            },
                        }
                        for s in statuses
                    ]
                },
            )
        except ServingError as exc:
            self._send(HTTP_STATUS[exc.code], {"error": exc.message})

    def _metadata(self, name: str, version: int | None, label: str | None) -> dict[str, Any]:
        from google.protobuf import json_format

        servable = self.core.manager.resolve(name, version, label)
        return {
            "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {
                "signature_def": {
                    "signature_def": {
                        key: json_format.MessageToDict(value)
                        for key, value in servable.signature_defs().items()
                    }
                }
            },
        }

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        try:
            name, version, label, suffix = self._route()
            if suffix != ":predict":
                raise ServingError(ErrorCode.NOT_FOUND, f"no route POST {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError as exc:
                raise ServingError(ErrorCode.INVALID_ARGUMENT, f"the body is not JSON: {exc}") from None
            if not isinstance(body, dict):
                raise ServingError(ErrorCode.INVALID_ARGUMENT, "the body must be a JSON object")
            signature_name = str(body.get("signature_name") or "")
            servable = self.core.manager.resolve(name, version, label)
            signature = servable.signature(signature_name)
            inputs = _rows_to_inputs(body, sorted(signature.inputs))
            _, outputs = self.core.predict(
                name, servable.version, None, signature_name, inputs, self.timeout_s
            )
            if "instances" in body:
                if len(outputs) == 1:
                    payload: dict[str, Any] = {"predictions": next(iter(outputs.values())).tolist()}
                else:
                    rows = next(iter(outputs.values())).shape[0]
                    payload = {
                        "predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(rows)]
                    }
            else:
                payload = {
                    "outputs": next(iter(outputs.values())).tolist()
                    if len(outputs) == 1
                    else {k: v.tolist() for k, v in outputs.items()}
                }
            self._send(HTTPStatus.OK, payload)
        except ServingError as exc:
            self._send(HTTP_STATUS[exc.code], {"error": exc.message})


def build_rest_server(
    core: InferenceCore, port: int, host: str = "127.0.0.1", timeout_s: float = 30.0
) -> ThreadingHTTPServer:
    handler = type("BoundRestHandler", (RestHandler,), {"core": core, "timeout_s": timeout_s})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


# ------------------------------------------------------------------------------------------ lifecycle


@dataclass
class EmbeddedServer:
    """A running server: ``url`` is ``grpc://host:port``; ``rest_url`` is set when REST is on."""

    manager: ModelManager
    grpc_server: grpc.Server
    grpc_port: int
    host: str
    rest_server: ThreadingHTTPServer | None = None
    metrics_server: HTTPServer | None = None
    # Set when the server keeps its model folder in step with the registry (start_embedded).
    registry_watcher: RegistryWatcher | None = None

    @property
    def url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def rest_url(self) -> str | None:
        if self.rest_server is None:
            return None
        return f"http://{self.host}:{self.rest_server.server_address[1]}"

    @property
    def metrics_url(self) -> str | None:
        """The Prometheus endpoint on the metrics port, when it is on."""
        if self.metrics_server is None:
            return None
        return f"http://{self.host}:{self.metrics_server.server_address[1]}{PROMETHEUS_PATH}"

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()

    def stop(self, grace: float = 1.0) -> None:
        if self.registry_watcher is not None:
            self.registry_watcher.stop()
        self.grpc_server.stop(grace).wait()
        for http_server in (self.rest_server, self.metrics_server):
            if http_server is not None:
                http_server.shutdown()
                http_server.server_close()
        self.manager.close()


def start_server(
    models_dir: Path,
    config_path: Path | None,
    grpc_port: int = 0,
    rest_port: int | None = None,
    host: str = "127.0.0.1",
    max_batch_size: int = 32,
    batch_timeout_ms: float = 2.0,
    poll_seconds: float = 1.0,
    request_timeout_s: float = 30.0,
    batch_threads: int = 1,
    backend: str = "litert",
    metrics_port: int | None = None,
    prefer_float: bool = False,
) -> EmbeddedServer:
    """Load every model, then listen. ``rest_port=None`` leaves REST off; 0 picks a free port;
    ``metrics_port`` likewise for the Prometheus endpoint (also answered on the REST port).

    ``batch_threads`` is the number of batches of one model that may run at once; ``backend`` runs
    the ``pixels`` signature with ``"litert"`` (from ``exports/model.tflite``, the default: measured
    about twice as fast as TensorFlow on CPU, see docs/benchmarks.md) or ``"tensorflow"``; a version
    without a TFLite export is always served by TensorFlow. With LiteRT, a version whose full-integer
    export passed the trainer's agreement check is served in int8, unless ``prefer_float``.
    """
    metrics = InferenceMetrics()
    manager = ModelManager(
        models_dir,
        config_path,
        max_batch_size,
        batch_timeout_ms / 1000.0,
        poll_seconds,
        batch_threads=batch_threads,
        backend=backend,
        metrics=metrics,
        prefer_float=prefer_float,
    )
    metrics.watch(lambda: manager.state)
    manager.refresh()
    for name, failures in manager.failures().items():
        for failure in failures:
            log.error("model %s version %d is not served: %s", name, failure.version, failure.error)
    core = InferenceCore(manager)
    grpc_server, bound = build_grpc_server(core, grpc_port, host)
    grpc_server.start()
    rest_server = None
    if rest_port is not None:
        rest_server = build_rest_server(core, rest_port, host, request_timeout_s)
        threading.Thread(target=rest_server.serve_forever, name="rest", daemon=True).start()
    metrics_server = None
    if metrics_port is not None:
        from prometheus_client import start_http_server

        # prometheus_client's server answers every path, TF Serving's included.
        metrics_server, _ = start_http_server(metrics_port, addr=host, registry=metrics.registry)
    manager.start_polling()
    server = EmbeddedServer(manager, grpc_server, bound, host, rest_server, metrics_server)
    log.info(
        "inference server on %s%s%s serving %s",
        server.url,
        f" and {server.rest_url}" if server.rest_url else "",
        f", metrics at {server.metrics_url}" if server.metrics_url else "",
        ", ".join(sorted(manager.state.models)) or "nothing",
    )
    return server


def start_embedded(
    settings: Settings,
    grpc_port: int = 0,
    rest_port: int | None = None,
    host: str = "127.0.0.1",
    model_config: Path | None = None,
    watch_registry: bool = False,
) -> EmbeddedServer:
    """The server the web service runs in-process when ``POSTERGENRE_INFERENCE_URL`` is empty.

    It serves ``models.config`` when that file exists (it is watched, so one written later by
    ``sync_models`` is picked up), else every ``<name>/<version>/`` folder under ``models_dir``.

    With ``watch_registry`` (the web service, ``postergenre predict``) it first syncs its model folder
    from the registry (a failure raises: nothing to serve), then a :class:`RegistryWatcher` re-syncs
    it whenever the blessed versions change, checked every ``settings.model_sync_interval_s``: a
    blessing or a rollback reaches this server without anyone else calling ``sync_models``.
    """
    watcher = None
    if watch_registry:
        watcher = RegistryWatcher(settings)
        watcher.sync_if_changed()
    server = start_server(
        settings.models_dir,
        model_config or settings.models_config_path,
        grpc_port,
        rest_port,
        host,
        settings.inference_max_batch_size,
        settings.inference_batch_timeout_ms,
        settings.inference_poll_seconds,
        settings.inference_timeout_s,
        metrics_port=settings.inference_metrics_port or None,
        prefer_float=settings.inference_prefer_float,
    )
    if watcher is not None:
        watcher.start()
        server.registry_watcher = watcher
    return server
