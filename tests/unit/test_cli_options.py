"""Every subcommand that reaches a state dir takes --state-dir (rollback once did not)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer.main

from ondeck.cli import app

# Commands that never read nor write a state dir: a --state-dir there would be inert.
STATELESS = {"init", "validate", "schema", "version", "render", "secret edit"}


def _commands(group: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaf commands by their full path (typer ships its own click: duck-typed on purpose)."""
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if hasattr(command, "commands"):
            yield from _commands(command, f"{path} ")
        else:
            yield path, command


def test_every_subcommand_that_uses_state_accepts_state_dir() -> None:
    root = typer.main.get_command(app)
    found = dict(_commands(root))
    assert {"rollback", "promote", "set-version", "status", "logs"} <= set(found)
    missing = [
        path
        for path, command in found.items()
        if path not in STATELESS
        and not any("--state-dir" in getattr(p, "opts", ()) for p in command.params)
    ]
    assert missing == []
