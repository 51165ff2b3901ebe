"""What every ``postergenre`` subcommand shares: the help formatter, progress bars, JSON output.

Light on purpose (tqdm is imported when a bar is made): ``postergenre --help`` imports it.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

_PERCENT = re.compile(r"%([(%])?")


def _escape_percent(text: str) -> str:
    return _PERCENT.sub(lambda match: match.group(0) if match.group(1) else "%%", text)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is nothing to show (``None``, a flag that is
    off) or where the help already says it; keeps descriptions and epilogs as written."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        text = action.help or ""
        if text == argparse.SUPPRESS or "%(default)" in text or "default" in text.lower():
            return False
        if action.default is None or action.default is False or action.default in (argparse.SUPPRESS, ""):
            return False
        return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # argparse %-formats help: a lone `%` ("top 10%") is escaped, `%(name)s` and `%%` are kept.
        text = _escape_percent(action.help) if action.help else action.help
        if not self._shows_default(action):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._shows_default(action):  # argparse shows no help line without help
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help shows defaults; its subparsers are of this class too (argparse
    gives ``add_subparsers`` the parent's class), so every subcommand gets the formatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def add_output_options(parser: argparse.ArgumentParser, json_help: str = "print the result as JSON") -> None:
    """``--json`` (stdout holds only the JSON) and ``--quiet`` (no progress bar)."""
    parser.add_argument("--json", action="store_true", help=json_help + " (stdout holds only the JSON)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def progress_bar(*, quiet: bool = False, **kwargs: Any) -> tqdm:  # type: ignore[type-arg]
    """A tqdm bar on stderr, off with ``--quiet`` or when stderr is not a terminal (a log, a pipe)."""
    from tqdm import tqdm

    stream = sys.stderr
    disable = quiet or not (hasattr(stream, "isatty") and stream.isatty())
    return tqdm(file=stream, disable=disable, dynamic_ncols=True, **kwargs)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (dates and paths as strings)."""
    print(json.dumps(value, indent=1, default=str))
