"""`/api/v1/jobs`: scheduled jobs of every environment, their runs, a manual run.

Included by `api/app.py`; `jobs()` gives each environment's `EnvJobs` by name.
Reading needs a read scope on the environment, running a job a sync scope.
An environment on Kubernetes answers the same way: its runs are its Jobs.
No `from __future__ import annotations`: FastAPI reads these annotations at run time.
"""

import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel

from ondeck.errors import TemporaryError, UserError
from ondeck.jobs.runner import Run
from ondeck.jobs.scheduler import EnvJobs
from ondeck.tokens import Scope, TokenInfo, allows

Require = Callable[[TokenInfo, Scope, str | None], None]


class RunBody(BaseModel):
    env: str | None = None
    wait: bool = False
    timeout: Annotated[float, Query(gt=0, le=24 * 3600)] = 3600.0


def jobs_router(
    jobs: Callable[[], Mapping[str, EnvJobs]],
    authorized: Callable[..., TokenInfo],
    require: Require,
) -> APIRouter:
    router = APIRouter(prefix="/api/v1/jobs")
    Caller = Annotated[TokenInfo, Depends(authorized)]

    def pick(info: TokenInfo, env: str | None, name: str, scope: Scope) -> tuple[str, EnvJobs]:
        found = [(e, j) for e, j in jobs().items() if name in j.jobs and (env is None or e == env)]
        if not found:
            where = f" in {env}" if env else ""
            raise HTTPException(404, f"no job {name!r}{where}; see `ondeck job list`")
        if len(found) > 1:
            envs = ", ".join(e for e, _ in found)
            raise HTTPException(422, f"job {name!r} runs in {envs}: choose one with --env")
        require(info, scope, found[0][0])
        return found[0]

    @router.get("")
    def list_jobs(info: Caller, env: str | None = None) -> dict[str, Any]:
        now = time.time()
        rows = []
        for name, env_jobs in sorted(jobs().items()):
            if (env is not None and name != env) or not allows(info, Scope.READ, name):
                continue
            for s in env_jobs.status(now):
                rows.append(
                    {
                        "env": name,
                        "name": s.name,
                        "schedule": s.schedule,
                        "next_run": s.next_run,
                        "running": [r.to_json() for r in s.running],
                        "last": s.last.to_json() if s.last else None,
                        "last_success_at": s.last_success.finished_at if s.last_success else None,
                    }
                )
        return {"jobs": rows}

    @router.get("/{name}/history")
    def history(
        name: str,
        info: Caller,
        env: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        env_name, env_jobs = pick(info, env, name, Scope.READ)
        runs = env_jobs.runner.record(name).runs[-limit:]
        return {"env": env_name, "job": name, "runs": [r.to_json() for r in reversed(runs)]}

    @router.post("/{name}/run")
    async def run(name: str, body: RunBody, info: Caller) -> dict[str, Any]:
        env_name, env_jobs = pick(info, body.env, name, Scope.SYNC)
        try:
            started = await env_jobs.start(name)
            done: Run = started
            if body.wait and started.finished_at is None:
                done = await env_jobs.wait(name, started.id, body.timeout)
        except UserError as err:
            raise HTTPException(422, str(err)) from None
        except TemporaryError as err:  # the cluster of a Kubernetes environment unreachable
            raise HTTPException(503, str(err)) from None
        return {"env": env_name, "job": name, "run": done.to_json()}

    return router
