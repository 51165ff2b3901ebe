"""Subcommands of the trainer service."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any, bench: Any) -> None:
    """Add this service's subcommands to the `postergenre` parser."""
