"""The API of a host of many apps (`ondeck up --host-file`): one port, an app dimension.

Each app's own API (api/app.py, unchanged) answers under `/apps/NAME/`, so
every command works with `--app NAME`. At the top: `status` merges every app
(each environment names its `app`), `sync` without `--env` syncs them all,
`down` takes the whole host down, `/` lists every app's environments. Any other
call goes to the only app when there is one (a one-app host file behaves like
`ondeck up REPO`), and is refused, naming the apps, when there are several.
Built by cli.py (`ondeck up --host-file`), served by daemon.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from html import escape
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import Message, Receive, Scope, Send

from ondeck import __version__
from ondeck.api import guard
from ondeck.api.app import DownAnswer, DownBody, SyncBody, create_app, sync_entry
from ondeck.api.webhooks import PROVIDERS, HookTarget, PushEvent, fanout_router
from ondeck.apphost import AppHost
from ondeck.controller import Controller
from ondeck.errors import TemporaryError, UserError
from ondeck.state.health import Health, worst
from ondeck.state.lifecycle import Trigger
from ondeck.status import (
    ControllerStatus,
    HistoryDoc,
    RouterStatus,
    SourceStatus,
    StatusDoc,
    SyncAnswer,
)
from ondeck.tokens import ADMIN, TokenInfo, allows, host_tokens, visible_envs
from ondeck.tokens import Scope as TokenScope

APP_COOKIE = "ondeck_app"  # the app whose dashboard this browser is looking at
HOST_PATHS = {
    "/",
    "/api/v1/status",
    "/api/v1/sync",
    "/api/v1/down",
    "/api/v1/history",
    "/healthz",
    "/metrics",
}
HOST_PATHS |= {f"/hooks/{provider}" for provider in PROVIDERS}  # every app's repo, the host file's


class AppsMetrics(Collector):
    """Every app's metrics in one scrape, each sample labelled with its `app`."""

    def __init__(self, host: AppHost) -> None:
        self.host = host

    def collect(self) -> Iterable[Metric]:
        merged: dict[tuple[str, str], Metric] = {}
        for name, running in list(self.host.apps.items()):
            for family in running.controller.metrics.registry.collect():
                key = (family.name, family.type)
                if key not in merged:
                    merged[key] = Metric(family.name, family.documentation, family.type)
                merged[key].samples += [
                    s._replace(labels={**s.labels, "app": name}) for s in family.samples
                ]
        return list(merged.values())


