"""The log line formats, the request-id rules and the format choice (shared/logs.py)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shared.logs import (
    accept_request_id,
    bound_request_id,
    configure_logging,
    current_request_id,
    is_valid_request_id,
    make_handler,
    use_json,
)


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO, io.StringIO]]:
    """A logger writing to a JSON handler and a text handler."""
    json_stream, text_stream = io.StringIO(), io.StringIO()
    log = logging.getLogger("tests.shared.test_logs")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    handlers = [make_handler(True, json_stream), make_handler(False, text_stream)]
    for handler in handlers:
        log.addHandler(handler)
    try:
        yield log, json_stream, text_stream
    finally:
        for handler in handlers:
            log.removeHandler(handler)


@pytest.mark.parametrize(("value", "valid"), [
    ("abc", True), ("A.b-c_9", True), ("x" * 64, True), ("", False), ("x" * 65, False), ("a b", False),
    ("a\nb", False), ("é", False), ('a"b', False), (None, False),
])
def test_only_short_plain_ids_are_accepted(value: str | None, valid: bool) -> None:
    assert is_valid_request_id(value) is valid
    accepted = accept_request_id(value)
    assert is_valid_request_id(accepted)
    assert (accepted == value) is valid


def test_a_new_id_each_time() -> None:
    assert accept_request_id(None) != accept_request_id(None)


def test_json_lines_carry_the_bound_id_and_escape_everything(
        logger: tuple[logging.Logger, io.StringIO, io.StringIO]) -> None:
    log, json_stream, text_stream = logger
    log.info("outside")
    with bound_request_id("req-1"):
        assert current_request_id() == "req-1"
        log.warning('a "quoted"\nsecond line %s', "\x1b[31m")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    assert current_request_id() is None
    lines = json_stream.getvalue().splitlines()
    assert len(lines) == 3  # the newline in the message did not make a line of its own
    outside, warning, error = (json.loads(line) for line in lines)
    assert "request_id" not in outside and outside["message"] == "outside"
    assert warning["request_id"] == "req-1" and warning["level"] == "WARNING"
    assert warning["message"] == 'a "quoted"\nsecond line \x1b[31m'
    assert warning["logger"] == "tests.shared.test_logs" and warning["time"].endswith("+00:00")
    assert error["request_id"] == "req-1" and "ValueError: boom" in error["exception"]
    text = text_stream.getvalue()
    assert "tests.shared.test_logs: outside" in text and "tests.shared.test_logs [req-1]: failed" in text


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("log_format", "stack", "stream", "expected"), [
    ("auto", True, io.StringIO(), True),
    ("auto", True, Tty(), False),
    ("auto", False, io.StringIO(), False),
    ("json", False, Tty(), True),
    ("text", True, io.StringIO(), False),
])
def test_the_format_follows_the_setting_the_mode_and_the_terminal(
        log_format: str, stack: bool, stream: io.StringIO, expected: bool) -> None:
    assert use_json(log_format, stack, stream) is expected  # type: ignore[arg-type]


def test_configure_logging_installs_one_handler_or_keeps_a_hosts() -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    for handler in saved:  # pytest's own capture handlers
        root.removeHandler(handler)
    stream, again = io.StringIO(), io.StringIO()
    try:
        assert configure_logging(logging.INFO, "json", False, stream) is True
        assert configure_logging(logging.INFO, "json", False, again) is True  # replaces its own handler
        assert len(root.handlers) == 1
        with bound_request_id("root-1"):
            logging.getLogger("some.library").info("hello")
        assert stream.getvalue() == "" and json.loads(again.getvalue())["request_id"] == "root-1"
        # A host's handler (as pytest's when the CLI runs in-process) is kept, and gets the ids.
        for handler in list(root.handlers):
            root.removeHandler(handler)
        host = logging.StreamHandler(io.StringIO())
        host.setFormatter(logging.Formatter("%(request_id)s %(message)s"))
        root.addHandler(host)
        assert configure_logging(logging.INFO, "json", False, io.StringIO()) is False
        assert root.handlers == [host]
        with bound_request_id("root-2"):
            logging.getLogger("some.library").warning("kept")
        assert host.stream.getvalue() == "root-2 kept\n"
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)
