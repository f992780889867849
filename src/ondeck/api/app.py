"""The HTTP API of `ondeck up`: JSON under /api/v1, Prometheus at /metrics.

An adapter only: every answer comes from the `Controller`. It binds to
loopback by default; every /api/v1 call needs the bearer token from the
state dir, since status and logs can reveal as much as a mutating call can.
"""

import asyncio
import functools
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel

from ondeck import __version__
from ondeck.api import guard
from ondeck.api.backups import backups_router
from ondeck.api.guard import MAX_LIMIT, Body
from ondeck.api.jobs import jobs_router
from ondeck.api.openapi import describe_errors
from ondeck.api.releasetasks import release_task_router
from ondeck.api.run import run_router
from ondeck.api.secrets import secrets_router
from ondeck.api.ui import ui_router
from ondeck.api.webhooks import PushEvent, webhook_router
from ondeck.controller import Controller
from ondeck.errors import TemporaryError, UserError
from ondeck.gitops import Field, set_field
from ondeck.runtime.container import decode_cri_log
from ondeck.runtime.logs import tail
from ondeck.state.lifecycle import Trigger
from ondeck.status import (
    DeployAnswer,
    DiffDoc,
    EnvDiff,
    EventEntry,
    EventsDoc,
    HistoryDoc,
    ReleaseStatus,
    RolloutAnswer,
    ServiceDiffStatus,
    StatusDoc,
    SyncAnswer,
    SyncEntry,
)
from ondeck.store import SyncRecord
from ondeck.tokens import Scope, TokenInfo, Tokens, allows, visible_envs

FOLLOW_INTERVAL = 0.2
RESOLVE_INTERVAL = 1.0  # how often a follow looks for new instances
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="The most rows to return.")]


class DeployBody(Body):
    service: str
    env: str | None = None
    version: str | None = None
    image: str | None = None
    ref: str | None = None  # source.ref: the code the service runs (a branch, tag or sha)


class DownBody(Body):
    env: str | None = None  # None: every environment and the router, then the controller


class DownAnswer(BaseModel):
    """POST /api/v1/down: the instances stopped; whether the controller exits now."""

    stopped: list[str]
    exiting: bool
    on_cluster: dict[str, str] = {}  # environment -> `namespace N`: its pods keep running there


class SyncBody(Body):
    env: str | None = None
    wait: bool = False
    timeout: float = 300.0
    trigger: Literal[Trigger.CLI, Trigger.ROLLBACK] = (
        Trigger.CLI
    )  # what history records as the cause
    skip_backup: bool = False  # deploy without the `before_deploy` backups (history says so)


