"""Subcommands of the inference service."""

from __future__ import annotations

from typing import Any


def register(commands: Any, serve: Any, bench: Any) -> None:
    """Add this service's subcommands to the `postergenre` parser."""
