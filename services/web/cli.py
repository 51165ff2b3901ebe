"""Subcommands of the web service."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any, serve: Any, bench: Any) -> None:
    """Add this service's subcommands to the `postergenre` parser."""