class HostApi:
    """ASGI: `/apps/NAME/...` to that app's API, the host's own calls here."""

    def __init__(
        self, host: AppHost, token: str, webhook_secret: str | None, public_read: bool
    ) -> None:
        self.host, self.token = host, token
        self.webhook_secret, self.public_read = webhook_secret, public_read
        self.own = _host_routes(self)
        self._apis: dict[int, tuple[Controller, Any]] = {}
        # One token list for the host; a token names the apps it may touch (tokens.py).
        self.tokens = host_tokens(host.base.state_dir)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] not in ("http", "websocket"):
            await self.own(scope, receive, send)
            return
        if path == "/apps" or path.startswith("/apps/"):
            await self._to_app(path.removeprefix("/apps").strip("/").split("/", 1)[0], scope,
                               receive, send)  # fmt: skip
            return
        apps = self.host.apps
        if len(apps) == 1 and (path == "/" or path not in HOST_PATHS):
            await self._api(next(iter(apps.values())).controller)(scope, receive, send)
            return
        if path in HOST_PATHS or not apps:
            await self.own(scope, receive, send)
            return
        if path.startswith("/api/"):
            names = ", ".join(apps)
            await _refuse(
                send,
                400,
                f"this host runs several apps ({names}): name one with --app NAME "
                "(the API of app NAME is under /apps/NAME/)",
            )
            return
        # A dashboard page of /apps/NAME/ links to /traffic, /login, /static/...: the
        # app whose dashboard the browser last opened answers them.
        chosen = _cookie(scope, APP_COOKIE)
        if chosen in apps:
            await self._api(apps[chosen].controller)(scope, receive, send)
            return
        await self.own(scope, receive, send)

    async def _to_app(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        target = self.host.apps.get(name)
        if target is None:
            known = ", ".join(self.host.apps) or "none"
            await _refuse(send, 404, f"unknown app {name!r}; this host runs: {known}")
            return

        async def remember(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{APP_COOKIE}={name}; Path=/; HttpOnly; SameSite=Strict".encode()
                message = {**message, "headers": [*message["headers"], (b"set-cookie", cookie)]}
            await send(message)

        root = f"{scope.get('root_path', '')}/apps/{name}"
        await self._api(target.controller)({**scope, "root_path": root}, receive, remember)

    def _api(self, controller: Controller) -> Any:
        """The app's own API, made once per controller (a restarted app gets a new one)."""
        made = self._apis.get(id(controller))
        if made is None or made[0] is not controller:
            name = next((n for n, r in self.host.apps.items() if r.controller is controller), None)
            api = create_app(
                controller,
                self.token,
                self.webhook_secret,
                self.public_read,
                tokens=self.tokens,
                app_name=name,
            )
            made = self._apis[id(controller)] = (controller, api)
            running = {id(r.controller) for r in self.host.apps.values()}
            for key in [k for k in self._apis if k not in running]:
                del self._apis[key]
        return made[1]

    def status(self) -> StatusDoc:
        """Every app's environments in one document, each naming its app."""
        rows, host_file = self.host.status()
        environments = []
        certificates = []
        for name, running in self.host.apps.items():
            doc = running.controller.status()
            certificates += doc.certificates
            for e in doc.environments:
                refused = self.host.router.refusals(name, e.name) if self.host.router else []
                health = worst((e.health, Health.DEGRADED)) if refused else e.health
                conditions = e.conditions + refused
                update = {"app": e.app or name, "conditions": conditions, "health": health}
                environments.append(e.model_copy(update=update))
        first = next(iter(self.host.apps.values()), None)
        base = self.host.base
        router_error = first.controller.status().router.error if first is not None else None
        return StatusDoc(
            environments=environments,
            source=rows[0].source if rows else SourceStatus(repo=self.host.shown),
            router=RouterStatus(listen=base.listen, error=router_error),
            controller=ControllerStatus(
                started_at=first.controller.started if first is not None else 0.0,
                auto_sync=base.auto_sync,
                self_heal=base.self_heal,
                poll=base.poll,
            ),
            certificates=certificates,
            apps=rows,
            host_file=host_file,
        )


def _host_routes(host_api: HostApi) -> FastAPI:
    app = FastAPI(title="ondeck", version=__version__, docs_url=None, redoc_url=None)
    guard.install(app)
    host = host_api.host

    def caller(request: Request) -> TokenInfo:
        """The admin token, or one of the host's tokens (`ondeck token create`)."""
        return guard.bearer(request, host_api.token, host_api.tokens)

    def authorized(request: Request) -> None:
        if caller(request) is not ADMIN:
            raise HTTPException(403, "a call for the whole host needs the state dir's token")

    def reader(request: Request) -> None:
        if not host_api.public_read:
            caller(request)

    def for_every_app(request: Request, scope: TokenScope, env: str | None) -> None:
        """A call on every app: the token may `scope` each app it would act on."""
        info = caller(request)
        if allows(info, scope, env) and info.may_touch_apps(host.apps):
            return
        held = ", ".join(info.apps) or "every app"
        raise HTTPException(
            403,
            f"token {info.name!r} ({info.scope.label}, {held}) may not {scope.label} every app "
            "of this host: name one of its apps with --app NAME",
        )

    admin = [Depends(authorized)]

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    loop = asyncio.get_running_loop()  # webhooks arrive on worker threads

    def hook_targets() -> list[HookTarget]:
        """A push wakes the apps that follow its repo, and the host file's repo the host."""
        found = [_hook(loop, r.controller) for r in list(host.apps.values())]
        if host.host_file.repo is not None:

            def fetch_host_file(_: PushEvent) -> None:
                loop.call_soon_threadsafe(host.refresh_host_file)

            found.append(HookTarget(host.host_file.repo, None, fetch_host_file))
        return found

    app.include_router(fanout_router(host_api.webhook_secret, hook_targets))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(AppsMetrics(host))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body = generate_latest(registry)
        if host.router is not None:  # the router's per-backend figures, once for every app
            body += (await host.router.link.metrics()).encode()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/status")
    def status(request: Request) -> StatusDoc:
        doc = host_api.status()
        if host_api.public_read and not request.headers.get("authorization"):
            return doc
        info = caller(request)
        seen = [a for a in doc.apps if info.may_touch_apps([a.name])]
        return doc.model_copy(
            update={
                "apps": seen,
                "environments": [
                    e
                    for e in doc.environments
                    if info.may_touch_apps([e.app or ""]) and visible_envs(info, [e.name])
                ],
            }
        )

    @app.get("/api/v1/history")
    def history(request: Request, env: str | None = None, limit: int = 50) -> HistoryDoc:
        """Every app's syncs, newest first, each naming its app (`--env` needs `--app`)."""
        if env is not None and len(host.apps) != 1:
            names = ", ".join(host.apps)
            raise HTTPException(400, f"this host runs several apps ({names}): add --app NAME")
        if env is not None and env not in next(iter(host.apps.values())).controller.envs:
            raise HTTPException(404, f"unknown environment {env!r}")
        info = ADMIN if host_api.public_read else caller(request)
        limit = max(1, min(limit, 1000))
        rows = [
            sync_entry(r).model_copy(update={"app": name})
            for name, running in host.apps.items()
            if info.may_touch_apps([name])
            for r in running.controller.store.history(env, limit)
            if visible_envs(info, [r.env])
        ]
        rows.sort(key=lambda r: r.started_at, reverse=True)
        return HistoryDoc(syncs=rows[:limit])

    @app.post("/api/v1/sync")
    async def sync(body: SyncBody, request: Request) -> SyncAnswer:
        for_every_app(request, TokenScope.SYNC, body.env)
        if body.env is not None and len(host.apps) > 1:
            names = ", ".join(host.apps)
            raise HTTPException(400, f"this host runs several apps ({names}): add --app NAME")
        try:
            futures = [
                r.controller.request_sync(body.env, body.trigger, body.skip_backup)
                for r in host.apps.values()
            ]
        except UserError as err:
            raise HTTPException(404, str(err)) from err
        if not body.wait:
            return SyncAnswer()
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(asyncio.shield(f) for f in futures)), body.timeout
            )
        except TimeoutError as err:
            raise HTTPException(
                504, f"sync not finished after {body.timeout:.0f}s; see `ondeck status`"
            ) from err
        error = next((a.error for a in answers if a.error), None)
        return SyncAnswer(error=error, status=host_api.status())

    @app.post("/api/v1/down", dependencies=admin)
    async def down(body: DownBody) -> DownAnswer:
        """`ondeck down` of the whole host (`--env` needs `--app`): every app, then the router."""
        if body.env is not None:
            if len(host.apps) != 1:
                names = ", ".join(host.apps)
                raise HTTPException(400, f"this host runs several apps ({names}): add --app NAME")
            only = next(iter(host.apps.values())).controller
            try:
                held = await asyncio.shield(only.request_down(body.env))
            except UserError as err:
                raise HTTPException(404, str(err)) from err
            except TemporaryError as err:
                raise HTTPException(503, str(err)) from err
            return DownAnswer(stopped=held, exiting=False)
        try:
            stopped = await asyncio.shield(host.request_down())
        except TemporaryError as err:
            raise HTTPException(503, str(err)) from err
        return DownAnswer(stopped=stopped, exiting=True)

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> str:
        """Every app's environments; without the token, only the way to each app's dashboard
        (which has its own login)."""
        try:
            reader(request)
        except HTTPException:
            return _overview(None, list(host.apps))
        return _overview(host_api.status(), list(host.apps))

    return app


