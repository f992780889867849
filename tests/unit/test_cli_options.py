"""Every subcommand that reaches a state dir takes --state-dir (rollback once did not)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer.main

from ondeck.cli import app

# Commands that never read nor write a state dir: a --state-dir there would be inert.
STATELESS = {"init", "schema", "version", "render", "secret edit"}


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


def _run(*args: str) -> tuple[int, str]:
    """`ondeck ARGS` as a user runs it (main() prints an OndeckError and exits 1)."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "ondeck", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, done.stdout + done.stderr


def test_an_option_that_would_do_nothing_is_refused_with_what_to_do() -> None:
    code, out = _run("sync", "--timeout", "1m", "--state-dir", "/nonexistent")
    assert code != 0 and "--timeout is how long --wait waits: add --wait" in out
    code, out = _run("logs", "web", "--release", "-f", "--state-dir", "/nonexistent")
    assert code != 0 and "--release shows the whole output" in out and "drop -f" in out


def test_release_output_keeps_the_last_lines_asked_for() -> None:
    from ondeck.cli import _last_lines

    assert _last_lines("a\nb\nc\n", 2) == "b\nc\n"
    assert _last_lines("a\nb", 5) == "a\nb"
    assert _last_lines("a\nb\n", 0) == ""
