"""`ondeck maintenance on|off SERVICE`: maintenance mode as a git commit.

Like `set-version`, the command writes one commit to the deploy repo
(gitops.set_maintenance) and, once pushed, asks a local `ondeck up` to sync at
once; the controller then tells the router, which answers the service's routes
with 503, Retry-After and the message while instances and health checks go
on. Registered in cli.py as the `maintenance` group.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ondeck.commands.committed import report
from ondeck.commands.options import Author, BranchOpt, Nudge, PathOpt, Push, StateDir, Target

maintenance_app = typer.Typer(
    help="Maintenance mode: the router answers a service's routes with 503 and a message.",
    no_args_is_help=True,
)

Service = Annotated[
    str, typer.Argument(help="The service to take out of (or put back in) service.")
]
EnvOpt = Annotated[
    str | None, typer.Option("--env", help="The environment (default: the base spec).")
]


@maintenance_app.command("on")
def on(
    service: Service,
    message: Annotated[
        str | None,
        typer.Option(
            "--message", help="What users see (default: the current one, or a generic one)."
        ),
    ] = None,
    env: EnvOpt = None,
    push: Push = False,
    author: Author = None,
    repo: Target = ".",
    branch: BranchOpt = None,
    path: PathOpt = "",
    sync: Nudge = True,
    state_dir: StateDir = None,
) -> None:
    """Commit maintenance mode for SERVICE: its routes answer 503 with the message."""
    from ondeck.gitops import set_maintenance

    result = set_maintenance(repo, service, True, message, env, push, author, branch, path)
    report(result, repo, state_dir, nudge=sync)


@maintenance_app.command("off")
def off(
    service: Service,
    env: EnvOpt = None,
    push: Push = False,
    author: Author = None,
    repo: Target = ".",
    branch: BranchOpt = None,
    path: PathOpt = "",
    sync: Nudge = True,
    state_dir: StateDir = None,
) -> None:
    """Commit the end of maintenance for SERVICE: its routes serve again."""
    from ondeck.gitops import set_maintenance

    result = set_maintenance(repo, service, False, None, env, push, author, branch, path)
    report(result, repo, state_dir, nudge=sync)
