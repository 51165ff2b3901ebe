"""Client of TF Serving (or the embedded server): gRPC ``PredictionService``, REST as an alternative.

The contract between the inference side and whoever asks it (the web service, ``postergenre
predict``, the benchmarks, the model-sync sidecar), so it lives in ``shared``: nobody imports the
inference service to talk to it. :class:`BaseInferenceClient` holds what both protocols do alike
(input checks, the one-model shortcut of the fan-out, the ``explain`` inputs, errors per model);
:class:`InferenceClient` (gRPC) and :class:`RestInferenceClient` (REST) hold only the wire.

One :class:`InferenceClient` holds one gRPC channel for its whole life (connection reuse); every call
carries a deadline, so a server that is down or stuck gives :class:`InferenceUnavailable` within
``timeout`` seconds instead of a hang. :meth:`InferenceClient.predict_many` sends the requests for
all the yearly models at once (gRPC futures) and waits for them together, so the table costs about
the slowest model, not the sum.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

PIXELS_SIGNATURE = "pixels"
PIXELS_INPUT = "pixels"
SCORES_OUTPUT = "scores"
# Grad-CAM (docs/contracts.md): pixels, head [N] and genres [N, K] -> heatmaps [N, K, h, w], scores [N, G].
EXPLAIN_SIGNATURE = "explain"
HEAD_INPUT = "head"
GENRES_INPUT = "genres"
HEATMAPS_OUTPUT = "heatmaps"


class InferenceError(RuntimeError):
    """Inference failed; the message says why."""


class InferenceUnavailable(InferenceError):  # noqa: N818 (the name the services use)
    """The inference server is down, unreachable or did not answer before the deadline."""


class ModelNotFound(InferenceError, LookupError):  # noqa: N818
    """The server does not serve this model name, version or label."""


class InvalidInferenceInput(InferenceError, ValueError):
    """The server refused the input (wrong shape or type)."""


class SignatureNotFound(InvalidInferenceInput):
    """The model version has no such signature (e.g. ``explain`` on a model exported before it)."""


def _invalid_input(message: str) -> InvalidInferenceInput:
    # TF Serving and the embedded server both word it 'Serving signature key "NAME" not found'.
    if "Serving signature key" in message and "not found" in message:
        return SignatureNotFound(message)
    return InvalidInferenceInput(message)


@dataclass(frozen=True)
class Explanation:
    """Grad-CAM heatmaps ``[N, K, h, w]`` (0..1), the head's scores ``[N, G]`` and the version."""

    heatmaps: np.ndarray
    scores: np.ndarray
    version: int