def _hook(loop: asyncio.AbstractEventLoop, controller: Controller) -> HookTarget:
    def refresh(_: PushEvent) -> None:
        loop.call_soon_threadsafe(controller.refresh, Trigger.WEBHOOK)

    return HookTarget(controller.opts.repo, controller.opts.branch, refresh)


def _overview(doc: StatusDoc | None, apps: list[str]) -> str:
    """The host's page: each app's environments (`doc` None: only the links to each app's
    own dashboard, under /apps/NAME/)."""
    links = "".join(f"<li><a href='/apps/{escape(a)}/'>{escape(a)}</a></li>" for a in apps)
    head = (
        "<!doctype html><html><head><meta charset='utf-8'><title>ondeck: apps</title></head>"
        f"<body><h1>ondeck</h1><h2>apps</h2><ul class='apps'>{links}</ul>"
    )
    if doc is None:
        return head + "<p>Each app's dashboard asks for the token.</p></body></html>"
    rows = "".join(
        f"<tr><td><a href='/apps/{escape(e.app or '')}/'>{escape(e.app or '')}</a></td>"
        f"<td>{escape(e.name)}</td><td>{escape(e.sync)}</td><td>{escape(e.health)}</td>"
        f"<td><code>{escape((e.revision or '')[:12])}</code></td>"
        f"<td>{escape(e.error or '')}</td></tr>"
        for e in doc.environments
    )
    waiting = "".join(
        f"<li>{escape(a.name)}: {escape(a.error)}</li>" for a in doc.apps if a.error is not None
    )
    problem = doc.host_file.error if doc.host_file is not None else None
    return (
        head
        + (f"<p class='error'>host file: {escape(problem)}</p>" if problem else "")
        + "<table class='envs'><thead><tr><th>app</th><th>environment</th><th>sync</th>"
        "<th>health</th><th>revision</th><th>error</th></tr></thead><tbody>"
        + rows
        + "</tbody></table>"
        + (f"<h2>not running</h2><ul>{waiting}</ul>" if waiting else "")
        + "</body></html>"
    )


def _cookie(scope: Scope, name: str) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                k, _, v = part.strip().partition("=")
                if k == name:
                    return str(v)
    return None


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_host_app(
    host: AppHost, token: str, webhook_secret: str | None = None, public_read: bool = False
) -> HostApi:
    return HostApi(host, token, webhook_secret, public_read)
