"""Options and the API client shared by `cli.py` and the command groups in `commands/`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ondeck.client import Client, default_state_dir

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir", help="State dir (default: $ONDECK_STATE_DIR or ~/.local/state/ondeck)."
    ),
]
ApiUrl = Annotated[
    str | None, typer.Option("--api", help="API URL (default: from the state dir, or $ONDECK_API).")
]
Token = Annotated[
    str | None,
    typer.Option("--token", help="Bearer token (default: from the state dir, or $ONDECK_TOKEN)."),
]
AppName = Annotated[
    str | None,
    typer.Option(
        "--app",
        envvar="ONDECK_APP",
        help="The app, when `ondeck up --host-file` runs several (default: $ONDECK_APP).",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Machine-readable output (a stable contract).")
]

# The write path (`set-version`, `promote`, `rollback`, `maintenance` ...): each writes a commit.
Target = Annotated[
    str, typer.Option("--repo", help="A git checkout (default: here) or a remote URL.")
]
Push = Annotated[
    bool, typer.Option("--push", help="Push the commit (retried with rebase if the remote moved).")
]
Author = Annotated[
    str | None, typer.Option("--author", help="'Name <email>' (default: git config).")
]
BranchOpt = Annotated[str | None, typer.Option("--branch", help="Branch to commit to.")]
PathOpt = Annotated[str, typer.Option("--path", help="Directory in the repo holding ondeck.yaml.")]
Nudge = Annotated[
    bool,
    typer.Option("--sync/--no-sync", help="After a push, ask a local `ondeck up` to fetch now."),
]


def client(
    state_dir: Path | None, api: str | None, token: str | None, app: str | None = None
) -> Client:
    """The API of the controller of this state dir (or of `--api`/`--token`); with `app`,
    the API of that app of a host file (`/apps/APP/`)."""
    return Client(state_dir or default_state_dir(), api, token, app)
