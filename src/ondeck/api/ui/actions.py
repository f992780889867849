"""What the dashboard's buttons do: refresh, sync, rollback (a revert commit), promote/abort.

`routes.py` checks the session, its CSRF token and the token's scope, then
calls one of these with the posted form. Each returns the outcome a person
reads, or raises an `OndeckError` whose message says what went wrong.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

from ondeck.api.ui import views
from ondeck.api.ui.access import Viewer
from ondeck.errors import UserError
from ondeck.gitops import rollback
from ondeck.state.lifecycle import Trigger
from ondeck.status import StatusDoc

if TYPE_CHECKING:
    from ondeck.controller import Controller

SYNC_WAIT = 300.0  # seconds a Sync waits for its outcome before saying it goes on
TRIGGER = Trigger.UI  # what history records as the cause of a sync asked for here
REFRESH_TRIGGER = Trigger.POLL  # fetch, and sync only if auto-sync is on

Form = dict[str, str]


class Actions:
    """The dashboard's actions on one controller."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller

    async def refresh(self, form: Form, viewer: Viewer) -> str:
        # A poll now, not a manual trigger: Refresh compares with git, Sync applies.
        self.c.refresh(REFRESH_TRIGGER)
        if self.c.opts.auto_sync:
            return "fetching from git now"
        return "fetching from git now (auto-sync is off: press Sync to apply)"

    async def sync(self, form: Form, viewer: Viewer) -> str:
        env = form.get("env") or None
        future = self.c.request_sync(env, TRIGGER)
        try:
            answer = await asyncio.wait_for(asyncio.shield(future), SYNC_WAIT)
        except TimeoutError:
            return f"still syncing after {SYNC_WAIT:.0f}s: the page updates when it is done"
        if answer.error:
            raise UserError(f"sync failed: {answer.error}")
        if answer.status is None:
            return "synced"
        return sync_outcome(answer.status, env)

    async def rollback(self, form: Form, viewer: Viewer) -> str:
        """A revert of the environment's last deploy (or a restore of `to`), pushed, then synced."""
        env = form.get("env") or None
        overlay = self.c.envs[env].overlay if env else None
        author = f"{viewer.name} (ondeck dashboard) <ondeck@{socket.gethostname()}>"
        opts = self.c.opts
        to = form.get("to") or None
        result = await asyncio.to_thread(
            rollback, opts.repo, overlay, to, True, author, opts.branch, opts.path
        )
        if result.sha is None:
            return result.message
        self.c.request_sync(env, Trigger.ROLLBACK)
        return f"committed {result.sha[:7]}: {result.message.splitlines()[0]}; syncing it now"

    async def rollout(self, form: Form, viewer: Viewer) -> str:
        action = form.get("action", "")
        if action not in ("promote", "abort"):
            raise UserError(f"unknown rollout action {action!r}: promote or abort")
        env, service = form.get("env") or None, form.get("service", "")
        progress = self.c.rollout_action(env, service, action)
        return f"{service}: {action} accepted ({progress.stage.value} at {progress.weight}%)"


def sync_outcome(doc: StatusDoc, env: str | None) -> str:
    """`production: Synced, Healthy at 3f2a9c1` for each environment the sync was about."""
    envs = [e for e in doc.environments if env is None or e.name == env]
    return "; ".join(f"{e.name}: {e.sync}, {e.health} at {views.short(e.revision)}" for e in envs)