def create_app(
    controller: Controller,
    token: str,
    webhook_secret: str | None = None,
    public_read: bool = False,
    *,
    tokens: Tokens | None = None,
    app_name: str | None = None,
) -> FastAPI:
    """The API of one controller; under a host file (api/host.py) `tokens` are the host's
    and `app_name` the app this controller runs, whose name app-limited tokens must hold."""
    app = FastAPI(title="ondeck", version=__version__, docs_url=None, redoc_url=None)
    guard.install(app)
    loop = asyncio.get_running_loop()  # the controller's: webhooks arrive on worker threads

    def on_push(event: PushEvent) -> None:
        loop.call_soon_threadsafe(controller.refresh, Trigger.WEBHOOK)

    opts = controller.opts
    app.include_router(webhook_router(webhook_secret, opts.repo, opts.branch, on_push))

    tokens = tokens or Tokens(controller.store)

    def authorized(request: Request) -> TokenInfo:
        return guard.bearer(request, token, tokens)

    Caller = Annotated[TokenInfo, Depends(authorized)]

    def require(info: TokenInfo, scope: Scope, env: str | None) -> None:
        if not allows(info, scope, env):
            where = f"environment {env!r}" if env else "every environment"
            raise HTTPException(
                403, f"token {info.name!r} ({info.scope.label}) may not {scope.label} {where}"
            )
        if scope is Scope.READ and env is None:
            return  # a read of everything: `shown` filters what it returns
        apps = _apps_of(controller, env, app_name)
        if not info.may_touch_apps(apps):
            raise HTTPException(403, _app_refusal(info, scope, env, apps))

    def shown(info: TokenInfo, env: str | None) -> list[str]:
        """The environments a read may show: one asked for, or all the token sees."""
        if env is not None:
            if env not in controller.envs:
                raise HTTPException(404, f"unknown environment {env!r}")
            require(info, Scope.READ, env)
            return [env]
        return [
            name
            for name in visible_envs(info, controller.envs)
            if info.may_touch_apps(_apps_of(controller, name, app_name))
        ]

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(authorized)])

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = controller.metrics.render()
        if controller.router is not None:  # the router's per-backend figures, one scrape
            body += (await controller.router.metrics()).encode()
        return Response(body, media_type=content_type)

    @api.get("/status")
    def status(info: Caller) -> StatusDoc:
        doc = controller.status()
        names = set(shown(info, None))
        return doc.model_copy(
            update={"environments": [e for e in doc.environments if e.name in names]}
        )

    @api.post("/sync")
    async def sync(body: SyncBody, info: Caller) -> SyncAnswer:
        require(info, Scope.SYNC, body.env)
        try:
            future = controller.request_sync(body.env, body.trigger, body.skip_backup)
        except UserError as err:
            raise HTTPException(404, str(err)) from err
        if not body.wait:
            return SyncAnswer()
        try:
            return await asyncio.wait_for(asyncio.shield(future), body.timeout)
        except TimeoutError as err:
            raise HTTPException(
                504, f"sync not finished after {body.timeout:.0f}s; see `ondeck status`"
            ) from err

    @api.post("/down")
    async def down(body: DownBody, info: Caller) -> DownAnswer:
        """`ondeck down`: stop instances gracefully (and the router); the state is kept."""
        require(info, Scope.DEPLOY, body.env)
        try:
            future = controller.request_down(body.env)
        except UserError as err:
            raise HTTPException(404, str(err)) from err
        try:
            stopped = await asyncio.shield(future)
        except TemporaryError as err:
            raise HTTPException(503, str(err)) from err
        kept = {
            name: where
            for name, state in controller.envs.items()
            if body.env is None and (where := state.on_cluster()) is not None
        }
        exiting = body.env is None and controller.stopped
        return DownAnswer(stopped=stopped, exiting=exiting, on_cluster=kept)

    @api.post("/deploy")
    async def deploy(body: DeployBody, info: Caller) -> DeployAnswer:
        """CI without git credentials: a scoped token commits a new version, image or ref."""
        require(info, Scope.DEPLOY, body.env)
        asked: list[tuple[Field, str | None]] = [
            ("version", body.version),
            ("image", body.image),
            ("source.ref", body.ref),
        ]
        given = [(f, v) for f, v in asked if v]
        if len(given) != 1:
            raise HTTPException(422, "give one of a version, an image or a ref")
        field, value = given[0]
        author = f"{info.name} (ondeck token) <ondeck@{socket.gethostname()}>"
        try:
            result = await asyncio.to_thread(
                set_field,
                controller.opts.repo,
                [(body.service, value)],
                field,
                body.env,
                True,
                author,
                controller.opts.branch,
                controller.opts.path,
            )
        except UserError as err:
            raise HTTPException(409, str(err)) from err
        controller.refresh(Trigger.CLI)
        return DeployAnswer(commit=result.sha, message=result.message, pushed=result.pushed)

    @api.post("/rollout/{service}/{action}")
    def rollout_action(
        service: str, action: str, info: Caller, env: str | None = None
    ) -> RolloutAnswer:
        if action not in ("promote", "abort"):
            raise HTTPException(404, f"unknown rollout action {action!r}: use promote or abort")
        require(info, Scope.DEPLOY, env)
        try:
            progress = controller.rollout_action(env, service, action)
        except UserError as err:
            raise HTTPException(409, str(err)) from err
        return RolloutAnswer(release=ReleaseStatus.model_validate(progress.to_json()))

    @api.get("/diff")
    def diff(info: Caller, env: str | None = None) -> DiffDoc:
        """Per service: sync, the reasons, and a unified diff live -> desired (secrets masked)."""
        out = []
        for name in shown(info, env):
            state = controller.envs[name]
            texts = controller.unified_diffs(state)
            services = [
                ServiceDiffStatus(
                    name=d.name,
                    sync=d.sync,
                    reasons=list(d.reasons),
                    diff="\n".join(texts.get(d.name, [])),
                )
                for d in controller.diffs(state)
            ]
            out.append(EnvDiff(name=name, services=services))
        return DiffDoc(environments=out)

    @api.get("/history")
    def history(info: Caller, env: str | None = None, limit: Limit = 50) -> HistoryDoc:
        names = set(shown(info, env))
        rows = [r for r in controller.store.history(env, limit) if r.env in names]
        return HistoryDoc(syncs=[sync_entry(r) for r in rows])

    @api.get("/events")
    def events(info: Caller, env: str | None = None, limit: Limit = 100) -> EventsDoc:
        names = set(shown(info, env))
        found = [e for e in controller.store.events(env, limit) if e["env"] in names]
        return EventsDoc(events=[EventEntry.model_validate(e) for e in found])

    @api.get("/logs/{service}", response_class=PlainTextResponse)
    def logs(
        service: str,
        info: Caller,
        env: str | None = None,
        lines: Annotated[int, Query(ge=1, le=10000)] = 100,
        follow: bool = False,
        job: bool = False,
    ) -> Response:
        envs = shown(info, env)
        if job:
            paths = _job_log_paths(controller, service, envs)
            if not paths:
                _job_on_cluster(controller, service, envs)
                raise HTTPException(404, f"no job {service!r}; see `ondeck job list`")
            resolve = functools.partial(_job_log_paths, controller, service, envs)
        else:
            paths = _log_paths(controller, service, envs)
            resolve = functools.partial(_log_paths, controller, service, envs)
        if not paths:
            for name in envs:  # its pods log on the cluster: say where
                state = controller.envs[name]
                where = state.on_cluster()
                if where and state.desired and state.desired.service(service) is not None:
                    raise HTTPException(
                        409,
                        f"service {service!r} of environment {name!r} runs on Kubernetes "
                        f"({where}): read its logs with `kubectl logs -n "
                        f"{where.split()[-1]} deployment/{service}`",
                    )
            raise HTTPException(404, f"no instance of service {service!r}; see `ondeck status`")
        if not follow:
            return PlainTextResponse(
                "".join(_prefixed(p.label, p.text(tail(p.path, lines).encode())) for p in paths)
            )
        return StreamingResponse(_follow(resolve, lines), media_type="text/plain")

    app.include_router(api)
    app.include_router(
        secrets_router(
            opts.state_dir,
            authorized,
            require,
            lambda: controller.refresh(Trigger.CLI),
            app_name,
        )
    )
    app.include_router(jobs_router(lambda: controller.jobs, authorized, require))
    app.include_router(release_task_router(opts.state_dir, authorized, require, shown))
    app.include_router(backups_router(controller, authorized, require))
    app.include_router(run_router(controller, authorized, require))
    app.include_router(  # the dashboard at /; under a host file, with this app's tokens
        ui_router(controller, token, public_read, _app_check(tokens, app_name))
    )
    describe_errors(app)
    return app


