"""Log lines of every service: JSON lines or text, each with the id of the request that caused it.

A request id is bound to the current context (:data:`REQUEST_ID`, a ``ContextVar``) for the length of
one HTTP request (the web service's :class:`RequestIdMiddleware`), one gRPC call (the inference
server's :class:`RequestIdServerInterceptor`) or one Celery task (the ``task_prerun`` hook below), and
:class:`RequestIdFilter` copies it into every record logged meanwhile, by any logger. It travels:

* from an HTTP client: its ``X-Request-ID`` header, when well-formed (:func:`accept_request_id`);
  otherwise a new id. Either way it is returned in the response's ``X-Request-ID``;
* to the inference server: the ``x-request-id`` gRPC metadata (:class:`RequestIdClientInterceptor`);
* to a Celery task: the ``x_request_id`` message header, set by ``before_task_publish`` on every
  task sent while an id is bound (the admin API's jobs, the trainer's submissions).

A malformed id is replaced, never logged: the one place a client's text could reach a log line
unescaped is closed by accepting only ``[A-Za-z0-9._-]{1,64}``; JSON lines escape everything else.

:func:`configure_logging` picks the format: ``POSTERGENRE_LOG_FORMAT`` ``json`` or ``text``, or
``auto`` (the default): JSON lines in stack mode unless stderr is a terminal, text in embedded mode.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal, TextIO

REQUEST_ID: ContextVar[str | None] = ContextVar("postergenre_request_id", default=None)
HTTP_HEADER = "X-Request-ID"
GRPC_METADATA_KEY = "x-request-id"  # gRPC metadata keys are lower case
TASK_HEADER = "x_request_id"
_VALID = re.compile(r"[A-Za-z0-9._-]{1,64}")

LogFormat = Literal["auto", "json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_id_text)s: %(message)s"

access_log = logging.getLogger("postergenre.access")


def new_request_id() -> str:
    return uuid.uuid4().hex


def is_valid_request_id(value: str | None) -> bool:
    return value is not None and _VALID.fullmatch(value) is not None


def accept_request_id(value: str | None) -> str:
    """A client's id when well-formed (1-64 of ``[A-Za-z0-9._-]``), else a new one."""
    return value if value is not None and is_valid_request_id(value) else new_request_id()


def current_request_id() -> str | None:
    return REQUEST_ID.get()


@contextmanager
def bound_request_id(request_id: str | None) -> Iterator[None]:
    """Bind ``request_id`` to the current context (and the threads ``asyncio.to_thread`` starts)."""
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (``None`` outside a request) and its text form to every record.

    Put on the handlers, not on a logger: a logger's filters see only its own records, not its
    children's, and every library logs through its own logger.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        record.request_id = request_id
        record.request_id_text = f" [{request_id}]" if request_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, and the
    traceback when there is one. ``json.dumps`` escapes newlines and control characters, so a
    message cannot forge a second line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        for key in ("method", "path", "status", "duration_ms"):  # the access log's fields
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def use_json(log_format: LogFormat, stack_mode: bool, stream: TextIO) -> bool:
    if log_format != "auto":
        return log_format == "json"
    return stack_mode and not (hasattr(stream, "isatty") and stream.isatty())


