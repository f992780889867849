"""Secrets and release tasks in an environment's prepare phase (see environment.py's hooks).

`secrets_at` gives `Environment.render_revision` the secrets of a revision: the
host store's, then the age file the spec names at that revision (it wins).
`run_release_tasks` is a prepare step after the build: each service's
`release:` runs once per release before any instance of it starts; a failure
refuses the revision. `follow_host_secrets` is a pass hook: a secret set or
unset on the host applies the revision again, so exactly the services that
use it roll (and a revision refused for want of it is tried again).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ondeck.errors import UserError
from ondeck.releases import data_dir, release_dir
from ondeck.releasetask.record import TaskState
from ondeck.releasetask.runner import ReleaseTasks, Task, TaskKey
from ondeck.secrets import resolve
from ondeck.secrets.hoststore import HostStore
from ondeck.spec.template import expand, instance_env
from ondeck.state.desired import Desired, DesiredService, SecretEnv
from ondeck.state.lifecycle import Trigger

if TYPE_CHECKING:
    from ondeck.environment import Environment, Host

log = logging.getLogger("ondeck")


def secrets_at(
    host: Host, env_name: str, overlay: str | None, rev: str, data: dict[str, Any]
) -> SecretEnv:
    """The secrets an environment may use at `rev` (read from the local mirror)."""
    app = data.get("app")
    name = resolve.secrets_file(data, overlay)
    file = None
    if name is not None:
        path = f"{host.opts.path.strip('/')}/{name}".lstrip("/")
        text = host.source.read_file(rev, path)
        if text is None:
            raise UserError(
                f"secrets file {path} not found at {rev[:12]}; create it with "
                f"`ondeck secret encrypt {name} NAME` and commit it"
            )
        file = (path, text)
    return resolve.load(host.opts.state_dir, app if isinstance(app, str) else "", env_name, file)


def build_environ(env: Environment, desired: Desired, svc: DesiredService) -> dict[str, str]:
    """A release's environment at build and release time: no PORT, no instance id."""
    state_dir = env.host.opts.state_dir
    builtins = {
        "ONDECK_APP": desired.app,
        "ONDECK_SERVICE": svc.name,
        "ONDECK_ENV": env.name,
        "ONDECK_REVISION": desired.revision,
        "ONDECK_CODE_REVISION": desired.code_revision(svc),
        "ONDECK_VERSION": svc.spec.version or "",
        "ONDECK_DATA_DIR": str(data_dir(state_dir, desired.app, env.name)),
    }
    return instance_env(svc.spec.env, builtins, os.environ, svc.secrets.values)


async def run_release_tasks(env: Environment, desired: Desired) -> None:
    """Each service's release task, once per release, after the build, before its instances."""
    if desired.runtime != "process":
        return  # refused by validation for other runtimes
    tasks = ReleaseTasks(env.host.store, env.host.opts.state_dir, env.host.clock.time)
    state_dir = env.host.opts.state_dir
    for svc in desired.services:
        if svc.spec.release is None:
            continue
        key = TaskKey(desired.app, env.name, svc.name, svc.fingerprint)
        record = await asyncio.to_thread(tasks.record, key)
        if record is not None and record.state is TaskState.SUCCEEDED:
            continue
        where = release_dir(state_dir, desired.app, svc.release)
        data_dir(state_dir, desired.app, env.name).mkdir(parents=True, exist_ok=True)
        environ = build_environ(env, desired, svc)
        argv = [expand(arg, environ) for arg in svc.spec.release]  # as an instance's command
        task = Task(argv, where, environ, svc.spec.release_timeout)
        log.info("[%s] %s: running the release task %s", env.name, svc.name, " ".join(task.argv))
        done = await tasks.ensure(key, task)
        log.info("[%s] %s: release task succeeded (attempt %d)", env.name, svc.name, done.attempt)


def host_secrets_stamp(state_dir: Path) -> tuple[int, int] | None:
    """Changes whenever the host store is written (an atomic rename: a new inode)."""
    try:
        st = HostStore(state_dir).path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


class HostSecretsWatch:
    """A pass hook: the host store changed since the last pass, so apply the revision again."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.stamp = host_secrets_stamp(state_dir)

    async def __call__(self, env: Environment, now: float) -> None:
        stamp = host_secrets_stamp(self.state_dir)
        if stamp == self.stamp or env.loading:
            return
        self.stamp = stamp
        env.start_background(_reapply(env))


async def _reapply(env: Environment) -> None:
    if env.error_commit is not None:  # refused, perhaps for want of this very secret
        await env.apply_revision(env.error_commit.sha, Trigger.CLI, env.error_commit)
        return
    if env.desired is None or env.commit is None:
        return
    rev, commit = env.desired.revision, env.commit
    try:
        again = await asyncio.to_thread(env.render_revision, rev)
    except UserError:
        again = None  # e.g. a secret it needs was unset: let the apply refuse and say so
    before = {s.name: s.fingerprint for s in env.desired.services}
    if again is None or any(before.get(s.name) != s.fingerprint for s in again.services):
        log.info("[%s] the host's secrets changed: applying %s again", env.name, rev[:12])
        await env.apply_revision(rev, Trigger.CLI, commit)
