"""One environment's backups as its sync drives them: the schedule, the gate before a deploy, status.

The environment calls `follow` with what it deploys, `tick` on its passes
(cheap: the work runs on the backup service's thread) and awaits
`before_deploy` in its prepare phase: a sync that would change a service
first takes the `before_deploy` backups of what runs now (verified when
`verify`); if one fails, the sync does not start and the error says why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from ondeck.backup.manifest import Manifest
from ondeck.backup.service import Action, BackupMetrics, BackupService, Place, Trigger
from ondeck.errors import BackupFailure, UserError
from ondeck.kube.render import manifests
from ondeck.state.desired import Desired

Secrets = Callable[[str, str], Mapping[str, str]]  # (app, env) -> the host secrets that apply


class BackupGateFailed(UserError):
    """A `before_deploy` backup failed: the sync must not start."""


def changes_a_service(current: Desired | None, new: Desired) -> bool:
    """Whether deploying `new` over `current` would start, stop or replace an instance.

    On Kubernetes, an instance is a pod: what counts is each Deployment's pod template
    and replicas as rendered (probes, grace, the config hash...), not the host's
    fingerprint; a move between runtimes replaces every instance."""
    if current is None:
        return False  # nothing deployed yet: no data of it to protect
    if current.runtime != new.runtime:
        return bool(current.services or new.services)
    if new.runtime == "kubernetes":
        return _pods_of(current) != _pods_of(new)
    before = {s.name: (s.fingerprint, s.replicas) for s in current.services}
    after = {s.name: (s.fingerprint, s.replicas) for s in new.services}
    return before != after


def _pods_of(desired: Desired) -> dict[str, Any]:
    """Each rendered Deployment's pod template and replicas, by name."""
    return {
        obj["metadata"]["name"]: (obj["spec"]["template"], obj["spec"]["replicas"])
        for obj in manifests(desired)
        if obj["kind"] == "Deployment"
    }


class EnvBackups:
    """Owns the `BackupService` of one environment, rebuilt when its app or backups change."""

    def __init__(
        self,
        state_dir: Path,
        env: str,
        metrics: BackupMetrics | None,
        secrets: Secrets,
        log: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.state_dir, self.env, self.metrics = state_dir, env, metrics
        self.secrets, self.log = secrets, log
        self.service: BackupService | None = None
        self._app: str | None = None

    def follow(self, desired: Desired) -> None:
        """What the environment runs now: its backups are the ones scheduled."""
        backups = dict(desired.backups)
        if self.service is None or self._app != desired.app:
            self.close()
            if not backups:
                return
            app, env, secrets = desired.app, self.env, self.secrets
            place = Place(app, env, self.state_dir, lambda: secrets(app, env))
            self.service = BackupService(place, backups, self.metrics, log=self.log)
            self._app = desired.app
        self.service.update(backups, desired.revision)

    def tick(self) -> list[str]:
        return self.service.tick() if self.service is not None else []

    def gated(self, current: Desired | None, new: Desired) -> list[str]:
        """The backups a deploy of `new` over `current` must take first (by name)."""
        if current is None or not changes_a_service(current, new):
            return []
        return [name for name, spec in current.backups if spec.before_deploy]

    async def before_deploy(self, current: Desired | None, new: Desired, skip: bool) -> list[str]:
        """Take the gate backups (those of what runs now); the ids taken. Raises `BackupGateFailed`."""
        wanted = self.gated(current, new)
        if current is None or not wanted:
            return []
        if skip:
            self.log(
                f"[{self.env}] before_deploy backups skipped (--skip-backup): {', '.join(wanted)}"
            )
            return []
        self.follow(current)
        assert self.service is not None  # follow built it: `current` has backups
        taken = []
        for future in self.service.before_deploy():
            try:
                manifest = await asyncio.wrap_future(future)
            except BackupFailure as err:
                raise BackupGateFailed(
                    f"the backup before this deploy failed, so the sync did not start: {err}. "
                    "Fix it, or deploy without it: `ondeck sync --skip-backup`"
                ) from err
            taken.append(manifest.id)
        return taken

    async def restore(
        self,
        name: str,
        backup_id: str | None,
        while_running: bool,
        pause: Callable[[], Awaitable[None]],
        resume: Callable[[], Awaitable[None]],
    ) -> tuple[Manifest, Manifest]:
        """Back up the current state, stop the services (`pause`, unless `while_running`),
        restore, start them again (`resume`: it waits for health). (restored, safety backup)."""
        if self.service is None or name not in self.service.backups:
            raise BackupFailure(f"no backup named {name!r} in {self.env}")
        service = self.service
        chosen = service.pick(name, backup_id)  # before the safety backup becomes the newest
        try:
            safety = await asyncio.wrap_future(
                service.submit(name, Action.RUN, Trigger.BEFORE_RESTORE)
            )
        except BackupFailure as err:
            raise BackupFailure(
                f"the backup of the current state failed, so nothing was restored: {err}"
            ) from err
        try:
            if not while_running:
                await pause()
            restored = await asyncio.wrap_future(
                service.submit(name, Action.RESTORE, Trigger.MANUAL, chosen.id)
            )
        finally:
            if not while_running:  # also after a pause that failed midway: nothing left down
                await resume()
        return restored, safety

    @property
    def version(self) -> tuple[int, int]:
        """Changes when the backups' status may have: part of the controller's status key."""
        return (id(self.service), self.service.version) if self.service is not None else (0, 0)

    def status(self) -> list[dict[str, Any]]:
        return self.service.status() if self.service is not None else []

    def close(self) -> None:
        if self.service is not None:
            self.service.close()
        self.service, self._app = None, None