def _app_check(tokens: Tokens, app_name: str | None) -> Callable[[str], TokenInfo | None]:
    """How the dashboard knows a token: under a host file, only one that may touch the app."""
    if app_name is None:
        return tokens.check

    def check(value: str) -> TokenInfo | None:
        info = tokens.check(value)
        return info if info is not None and info.may_touch_apps({app_name}) else None

    return check


def _apps_of(controller: Controller, env: str | None, app_name: str | None) -> set[str] | None:
    """The apps a call on `env` (None: every environment) acts on; None while one is unknown.

    Under a host file, `app_name`; else an environment's app is the `app:` of the
    spec it runs, known once a spec is loaded.
    """
    if app_name is not None:
        return {app_name} if env is None or env in controller.envs else None
    if env is None:
        states = list(controller.envs.values())
    elif env in controller.envs:
        states = [controller.envs[env]]
    else:
        return None
    desired = [s.desired for s in states]
    if any(d is None for d in desired):
        return None
    return {d.app for d in desired if d is not None}


def _app_refusal(info: TokenInfo, scope: Scope, env: str | None, apps: set[str] | None) -> str:
    """Why an app-restricted token may not act: which apps it holds, which the call touches."""
    held = ", ".join(info.apps)
    where = f"environment {env!r}" if env else "every environment"
    if apps is None:
        return (
            f"token {info.name!r} is limited to app {held}: the app of {where} is not known "
            "yet (no spec loaded); try again after its first sync"
        )
    others = ", ".join(sorted(apps - set(info.apps)))
    return (
        f"token {info.name!r} is limited to app {held}: it may not {scope.label} "
        f"app {others} ({where}); use a token for that app"
    )


