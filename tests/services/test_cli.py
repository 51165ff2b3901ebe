"""The ``postergenre`` command talks back: --version, defaults in --help, --json, progress bars on
stderr only on a terminal, shell completion, exit codes in --help."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.cli import build_parser, main
from services.cli_support import Parser, progress_bar
from services.completion import walk
from services.crawler.importer import import_folder
from shared.dataset_manifest import load_manifest
from shared.db import ModelVersion, session_scope, upgrade_database
from shared.storage import object_store_from_settings

REPO = Path(__file__).resolve().parents[2]


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_version_names_the_package_and_python_without_importing_tensorflow() -> None:
    code = ("import sys\nfrom services.cli import main\ntry:\n    main(['--version'])\n"
            "except SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    from importlib import metadata

    version = metadata.version("postergenre")
    assert result.stdout.startswith(f"postergenre {version}, Python {sys.version.split()[0]}")


def test_help_shows_defaults_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    build = " ".join(help_of(capsys, "dataset", "build").split())
    assert "skip targets with fewer posters (default: 30)" in build
    assert "--seed SEED default: 0" in build  # an option without help still shows its default
    assert "--window {year,decade,rolling} year: that year" in build and "(default: year)" in build
    assert "(default: None)" not in build  # nothing to show is not shown
    assert "default: 8000" in help_of(capsys, "serve", "web")  # a service's parser the helper did not see

    top = help_of(capsys)
    assert "exit codes:" in top
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert f"\n  {code}" in top


def test_every_subcommands_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    for node in walk(build_parser()):
        assert "usage: postergenre" in help_of(capsys, *node.path)


def test_a_percent_sign_in_help_does_not_break_it() -> None:
    parser = Parser(prog="x")
    parser.add_argument("--share", default="5%", help="top 10% of posters")
    parser.add_argument("--sure", type=int, default=3, help="100%% sure")
    text = " ".join(parser.format_help().split())
    assert "top 10% of posters (default: 5%)" in text and "100% sure (default: 3)" in text


def test_dataset_build_json_is_the_summary_alone_and_no_bar_off_a_terminal(
    settings: Any, poster_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upgrade_database()
    assert not import_folder(poster_folder, object_store_from_settings()).errors
    argv = ["dataset", "build", "--years", "2000-2001", "--min-posters", "5", "--image-size", "16", "--json"]

    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    manifest = load_manifest(object_store_from_settings(), summary["dataset_id"])
    assert summary["reused"] is False and sorted(summary["targets"]) == ["2000", "2001"]
    assert summary["targets"]["2000"]["counts"] == manifest["targets"]["2000"]["counts"]["movies"]
    assert "%|" not in captured.err  # stderr is not a terminal here: no progress bar

    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["reused"] is True


def test_import_json_counts_the_rows_and_lists_the_rejected(
    settings: Any, poster_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upgrade_database()
    (poster_folder / "images" / "tt1000003.jpg").unlink()

    assert main(["import", "--from", str(poster_folder), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["imported"], report["updated"], report["unchanged"]) == (23, 0, 0)
    [rejected] = report["rejected"]
    assert rejected["movie_id"] == "tt1000003" and rejected["reason"].startswith("missing image")


def test_models_list_and_reject_json(settings: Any, capsys: pytest.CaptureFixture[str]) -> None:
    upgrade_database()
    with session_scope() as session:
        for version in (1, 2):
            session.add(ModelVersion(name="genre-2000", version=version, year=2000, status="candidate",
                                     image_size=16, genres=["Drama"]))

    assert main(["models", "reject", "genre-2000", "2", "--reason", "blurry", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["version"]["status"] == "retired" and "blurry" in answer["version"]["status_reason"]
    assert answer["synced"] is None  # a rejection changes nothing served
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["version"], row["status"]) for row in rows] == [(1, "candidate"), (2, "retired")]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_draw_only_on_a_terminal_and_not_when_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress_bar(total=10) as bar:
        assert bar.disable
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress_bar(total=10, desc="dataset") as bar:
        assert not bar.disable
        bar.update(10)
    assert "dataset" in terminal.getvalue() and "10/10" in terminal.getvalue()
    with progress_bar(total=10, quiet=True) as bar:
        assert bar.disable


def subcommand_paths(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
    return [node.path for node in walk(parser) if node.path]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_knows_every_subcommand(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    paths = subcommand_paths(build_parser())
    assert ("dataset", "build") in paths and ("serve", "web") in paths and ("completion",) in paths
    for path in paths:
        assert f'cmdpath="/{"/".join(path)}"' in script, path
    assert "--min-posters" in script and "rolling" in script
    interpreter = shutil.which(shell)
    if interpreter:
        result = subprocess.run([interpreter, "-n"], input=script, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr


BASH_HARNESS = """
source /dev/stdin <<'SCRIPT'
{script}
SCRIPT
complete_words() {{ COMP_WORDS=("$@"); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); _postergenre_complete;
  echo "${{COMPREPLY[*]}}"; }}
complete_words postergenre ""
complete_words postergenre dataset ""
complete_words postergenre -v dataset build --win
complete_words postergenre dataset build --window ""
"""


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_completes_subcommands_options_and_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    result = subprocess.run(["bash", "-c", BASH_HARNESS.format(script=script)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    top, dataset, option, choices = result.stdout.splitlines()
    assert {"dataset", "train", "predict", "completion", "--version"} <= set(top.split())
    assert dataset.split() == ["build", "show", "-h", "--help"]
    assert option == "--window"
    assert choices.split() == ["year", "decade", "rolling"]


ZSH_HARNESS = """
compdef() { :; }
compadd() { shift; echo "$*"; }
_files() { echo "(files)"; }
source /dev/stdin <<'SCRIPT'
THE_SCRIPT
SCRIPT
words=(postergenre dataset ""); CURRENT=3; _postergenre
words=(postergenre -v dataset build --window ""); CURRENT=6; _postergenre
words=(postergenre predict ""); CURRENT=3; _postergenre
"""


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh")
def test_zsh_completion_completes_subcommands_choices_and_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    harness = ZSH_HARNESS.replace("THE_SCRIPT", script)
    result = subprocess.run(["zsh", "-f", "-c", harness], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    dataset, choices, predict, files = result.stdout.splitlines()
    assert dataset.split() == ["build", "show", "-h", "--help"]
    assert choices.split() == ["year", "decade", "rolling"]
    assert "--json" in predict.split() and files == "(files)"  # a poster file may follow predict