def make_handler(json_lines: bool, stream: TextIO | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(level: int = logging.INFO, log_format: LogFormat | None = None,
                      stack_mode: bool | None = None, stream: TextIO | None = None) -> bool:
    """Give the root logger one handler to stderr in the chosen format; returns whether it writes JSON
    lines. ``log_format``/``stack_mode`` default to the settings. Called again, it replaces its handler."""
    if log_format is None or stack_mode is None:
        from shared.config import get_settings

        settings = get_settings()
        log_format = settings.log_format if log_format is None else log_format
        stack_mode = settings.mode == "stack" if stack_mode is None else stack_mode
    stream = stream or sys.stderr
    json_lines = use_json(log_format, stack_mode, stream)
    root = logging.getLogger()
    for old in [handler for handler in root.handlers if getattr(handler, "postergenre", False)]:
        root.removeHandler(old)
    if root.handlers:
        # A host configured logging before us (pytest running the CLI in-process): keep its handlers,
        # as logging.basicConfig would, and give their records the request id.
        for handler in root.handlers:
            if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
                handler.addFilter(RequestIdFilter())
        return False
    handler = make_handler(json_lines, stream)
    handler.postergenre = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    return json_lines


# --------------------------------------------------------------------------------- the web service

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class RequestIdMiddleware:
    """ASGI middleware: binds the request's id, returns it in ``X-Request-ID`` and writes one access
    line per request (method, path, status, duration) to ``postergenre.access``.

    A plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: the route runs in this
    coroutine's context, so the id set here is the one its log lines (and its threads) see.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Any]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        request_id = accept_request_id(given)
        status = 500  # what the client gets when the app raises before answering
        started = time.perf_counter()

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        with bound_request_id(request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                duration_ms = round((time.perf_counter() - started) * 1000, 2)
                path = scope.get("path", "")
                access_log.info("%s %s %d %.1f ms", scope.get("method", ""), path, status, duration_ms,
                                extra={"method": scope.get("method", ""), "path": path, "status": status,
                                       "duration_ms": duration_ms})


# ----------------------------------------------------------------------- gRPC client and server


def _client_interceptor_class() -> type:
    import grpc

    class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
        def __init__(self, base: Any, metadata: list[tuple[str, str]]) -> None:
            self.method = base.method
            self.timeout = base.timeout
            self.metadata = metadata
            self.credentials = base.credentials
            self.wait_for_ready = base.wait_for_ready
            self.compression = base.compression

    class RequestIdClientInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        """Adds the bound request id to each call's metadata as ``x-request-id`` (none bound: none)."""

        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            request_id = REQUEST_ID.get()
            if request_id is not None:
                metadata = [*(details.metadata or ()), (GRPC_METADATA_KEY, request_id)]
                details = _Details(details, metadata)
            return continuation(details, request)

    return RequestIdClientInterceptor


def with_request_ids(channel: Any) -> Any:
    """``channel`` wrapped so that every unary call carries the bound request id."""
    import grpc

    return grpc.intercept_channel(channel, _client_interceptor_class()())


grpc_log = logging.getLogger("postergenre.grpc")


def request_id_server_interceptor() -> Any:
    """A gRPC server interceptor binding each call's ``x-request-id`` (or a new id) while it runs, and
    logging the call at DEBUG (method, status, duration)."""
    import grpc

    class RequestIdServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = continuation(details)
            if handler is None or handler.unary_unary is None:
                return handler
            given = next((value for key, value in details.invocation_metadata or ()
                          if key == GRPC_METADATA_KEY and isinstance(value, str)), None)
            inner = handler.unary_unary
            method = details.method

            def unary_unary(request: Any, context: Any) -> Any:
                started = time.perf_counter()
                with bound_request_id(accept_request_id(given)):
                    try:
                        return inner(request, context)
                    finally:
                        code = context.code() if hasattr(context, "code") else None
                        grpc_log.debug("%s %s %.1f ms", method, getattr(code, "name", None) or "OK",
                                       (time.perf_counter() - started) * 1000)

            return handler._replace(unary_unary=unary_unary)

    return RequestIdServerInterceptor()


# ---------------------------------------------------------------------------------- Celery tasks


def install_celery_hooks() -> None:
    """Connect the Celery signals that carry the id in a task's headers and bind it while it runs."""
    from celery import signals

    signals.before_task_publish.connect(_add_task_header, weak=False)
    # A receiver of setup_logging replaces Celery's own setup (which would hijack the root logger
    # with its text format): the worker's lines then have the services' format and request ids.
    signals.setup_logging.connect(_setup_worker_logging, weak=False)
    signals.task_prerun.connect(_bind_task_request_id, weak=False)
    signals.task_postrun.connect(_unbind_task_request_id, weak=False)


_task_tokens: dict[str, Any] = {}


def _setup_worker_logging(loglevel: int | str | None = None, logfile: str | None = None,
                          **_kwargs: Any) -> None:
    level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
    stream = open(logfile, "a", buffering=1) if logfile else None  # noqa: SIM115 (the worker's lifetime)
    configure_logging(level if isinstance(level, int) else logging.INFO, stream=stream)


def _add_task_header(headers: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    request_id = REQUEST_ID.get()
    if request_id is not None and headers is not None:
        headers.setdefault(TASK_HEADER, request_id)


def _bind_task_request_id(task_id: str | None = None, task: Any = None, **_kwargs: Any) -> None:
    given = getattr(getattr(task, "request", None), TASK_HEADER, None)
    given = given if isinstance(given, str) else None
    # A task sent with no id (from a script, or a redelivery of an old message) gets its own.
    _task_tokens[task_id or ""] = REQUEST_ID.set(accept_request_id(given))


def _unbind_task_request_id(task_id: str | None = None, **_kwargs: Any) -> None:
    token = _task_tokens.pop(task_id or "", None)
    if token is not None:
        try:
            REQUEST_ID.reset(token)
        except ValueError:  # set in another context (a pool that runs prerun elsewhere): clear it
            REQUEST_ID.set(None)
