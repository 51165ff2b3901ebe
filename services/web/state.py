"""What one web app holds for its lifetime: settings, metrics, cache, and lazily opened connections
(object store, Celery, the inference server), each opened once and shared by every request.

The web service imports no inference code (``.importlinter``): in embedded mode the inference server
it runs in-process is started by a :data:`EmbeddedInferenceStarter` that the composition root
(``services/embedded.py``) hands to ``create_app``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from celery import Celery

from services.web.cache import ScoreCache, cache_namespace, open_score_cache
from services.web.consumers import QueueConsumers
from services.web.explainer import ExplanationService
from services.web.metrics import WebMetrics
from services.web.year_table import YearTableService
from shared.config import Settings
from shared.inference_client import BaseInferenceClient
from shared.models import BlessedModels
from shared.storage import ObjectStore, object_store_from_settings

log = logging.getLogger(__name__)


class EmbeddedInference(Protocol):
    """A running in-process inference server, as the web service sees it."""

    @property
    def url(self) -> str:
        """``grpc://host:port`` of the server."""
        ...

    def stop(self, grace: float = ...) -> None: ...


# Starts the embedded inference server for these settings (it keeps its models in step with the
# registry itself); raises when it cannot.
EmbeddedInferenceStarter = Callable[[Settings], EmbeddedInference]


class InferenceConnection:
    """The gRPC client of the configured inference server, or of an embedded one started here with
    ``start_embedded`` when ``settings.inference_url`` is empty. A failed start is retried on the next
    request; without ``settings.inference_url`` nor ``start_embedded`` there is no inference."""

    def __init__(self, settings: Settings, start_embedded: EmbeddedInferenceStarter | None = None) -> None:
        self.settings = settings
        self._start_embedded = start_embedded
        self._client: BaseInferenceClient | None = None
        self._server: EmbeddedInference | None = None
        self._lock = threading.Lock()
        self._starting: threading.Thread | None = None
        self._starting_lock = threading.Lock()

    @property
    def url(self) -> str:
        if self.settings.inference_url:
            return self.settings.inference_url
        return str(self._server.url) if self._server is not None else ""

    def client(self) -> BaseInferenceClient:
        with self._lock:
            if self._client is None:
                from shared.inference_client import InferenceClient, InferenceUnavailable

                if not self.settings.inference_url and self._server is None:
                    start_embedded = self._embedded_starter()
                    try:
                        self._server = start_embedded(self.settings)
                    except Exception as exc:
                        log.error("the embedded inference server did not start: %s", exc)
                        raise InferenceUnavailable(f"the embedded inference server did not start: {exc}") \
                            from exc
                    log.info("embedded inference server on %s", self._server.url)
                self._client = InferenceClient(self.url, self.settings.inference_timeout_s)
            return self._client

    def _embedded_starter(self) -> EmbeddedInferenceStarter:
        """The starter of the embedded server, or :class:`InferenceUnavailable` saying there is
        nothing to connect to (no inference URL, and a web app not built by ``services.embedded``)."""
        if self._start_embedded is None:
            from shared.inference_client import InferenceUnavailable

            raise InferenceUnavailable(
                "no inference server: POSTERGENRE_INFERENCE_URL is empty and this web app has no "
                "embedded one (services.embedded.create_app builds an app with it)")
        return self._start_embedded

    def ready_client(self) -> BaseInferenceClient | None:
        """The client if it is connected now, without waiting; else starts connecting in the
        background (``/readyz`` must answer at once while the embedded server loads its models).
        Raises :class:`InferenceUnavailable` at once when there is nothing to connect to."""
        if not self.settings.inference_url:
            self._embedded_starter()
        if self._lock.acquire(blocking=False):
            try:
                if self._client is not None:
                    return self._client
            finally:
                self._lock.release()
        self.connect_in_background()
        return None

    def connect_in_background(self) -> None:
        with self._starting_lock:
            if self._starting is not None and self._starting.is_alive():
                return
            self._starting = threading.Thread(target=self._connect_quietly, name="inference-connect",
                                              daemon=True)
            self._starting.start()

    def _connect_quietly(self) -> None:
        try:
            self.client()
        except Exception as exc:  # retried by the next request or readiness check
            log.warning("inference is not ready yet: %s", exc)

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.stop()
                self._server = None
            close = getattr(self._client, "close", None)
            if callable(close):
                close()
            self._client = None


@dataclass
class WebState:
    settings: Settings
    admin_token: str
    start_embedded_inference: EmbeddedInferenceStarter | None = None
    metrics: WebMetrics = field(default_factory=WebMetrics)
    cache: ScoreCache = field(init=False)
    inference: InferenceConnection = field(init=False)
    year_tables: YearTableService = field(init=False)
    explanations: ExplanationService = field(init=False)
    consumers: QueueConsumers = field(init=False)
    blessed: BlessedModels = field(init=False)  # the served models, read again when the registry changes
    _store: ObjectStore | None = None
    _celery: Celery | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.cache = open_score_cache(self.settings.redis_url)
        self.inference = InferenceConnection(self.settings, self.start_embedded_inference)
        self.year_tables = YearTableService(self.inference.client, self.cache, self.metrics,
                                             cache_namespace(self.settings.effective_database_url))
        self.explanations = ExplanationService(self.inference.client)
        self.consumers = QueueConsumers(self.settings, lambda: self.celery)
        self.blessed = BlessedModels(self.settings.effective_database_url, self.settings.model_prefix)

    @property
    def store(self) -> ObjectStore:
        with self._lock:
            if self._store is None:
                self._store = object_store_from_settings(self.settings)
            return self._store

    @property
    def celery(self) -> Celery:
        with self._lock:
            if self._celery is None:
                from shared.celery_app import make_celery

                self._celery = make_celery(self.settings)
            return self._celery

    def close(self) -> None:
        self.inference.close()
