"""``postergenre bench ...``: every subcommand is documented, and every documented command parses."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from services.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
DOCUMENTED = re.compile(r"`postergenre (bench [^`]+)`")


def bench_subcommands() -> set[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bench = commands.choices["bench"]
    bench_commands = next(a for a in bench._actions if isinstance(a, argparse._SubParsersAction))
    return set(bench_commands.choices)


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of each ``postergenre bench ...`` in docs/ and the README, the optional parts
    (``[--json]``) left out; the README's ``bench ...`` placeholder is not a command."""
    found = []
    for page in sorted([*REPO.glob("docs/*.md"), REPO / "README.md"]):
        text = " ".join(page.read_text().split())  # commands wrap across lines
        for match in DOCUMENTED.finditer(text):
            command = re.sub(r"\[[^\]]*\]", "", match.group(1))
            if command.strip() != "bench ...":
                found.append((page.name, shlex.split(command)))
    return found


def test_every_bench_subcommand_is_documented() -> None:
    named = {argv[1] for _, argv in documented_commands()}
    assert bench_subcommands() - named == set()


@pytest.mark.parametrize(("page", "argv"), documented_commands(),
                         ids=[f"{page}:{' '.join(argv)}" for page, argv in documented_commands()])
def test_a_documented_bench_command_parses(page: str, argv: list[str]) -> None:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{page}: `postergenre {shlex.join(argv)}` is refused: {errors.getvalue().strip()}")
    assert args.handler.__module__ == "benchmarks.cli"
    assert args.bench_command == argv[1]


def test_bench_dataset_runs_at_a_small_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "dataset", "--records", "1000", "--year-count", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["windows"]) == {"year", "decade", "rolling"}
    assert all(window["targets"] >= 1 for window in result["windows"].values())


def test_bench_web_without_a_web_service_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["bench", "web", "--url", url, "--requests", "1", "--concurrency", "1"]) == 1
    errors = capsys.readouterr().err
    assert f"no web service answers at {url}" in errors and "Traceback" not in errors


def test_bench_features_compares_keras_and_litert_on_the_same_posters(capsys: pytest.CaptureFixture[str]
                                                                      ) -> None:
    assert main(["bench", "features", "--arch", "smallcnn", "--weights", "none", "--side", "32",
                 "--posters", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["posters"] == 4 and result["side"] == 32
    assert result["keras_posters_per_s"] > 0 and result["litert_posters_per_s"] > 0
    assert result["largest_difference"] < 1e-3
