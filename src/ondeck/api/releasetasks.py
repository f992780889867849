"""`/api/v1/release-task/{service}`: the whole output of a service's latest release task.

Backs `ondeck logs SERVICE --release`. The task's environment may hold
secrets, but only what the task itself printed is here. Included by
`api/app.py`. No `from __future__ import annotations`: FastAPI reads the
annotations of these local functions at run time.
"""

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import PlainTextResponse

from ondeck.releasetask.runner import OUTPUT
from ondeck.tokens import Scope, TokenInfo

Require = Callable[[TokenInfo, Scope, str | None], None]


def latest_output(state_dir: Path, envs: Iterable[str], service: str) -> Path | None:
    """The output log of the most recent task of `service` in any of `envs`, any app."""
    root = state_dir / "release-tasks"
    found = [p for env in envs for p in root.glob(f"*/{env}/{service}/*/{OUTPUT}")]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def release_task_router(
    state_dir: Path,
    authorized: Callable[..., TokenInfo],
    require: Require,
    envs: Callable[[TokenInfo, str | None], list[str]],
) -> APIRouter:
    router = APIRouter(prefix="/api/v1/release-task")
    Caller = Annotated[TokenInfo, Depends(authorized)]

    @router.get("/{service}", response_class=PlainTextResponse)
    def release_output(service: str, info: Caller, env: str | None = None) -> PlainTextResponse:
        path = latest_output(state_dir, envs(info, env), service)
        if path is None:
            raise HTTPException(
                404, f"service {service!r} has run no release task; see `release:` in the spec"
            )
        return PlainTextResponse(path.read_text(errors="replace"))

    return router
