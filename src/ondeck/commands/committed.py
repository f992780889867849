"""What the write-path commands say after their commit, and the nudge to a local controller.

Called by cli.py (set-version, set-image, promote, rollback) and
commands/maintenance.py. A commit needs no push when it landed in the very
checkout the controller on this host follows: the controller is asked to
sync it instead of the user being told to push.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from ondeck.client import Client, default_state_dir
from ondeck.errors import OndeckError

if TYPE_CHECKING:  # the CLI starts faster without the spec machinery: imported when used
    from ondeck.gitops import Result

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def report(
    result: Result, target: str, state_dir: Path | None, trigger: str = "cli", nudge: bool = True
) -> None:
    """Print the commit; then push advice, or a sync of the local controller that will run it."""
    if result.sha is None:
        err.print(f"[yellow]{escape(result.message)}[/yellow]")
        return
    subject, *rest = result.message.splitlines()
    out.print(f"[green]committed[/green] {result.sha[:12]}  {escape(subject)}")
    for line in rest[1:]:
        out.print(f"  {escape(line)}")
    if result.pushed:
        err.print("pushed")
    elif watched_here(target, state_dir):
        err.print("committed to the repo the local ondeck watches: no push needed")
    else:
        err.print("not pushed: add --push, or `git push` it yourself")
        return
    if nudge:
        _nudge(trigger, state_dir)


def watched_here(target: str, state_dir: Path | None) -> bool:
    """Whether `target` is the checkout the controller on this host follows."""
    from ondeck.source.write import checkout_root

    top = checkout_root(target)
    if top is None:
        return False  # a remote URL: only a push reaches it
    try:
        doc = _client(state_dir).get("/api/v1/status")
        watched = [doc["source"]["repo"], *(a["source"]["repo"] for a in doc.get("apps", []))]
    except (OndeckError, KeyError, TypeError):
        return False  # no controller here, or none that says what it watches
    return any(  # the repo, or (a host file) one of its apps' repos
        isinstance(w, str) and os.path.isdir(w) and Path(w).resolve() == top for w in watched
    )


def _nudge(trigger: str, state_dir: Path | None) -> None:
    """Tell a controller on this host to fetch now, so the commit deploys at once."""
    try:
        _client(state_dir).post("/api/v1/sync", {"trigger": trigger}, timeout=10)
    except OndeckError:
        return  # no controller here: it will see the commit on its next poll or webhook
    err.print("the local ondeck is syncing it: `ondeck status`")


def _client(state_dir: Path | None) -> Client:
    return Client((state_dir or default_state_dir()).resolve())
