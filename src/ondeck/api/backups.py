"""`/api/v1/backups`: list, run, verify and restore an environment's backups.

An adapter: the `BackupHost` (the controller) knows each environment's
backups, data dir and secrets, and orchestrates a restore (stop, restore,
start, wait for health, history). Runs are awaited on the backup worker
thread, never on the event loop. Included by `api/app.py`.
No `from __future__ import annotations`: FastAPI reads these annotations at run time.
"""

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel

from ondeck.backup.manifest import Manifest
from ondeck.backup.service import Action, BackupService
from ondeck.errors import BackupFailure, UserError
from ondeck.tokens import Scope, TokenInfo

Require = Callable[[TokenInfo, Scope, str | None], None]


class BackupHost(Protocol):
    def backup_service(self, env: str | None) -> tuple[str, BackupService]:
        """The environment's name and its backups; UserError for an unknown environment."""
        ...

    async def restore_backup(
        self, env: str | None, name: str, backup_id: str | None, while_running: bool
    ) -> Manifest:
        """Back up the current state, stop the services (unless `while_running`), restore,
        start them, wait for health, record it in history."""
        ...


class RunBody(BaseModel):
    env: str | None = None
    id: str | None = None


class RestoreBody(BaseModel):
    env: str | None = None
    id: str | None = None
    while_running: bool = False


def backups_router(
    host: BackupHost, authorized: Callable[..., TokenInfo], require: Require
) -> APIRouter:
    router = APIRouter(prefix="/api/v1/backups")
    Caller = Annotated[TokenInfo, Depends(authorized)]

    def service(info: TokenInfo, scope: Scope, env: str | None) -> tuple[str, BackupService]:
        try:
            name, found = host.backup_service(env)
        except UserError as err:
            raise HTTPException(404, str(err)) from err
        require(info, scope, name)
        return name, found

    @router.get("")
    def backup_status(info: Caller, env: str | None = None) -> dict[str, Any]:
        """Per backup of the environment: last success, last verified restore, last error."""
        name, found = service(info, Scope.READ, env)
        return {"env": name, "backups": found.status()}

    @router.get("/{backup}")
    def list_backups(backup: str, info: Caller, env: str | None = None) -> dict[str, Any]:
        """One object per backup, oldest first: id, created, size, sha256, verified, revision."""
        name, found = service(info, Scope.READ, env)
        if backup not in found.backups:
            raise HTTPException(404, f"no backup named {backup!r} in {name}")
        return {"env": name, "backups": [m.summary() for m in found.manifests(backup)]}

    async def act(backup: str, action: Action, info: TokenInfo, body: RunBody) -> dict[str, Any]:
        _, found = service(info, Scope.SYNC, body.env)
        try:
            manifest = await asyncio.wrap_future(found.submit(backup, action, backup_id=body.id))
        except BackupFailure as err:
            raise HTTPException(409, str(err)) from err
        return manifest.summary()

    @router.post("/{backup}/run")
    async def run_backup(backup: str, body: RunBody, info: Caller) -> dict[str, Any]:
        return await act(backup, Action.RUN, info, body)

    @router.post("/{backup}/verify")
    async def verify_backup(backup: str, body: RunBody, info: Caller) -> dict[str, Any]:
        return await act(backup, Action.VERIFY, info, body)

    @router.post("/{backup}/restore")
    async def restore_backup(backup: str, body: RestoreBody, info: Caller) -> dict[str, Any]:
        service(info, Scope.DEPLOY, body.env)
        try:
            manifest = await host.restore_backup(body.env, backup, body.id, body.while_running)
        except (BackupFailure, UserError) as err:
            raise HTTPException(409, str(err)) from err
        return manifest.summary()

    return router
