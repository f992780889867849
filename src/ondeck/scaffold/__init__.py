"""`ondeck init`: a ready GitOps repo holding a small app and its ondeck.yaml."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

from ondeck.errors import UserError

FILES = ("app.py", "ondeck.yaml", "README.md", "gitignore")
IDENTITY = ("-c", "user.name=ondeck init", "-c", "user.email=ondeck@localhost")


def scaffold(directory: Path) -> Path:
    """Copy the example into `directory` (new or empty) and commit it on `main`."""
    directory = directory.resolve()
    if directory.exists() and any(directory.iterdir()):
        raise UserError(f"{directory} is not empty; pick a new directory: `ondeck init DIR`")
    directory.mkdir(parents=True, exist_ok=True)
    source = resources.files("ondeck.scaffold") / "example"
    for name in FILES:
        target = directory / (".gitignore" if name == "gitignore" else name)
        with resources.as_file(source / name) as path:
            shutil.copyfile(path, target)
    _git(directory, "init", "-q", "-b", "main")
    _git(directory, "add", "-A")
    _git(directory, *_identity(directory), "commit", "-q", "-m", "Initial app, deployed by ondeck")
    return directory


def _identity(directory: Path) -> tuple[str, ...]:
    """The user's git identity when set, else a neutral one so init never fails."""
    found = subprocess.run(
        ["git", "config", "user.email"], cwd=directory, capture_output=True, check=False
    )
    return () if found.returncode == 0 and found.stdout.strip() else IDENTITY


def _git(directory: Path, *args: str) -> None:
    result = subprocess.run(
        ["git", *args], cwd=directory, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise UserError(f"git {args[0]} failed in {directory}: {result.stderr.strip()}")
