"""The demo's TF.js environment, made beside its first steps (services/demo.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services import demo

MAKES_CONVERTER = """#!/usr/bin/env bash
set -e
mkdir -p .venv-tfjs/bin
printf '#!/bin/sh\\n' > .venv-tfjs/bin/tensorflowjs_converter
echo made
"""


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkout's layout: the demo finds the script and the converter relative to the repository root."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scripts").mkdir()
    return tmp_path


def test_the_environment_is_made_in_the_background_and_waited_for(repo: Path) -> None:
    (repo / demo.TFJS_ENV_SCRIPT).write_text(MAKES_CONVERTER)
    maker = demo.start_tfjs_environment(repo / "var" / "logs")
    assert maker is not None
    timings: dict[str, float] = {}
    assert demo.tfjs_ready(maker, timings)
    assert "wait for the TF.js environment" in timings
    assert (repo / "var" / "logs" / "tfjs-env.log").read_text().strip() == "made"
    # Made once: a second demo starts nothing.
    assert demo.start_tfjs_environment(repo / "var" / "logs") is None


def test_a_failed_environment_leaves_the_in_browser_mode_off(repo: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (repo / demo.TFJS_ENV_SCRIPT).write_text("echo 'python3.11 not found' >&2\nexit 1\n")
    maker = demo.start_tfjs_environment(repo / "logs")
    assert not demo.tfjs_ready(maker, {})
    assert "in-browser mode stays off" in capsys.readouterr().err
    assert "python3.11 not found" in (repo / "logs" / "tfjs-env.log").read_text()


def test_without_the_script_nothing_is_started(repo: Path) -> None:
    assert demo.start_tfjs_environment(repo / "logs") is None
    assert not demo.tfjs_ready(None, {})