def explain_inputs(pixels: np.ndarray, head: Sequence[int], genres: Sequence[Sequence[int]]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``explain`` signature's inputs, checked: pixels ``[N,S,S,3]``, head ``[N]``, genres ``[N, K]``."""
    array = float_pixels(pixels)
    heads = np.asarray(head, dtype=np.int32).reshape(-1)
    chosen = np.asarray(genres, dtype=np.int32)
    if chosen.ndim != 2 or chosen.shape[1] == 0 or not len(array) == len(heads) == len(chosen):
        raise InvalidInferenceInput(f"explain needs pixels [N,S,S,3], head [N] and genres [N, K>=1]; got "
                                    f"{list(array.shape)}, {list(heads.shape)}, {list(chosen.shape)}")
    return array, heads, chosen


Prediction = tuple[np.ndarray, int]


@dataclass(frozen=True)
class VersionState:
    version: int
    state: str  # AVAILABLE, LOADING, END...
    error: str = ""


# gRPC name-resolver schemes a target may name: every address ``dns:///host:port`` resolves to (a
# Kubernetes headless Service: one per TF Serving pod), or a fixed list ``ipv4:10.0.0.1:8500,10.0.0.2:8500``.
RESOLVER_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:")


def grpc_target(url: str) -> str:
    """``grpc://host:port`` or ``host:port`` -> ``host:port``; resolver targets (``dns:///host:port``,
    ``ipv4:a:p,b:p``, ``unix:path``) pass through, with or without ``grpc://``."""
    target = url.removeprefix("grpc://").rstrip("/")
    if target.startswith(RESOLVER_SCHEMES):
        return target
    if not target or "/" in target:
        raise ValueError(f"inference URL must be grpc://host:port, not {url!r}")
    return target


def float_pixels(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` as a C-contiguous float32 ``[N,S,S,3]`` array, or :class:`InvalidInferenceInput`."""
    array = np.ascontiguousarray(pixels, dtype=np.float32)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise InvalidInferenceInput(f"pixels must be float32 [N, S, S, 3], got shape {list(array.shape)}")
    return array


def fill_pixels_tensor(tensor: Any, array: np.ndarray, content: bytes | None = None) -> None:
    """Write float32 ``array`` into the ``TensorProto`` ``tensor`` (raw bytes in ``tensor_content``).

    Filled in place rather than built and copied in: ``CopyFrom`` of a 256x256 poster's tensor cost
    about 0.4 ms, once per model of the fan-out. ``content`` is ``array.tobytes()`` when already made.
    """
    from tensorflow.core.framework import types_pb2

    tensor.dtype = types_pb2.DT_FLOAT
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_content = array.tobytes() if content is None else content


def tensor_array(proto: Any) -> np.ndarray:
    from tensorflow.core.framework import types_pb2

    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype == types_pb2.DT_FLOAT:
        if proto.tensor_content:
            return np.frombuffer(proto.tensor_content, dtype=np.float32).reshape(shape).copy()
        return np.asarray(proto.float_val, dtype=np.float32).reshape(shape)
    import tensorflow as tf

    return np.asarray(tf.make_ndarray(proto))


def _describe(name: str, version: int | None, label: str | None) -> str:
    if version is not None:
        return f"model {name} version {version}"
    if label:
        return f"model {name} label {label}"
    return f"model {name}"


class BaseInferenceClient(ABC):
    """One inference server at ``url``, every call under ``timeout`` seconds, over either protocol.

    Subclasses send one request (:meth:`_predict`, :meth:`_explain`, :meth:`model_status`) and may
    send a fan-out their own way (:meth:`_predict_each`); the checks and the shape of the answers are
    here, once.
    """

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def predict(
        self,
        name: str,
        pixels: np.ndarray,
        version: int | None = None,
        label: str | None = None,
        signature: str = PIXELS_SIGNATURE,
    ) -> Prediction:
        """Scores of ``pixels`` (float32 ``[N,S,S,3]``) under one model, and the version that answered."""
        return self._predict(name, float_pixels(pixels), version, label, signature)

    def predict_many(
        self,
        names: Iterable[str],
        pixels: np.ndarray,
        label: str | None = None,
        signature: str = PIXELS_SIGNATURE,
    ) -> dict[str, Prediction | InferenceError]:
        """Ask every model at once; each name maps to its result or to the error it got."""
        names = list(names)
        array = float_pixels(pixels)
        if len(names) == 1:  # one model (the shared layout): a blocking call, nothing to wait on
            [name] = names
            try:
                return {name: self._predict(name, array, None, label, signature)}
            except InferenceError as exc:
                return {name: exc}
        return self._predict_each(names, array, label, signature)

    def _predict_each(self, names: list[str], array: np.ndarray, label: str | None, signature: str
                      ) -> dict[str, Prediction | InferenceError]:
        """The fan-out of :meth:`predict_many`: here a thread per model (at most 32) over
        :meth:`_predict`; a protocol with asynchronous calls overrides it."""
        from concurrent.futures import ThreadPoolExecutor

        results: dict[str, Prediction | InferenceError] = {}
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(names)))) as pool:
            futures = {name: pool.submit(self._predict, name, array, None, label, signature)
                       for name in names}
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except InferenceError as exc:
                    results[name] = exc
        return results

    def explain(self, name: str, pixels: np.ndarray, head: Sequence[int], genres: Sequence[Sequence[int]],
                version: int | None = None) -> Explanation:
        """Grad-CAM of ``genres[i]`` on head ``head[i]`` for each poster (the ``explain`` signature).

        :class:`SignatureNotFound` when the version has no ``explain`` signature.
        """
        array, heads, chosen = explain_inputs(pixels, head, genres)
        return self._explain(name, array, heads, chosen, version)

    @abstractmethod
    def _predict(self, name: str, array: np.ndarray, version: int | None, label: str | None,
                 signature: str) -> Prediction:
        """One predict request of checked float32 pixels."""

    @abstractmethod
    def _explain(self, name: str, array: np.ndarray, heads: np.ndarray, chosen: np.ndarray,
                 version: int | None) -> Explanation:
        """One ``explain`` request of checked inputs (:func:`explain_inputs`)."""

    @abstractmethod
    def model_status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionState]:
        """The versions the server knows for ``name`` and their state."""


class InferenceClient(BaseInferenceClient):
    """gRPC client of TF Serving's ``PredictionService`` and ``ModelService``."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        from shared.logs import with_request_ids

        super().__init__(url, timeout)
        self._raw_channel = grpc.insecure_channel(
            grpc_target(url),
            options=[
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1),
                ("grpc.keepalive_time_ms", 30_000),
                # Spread calls over every address the target resolves to (one per TF Serving replica
                # behind a headless Service) instead of pinning them all to the first one; with a
                # single address it is the same as gRPC's default.
                ("grpc.lb_policy_name", "round_robin"),
            ],
        )
        self._channel = with_request_ids(self._raw_channel)  # each call carries the request id
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._raw_channel.close()

    def _request(self, name: str, pixels: np.ndarray, version: int | None, label: str | None, signature: str,
                 content: bytes | None = None) -> Any:
        """A ``PredictRequest`` of float32 ``pixels`` (``content``: their bytes, when already made)."""
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        elif label:
            request.model_spec.version_label = label
        fill_pixels_tensor(request.inputs[PIXELS_INPUT], pixels, content)
        return request

    def _error(self, exc: Exception, what: str) -> InferenceError:
        import grpc

        if not isinstance(exc, grpc.RpcError):
            return InferenceError(f"{what}: {exc}")
        code = exc.code()  # type: ignore[attr-defined]
        details = exc.details() or ""  # type: ignore[attr-defined]
        if code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        ):
            reason = (
                "did not answer within the deadline"
                if code == grpc.StatusCode.DEADLINE_EXCEEDED
                else "is unavailable"
            )
            return InferenceUnavailable(
                f"inference server {self.url} {reason} ({self.timeout:g} s) for {what}: {details}"
            )
        if code == grpc.StatusCode.NOT_FOUND:
            return ModelNotFound(f"{what}: {details}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return _invalid_input(f"{what}: {details}")
        return InferenceError(f"{what}: {code.name} {details}")

    @staticmethod
    def _result(response: Any) -> Prediction:
        if SCORES_OUTPUT in response.outputs:
            scores = tensor_array(response.outputs[SCORES_OUTPUT])
        else:
            scores = tensor_array(next(iter(response.outputs.values())))
        return scores, int(response.model_spec.version.value)

    def _predict(self, name: str, array: np.ndarray, version: int | None, label: str | None,
                 signature: str) -> Prediction:
        request = self._request(name, array, version, label, signature)
        try:
            response = self._predictions.Predict(request, timeout=self.timeout)
        except Exception as exc:
            raise self._error(exc, _describe(name, version, label)) from None
        return self._result(response)

    def _predict_each(self, names: list[str], array: np.ndarray, label: str | None, signature: str
                      ) -> dict[str, Prediction | InferenceError]:
        """Every request sent at once (gRPC futures), then awaited together: the deadline covers the
        whole fan-out, every call gets what is left of ``timeout``."""
        content = array.tobytes()  # encoded once for all the models
        deadline = time.monotonic() + self.timeout
        calls = {
            name: self._predictions.Predict.future(
                self._request(name, array, None, label, signature, content), timeout=self.timeout
            )
            for name in names
        }
        results: dict[str, Prediction | InferenceError] = {}
        for name, call in calls.items():
            try:
                response = call.result(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
                results[name] = self._result(response)
            except Exception as exc:
                results[name] = self._error(exc, _describe(name, None, label))
        return results

    def _explain(self, name: str, array: np.ndarray, heads: np.ndarray, chosen: np.ndarray,
                 version: int | None) -> Explanation:
        import tensorflow as tf

        request = self._request(name, array, version, None, EXPLAIN_SIGNATURE)
        request.inputs[HEAD_INPUT].CopyFrom(tf.make_tensor_proto(heads))
        request.inputs[GENRES_INPUT].CopyFrom(tf.make_tensor_proto(chosen))
        try:
            response = self._predictions.Predict(request, timeout=self.timeout)
        except Exception as exc:
            raise self._error(exc, _describe(name, version, None)) from None
        outputs = response.outputs
        return Explanation(tensor_array(outputs[HEATMAPS_OUTPUT]), tensor_array(outputs[SCORES_OUTPUT]),
                           int(response.model_spec.version.value))

    def model_status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionState]:
        """The versions the server knows for ``name`` and their state (``ModelService.GetModelStatus``)."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        elif label:
            request.model_spec.version_label = label
        try:
            response = self._models.GetModelStatus(request, timeout=self.timeout)
        except Exception as exc:
            raise self._error(exc, _describe(name, version, label)) from None
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [
            VersionState(int(s.version), state_name(s.state), s.status.error_message)
            for s in response.model_version_status
        ]

    def signature_defs(self, name: str) -> dict[str, Any]:
        """The model's ``SignatureDef`` protos (``PredictionService.GetModelMetadata``)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = name
        request.metadata_field.append("signature_def")
        try:
            response = self._predictions.GetModelMetadata(request, timeout=self.timeout)
        except Exception as exc:
            raise self._error(exc, _describe(name, None, None)) from None
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return dict(signature_map.signature_def)


class RestInferenceClient(BaseInferenceClient):
    """The same interface over TF Serving's REST API (``/v1/models/NAME[...]:predict``), with httpx.

    REST predict responses do not say which version answered; the version asked for is returned, or,
    for a plain request, the newest available one according to the model-status route.
    """

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        import httpx

        super().__init__(url.rstrip("/"), timeout)
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    def close(self) -> None:
        self._http.close()

    @staticmethod
    def _path(name: str, version: int | None, label: str | None) -> str:
        if version is not None:
            return f"/v1/models/{name}/versions/{version}"
        if label:
            return f"/v1/models/{name}/labels/{label}"
        return f"/v1/models/{name}"

    def _call(self, method: str, path: str, what: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, json=body)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise InferenceUnavailable(
                f"inference server {self.url} is unavailable or slow ({self.timeout:g} s) for {what}: {exc}"
            ) from None
        if response.status_code == 200:
            return response.json()
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        if response.status_code == 404:
            raise ModelNotFound(f"{what}: {message}")
        if response.status_code == 400:
            raise _invalid_input(f"{what}: {message}")
        if response.status_code in (502, 503, 504):
            raise InferenceUnavailable(f"inference server {self.url} for {what}: {message}")
        raise InferenceError(f"{what}: HTTP {response.status_code} {message}")

    def _newest_available(self, name: str, label: str | None) -> int:
        """The version a plain request was answered by (REST does not say): the newest AVAILABLE."""
        available = [s.version for s in self.model_status(name, None, label) if s.state == "AVAILABLE"]
        return max(available) if available else 0

    def _predict(self, name: str, array: np.ndarray, version: int | None, label: str | None,
                 signature: str) -> Prediction:
        payload = self._call(
            "POST",
            self._path(name, version, label) + ":predict",
            _describe(name, version, label),
            {"signature_name": signature, "inputs": {PIXELS_INPUT: array.tolist()}},
        )
        outputs = payload["outputs"]
        scores = np.asarray(
            outputs[SCORES_OUTPUT] if isinstance(outputs, dict) else outputs, dtype=np.float32
        )
        return scores, self._newest_available(name, label) if version is None else version

    def _explain(self, name: str, array: np.ndarray, heads: np.ndarray, chosen: np.ndarray,
                 version: int | None) -> Explanation:
        payload = self._call(
            "POST", self._path(name, version, None) + ":predict", _describe(name, version, None),
            {"signature_name": EXPLAIN_SIGNATURE,
             "inputs": {PIXELS_INPUT: array.tolist(), HEAD_INPUT: heads.tolist(),
                        GENRES_INPUT: chosen.tolist()}},
        )
        outputs = payload["outputs"]
        return Explanation(np.asarray(outputs[HEATMAPS_OUTPUT], dtype=np.float32),
                           np.asarray(outputs[SCORES_OUTPUT], dtype=np.float32),
                           self._newest_available(name, None) if version is None else version)

    def model_status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionState]:
        payload = self._call("GET", self._path(name, version, label), _describe(name, version, label))
        return [
            VersionState(int(s["version"]), s["state"], s.get("status", {}).get("error_message", ""))
            for s in payload.get("model_version_status", [])
        ]


def connect(url: str, timeout: float = 10.0) -> BaseInferenceClient:
    """A client for ``grpc://host:port`` (or bare ``host:port``) or ``http(s)://host:port`` (REST)."""
    if url.startswith(("http://", "https://")):
        return RestInferenceClient(url, timeout)
    return InferenceClient(url, timeout)
