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
from rich.console import Console
from rich.markup import escape

from ondeck.client import Client, default_state_dir
from ondeck.errors import OndeckError
from ondeck.gitops import Result, set_maintenance

maintenance_app = typer.Typer(
    help="Maintenance mode: the router answers a service's routes with 503 and a message.",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

Service = Annotated[
    str, typer.Argument(help="The service to take out of (or put back in) service.")
]
EnvOpt = Annotated[
    str | None, typer.Option("--env", help="The environment (default: the base spec).")
]
Push = Annotated[
    bool, typer.Option("--push", help="Push the commit (retried with rebase if the remote moved).")
]
Author = Annotated[
    str | None, typer.Option("--author", help="'Name <email>' (default: git config).")
]
Target = Annotated[
    str, typer.Option("--repo", help="A git checkout (default: here) or a remote URL.")
]
BranchOpt = Annotated[str | None, typer.Option("--branch", help="Branch to commit to.")]
PathOpt = Annotated[str, typer.Option("--path", help="Directory in the repo holding ondeck.yaml.")]
Nudge = Annotated[
    bool,
    typer.Option("--sync/--no-sync", help="After a push, ask a local `ondeck up` to fetch now."),
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
) -> None:
    """Commit maintenance mode for SERVICE: its routes answer 503 with the message."""
    result = set_maintenance(repo, service, True, message, env, push, author, branch, path)
    _report(result, sync)


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
) -> None:
    """Commit the end of maintenance for SERVICE: its routes serve again."""
    result = set_maintenance(repo, service, False, None, env, push, author, branch, path)
    _report(result, sync)


def _report(result: Result, sync: bool) -> None:
    if result.sha is None:
        err.print(f"[yellow]{escape(result.message)}[/yellow]")
        return
    subject, *rest = result.message.splitlines()
    out.print(f"[green]committed[/green] {result.sha[:12]}  {escape(subject)}")
    for line in rest[1:]:
        out.print(f"  {escape(line)}")
    if not result.pushed:
        err.print("not pushed: add --push, or `git push` it yourself")
        return
    err.print("pushed")
    if sync:
        try:
            Client(default_state_dir()).post("/api/v1/sync", {"trigger": "cli"}, timeout=10)
        except OndeckError:
            return  # no controller here: it sees the commit on its next poll or webhook
        err.print("the local ondeck is syncing it: `ondeck status`")