def sync_entry(r: SyncRecord) -> SyncEntry:
    """A sync record as the API shows it (also the host's merged history, api/host.py)."""
    return SyncEntry(
        id=r.id,
        env=r.env,
        revision=r.revision,
        author=r.author,
        message=r.message,
        trigger=r.trigger,
        result=r.result,
        started_at=r.started_at,
        finished_at=r.finished_at,
        duration=(r.finished_at - r.started_at) if r.finished_at else None,
        actions=r.actions,
        changes=r.changes,
        error=r.error,
    )


@dataclass(frozen=True)
class LogSource:
    env: str
    inst_id: str
    path: Path
    cri: bool  # written by a container engine (`TIME STREAM F|P text` lines)

    @property
    def label(self) -> str:
        """The line prefix: environment and instance, since one service runs in several."""
        return f"{self.env}/{self.inst_id}"

    def text(self, raw: bytes) -> str:
        return (decode_cri_log(raw) if self.cri else raw).decode(errors="replace")


def _log_paths(controller: Controller, service: str, envs: list[str]) -> list[LogSource]:
    found = []
    for state in controller.envs.values():
        if state.name not in envs or state.supervisor is None:
            continue
        for inst in state.supervisor.instances.values():
            if inst.rec.service == service:
                cri = inst.rec.runtime == "container"
                found.append(LogSource(state.name, inst.rec.id, Path(inst.rec.log_path), cri))
    return found


def _job_on_cluster(controller: Controller, job: str, envs: list[str]) -> None:
    """A job whose runs are Jobs on a cluster logs there: 409 saying how to read them."""
    for name in envs:
        where = controller.envs[name].on_cluster()
        runs = controller.jobs.get(name)
        if where and runs is not None and runs.cluster is not None and job in runs.jobs:
            raise HTTPException(
                409,
                f"job {job!r} of environment {name!r} runs on Kubernetes ({where}): read its "
                f"runs' logs with `kubectl logs -n {where.split()[-1]} -l ondeck.dev/job={job} "
                "--prefix`",
            )


def _job_log_paths(controller: Controller, job: str, envs: list[str]) -> list[LogSource]:
    """A job's log in each environment that runs it on the host (one file, every run behind a
    header); on Kubernetes a run's output is its pod's log."""
    return [
        LogSource(env, job, jobs.runner.log_path(job), False)
        for env, jobs in controller.jobs.items()
        if env in envs and job in jobs.jobs and jobs.cluster is None
    ]


def _prefixed(inst_id: str, text: str) -> str:
    return "".join(f"[{inst_id}] {line}\n" for line in text.splitlines())


async def _follow(resolve: Callable[[], list[LogSource]], lines: int) -> AsyncIterator[bytes]:
    """Like `tail -f` over every instance's log; survives copytruncate rotation.

    The instance list is resolved again every RESOLVE_INTERVAL, so instances started
    after the follow began (a deploy, a scale-up, a restart) are followed from their
    first line; those that are gone stay until their file has been read to the end.
    """
    offsets: dict[Path, int] = {}
    sources: dict[Path, LogSource] = {}
    for src in resolve():
        yield _prefixed(src.label, src.text(tail(src.path, lines).encode())).encode()
        offsets[src.path] = src.path.stat().st_size if src.path.exists() else 0
        sources[src.path] = src
    resolved_at = time.monotonic()
    while True:
        if time.monotonic() - resolved_at >= RESOLVE_INTERVAL:
            resolved_at = time.monotonic()
            for src in resolve():
                if src.path not in sources:
                    sources[src.path] = src
                    offsets[src.path] = 0  # new since the follow began: all of it is new
        for src in sources.values():
            size = src.path.stat().st_size if src.path.exists() else 0
            if size < offsets[src.path]:
                offsets[src.path] = 0  # rotated (truncated): read from the start
            if size > offsets[src.path]:
                with src.path.open("rb") as f:
                    f.seek(offsets[src.path])
                    chunk = f.read(size - offsets[src.path])
                offsets[src.path] = size
                yield _prefixed(src.label, src.text(chunk)).encode()
        await asyncio.sleep(FOLLOW_INTERVAL)
