"""`POST /api/v1/run/{service}`: what `ondeck run` needs to start a one-off command.

The CLI runs on the controller's host and execs the command itself (so a
terminal stays interactive); this endpoint gives it the service's current
release directory and its full environment (builtins but PORT and
ONDECK_INSTANCE, the spec's env, the secrets that env refers to) and records
the run as an event. The answer holds secret values: a sync-scoped token may
call it, and the CLI never prints it. Included by `api/app.py`.
No `from __future__ import annotations`: FastAPI reads these annotations at run time.
"""

import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from ondeck.controller import Controller
from ondeck.environment import Environment
from ondeck.releases import data_dir, is_complete, release_dir
from ondeck.spec.template import PER_INSTANCE, instance_env
from ondeck.state.desired import DesiredService
from ondeck.supervisor import ONE_OFF_VAR
from ondeck.tokens import Scope, TokenInfo

Require = Callable[[TokenInfo, Scope, str | None], None]


class RunBody(BaseModel):
    env: str | None = None
    argv: list[str] = Field(min_length=1)


class RunAnswer(BaseModel):
    """Where and with what environment to exec; `environ` may hold secret values."""

    env: str
    cwd: str
    revision: str
    environ: dict[str, str]


def run_router(
    controller: Controller, authorized: Callable[..., TokenInfo], require: Require
) -> APIRouter:
    router = APIRouter(prefix="/api/v1")
    Caller = Annotated[TokenInfo, Depends(authorized)]

    @router.post("/run/{service}")
    def run(service: str, body: RunBody, info: Caller) -> RunAnswer:
        env = _environment(controller, body.env)
        require(info, Scope.SYNC, env.name)
        svc = _service(env, service)
        cwd = _release(controller, env, svc)
        answer = RunAnswer(
            env=env.name,
            cwd=str(cwd),
            revision=env.desired.revision if env.desired else "",
            environ={
                **one_off_env(controller.opts.state_dir, env, svc),
                ONE_OFF_VAR: info.name,  # the drift check leaves it alone (not a stray)
            },
        )
        message = f"ondeck run by {info.name}: {shlex.join(body.argv)}"
        controller.store.events_add(env.name, service, "run", message, time.time())
        return answer

    return router


def one_off_env(state_dir: Path, env: Environment, svc: DesiredService) -> dict[str, str]:
    """An instance's environment without what only an instance has (its port and id)."""
    assert env.desired is not None  # _service found the service in it
    builtins = {
        "ONDECK_APP": env.desired.app,
        "ONDECK_SERVICE": svc.name,
        "ONDECK_ENV": env.name,
        "ONDECK_REVISION": env.desired.revision,
        "ONDECK_CODE_REVISION": env.desired.code_revision(svc),
        "ONDECK_VERSION": svc.spec.version or "",
        "ONDECK_DATA_DIR": str(data_dir(state_dir, env.desired.app, env.name)),
    }
    # `${PORT}` in an env value expands to "" here: a one-off command has no port of its own
    unknown = dict.fromkeys(PER_INSTANCE, "")
    environ = instance_env(svc.spec.env, {**builtins, **unknown}, os.environ, svc.secrets.values)
    for name in PER_INSTANCE:
        environ.pop(name, None)
    return environ


def _environment(controller: Controller, name: str | None) -> Environment:
    if name is not None:
        if name not in controller.envs:
            raise HTTPException(404, f"unknown environment {name!r}; see `ondeck status`")
        return controller.envs[name]
    if len(controller.envs) != 1:
        names = ", ".join(controller.envs)
        raise HTTPException(409, f"several environments ({names}): pass --env")
    return next(iter(controller.envs.values()))


def _service(env: Environment, name: str) -> DesiredService:
    desired = env.desired
    if desired is None:
        raise HTTPException(409, f"{env.name} has nothing deployed yet; see `ondeck status`")
    if desired.runtime != "process":
        raise HTTPException(
            409, f"ondeck run: the {desired.runtime} runtime is not supported yet (process only)"
        )
    for svc in desired.services:
        if svc.name == name:
            return svc
    known = ", ".join(s.name for s in desired.services)
    raise HTTPException(404, f"no service {name!r} in {env.name} (services: {known})")


def _release(controller: Controller, env: Environment, svc: DesiredService) -> Path:
    """The release instances of the service run from; the desired one once it is built."""
    if env.supervisor is not None:
        for inst in env.supervisor.instances.values():
            if inst.rec.service == svc.name and inst.ready:
                return Path(inst.rec.release_dir)
    assert env.desired is not None
    built = release_dir(controller.opts.state_dir, env.desired.app, svc.release)
    if not is_complete(built):
        raise HTTPException(409, f"{svc.name} has no release built yet; see `ondeck status`")
    return built
