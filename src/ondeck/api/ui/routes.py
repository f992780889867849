"""The dashboard's HTTP routes: pages, their live streams, login and logout, actions.

`create_app` (api/app.py) includes `ui_router`. `pages.py` renders, `actions.py`
acts; this module decides who may: a session cookie (or `--public-read`) to
read, and for every POST a session, its CSRF token and a token scope that
allows the action. Every answer carries a strict Content-Security-Policy.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from ondeck.api.ui.access import COOKIE, CSRF_FIELD, CSRF_HEADER, Sessions, Viewer, csrf_ok
from ondeck.api.ui.actions import Actions, Form
from ondeck.api.ui.live import LogSource, Sampler, StatusFeed, follow_logs, sse
from ondeck.api.ui.pages import PAGES, Dashboard
from ondeck.errors import OndeckError
from ondeck.tokens import Scope, TokenInfo, Tokens

if TYPE_CHECKING:
    from ondeck.controller import Controller

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
LOGIN_COOKIE = "ondeck_login"  # double-submit token of the login form (login CSRF)
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM = 64 * 1024

Work = Callable[[Form, Viewer], Awaitable[str]]


class Gate:
    """Who is asking, and may they: sessions, public read, CSRF and scopes."""

    def __init__(self, sessions: Sessions, public_read: bool) -> None:
        self.sessions, self.public_read = sessions, public_read

    def session(self, request: Request) -> Viewer | None:
        """The logged-in viewer, never the public one."""
        return self.sessions.viewer(request.cookies.get(COOKIE))

    def reader(self, request: Request) -> Viewer | None:
        """Who may read: the logged-in viewer, or anyone with --public-read."""
        found = self.session(request)
        return Viewer(None) if found is None and self.public_read else found

    def actor(self, request: Request, form: Form, scope: Scope, env: str | None) -> Viewer:
        """The viewer who may do this, or the HTTP error that says why not."""
        found = self.session(request)
        if found is None:
            raise HTTPException(401, "log in first: your session ended")
        if not csrf_ok(found, request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)):
            raise HTTPException(
                403, "the form's CSRF token is missing or wrong: reload the page and try again"
            )
        if not found.can(scope, env):
            where = f"environment {env!r}" if env else "every environment"
            raise HTTPException(403, f"{found.name!r} may not {scope.label} {where}")
        return found


def ui_router(
    controller: Controller,
    token: str,
    public_read: bool = False,
    check: Callable[[str], TokenInfo | None] | None = None,
) -> APIRouter:
    """The dashboard at `/`; the traffic sampler starts with it (in the running loop).
    `check` knows the scoped tokens (default: the controller's store's)."""
    sampler = Sampler(_router_stats(controller), controller.status_json)
    feed = StatusFeed(controller.status_json, sampler.learn)
    if controller.router is not None:
        _keep(asyncio.get_running_loop().create_task(sampler.run(lambda: controller.stopped)))
    ui = Dashboard(controller, feed, sampler)
    gate = Gate(Sessions(token, check or Tokens(controller.store).check), public_read)
    router = APIRouter(include_in_schema=False)
    _page_routes(router, ui, gate, controller)
    _live_routes(router, ui, gate, controller)
    _login_routes(router, ui, gate.sessions)
    _action_routes(router, Actions(controller), gate, controller)
    _static_routes(router)
    return router


def _page_routes(router: APIRouter, ui: Dashboard, gate: Gate, controller: Controller) -> None:
    # Every route is async: pages render on the controller's event loop, the one thread
    # that changes what they read (a worker thread would read it mid-change).
    def page(
        request: Request, name: str, title: str, params: dict[str, str], **extra: Any
    ) -> Response:
        viewer = gate.reader(request)
        if viewer is None:
            return _secure(RedirectResponse(f"/login?next={quote(_here(request))}", 303))
        return _secure(HTMLResponse(ui.page(name, title, viewer, params, **extra)))

    @router.get("/")
    async def overview(request: Request) -> Response:
        return page(request, "overview", "Overview", {})

    @router.get("/env/{env}/service/{service}")
    async def service(request: Request, env: str, service: str) -> Response:
        return page(request, "service", f"{service} in {env}", {"env": env, "service": service})

    @router.get("/traffic")
    async def traffic(request: Request) -> Response:
        routed = controller.router is not None
        return page(request, "traffic", "Traffic", {}, every=ui.sampler.every, routed=routed)

    @router.get("/history")
    async def history(request: Request) -> Response:
        return page(request, "history", "History", {})


def _live_routes(router: APIRouter, ui: Dashboard, gate: Gate, controller: Controller) -> None:
    @router.get("/ui/events/{name}")
    async def events(request: Request, name: str, env: str = "", service: str = "") -> Response:
        if name not in PAGES:
            raise HTTPException(404, f"no page {name!r}")
        if gate.reader(request) is None:
            raise HTTPException(401, "log in first")
        params = {k: v for k, v in (("env", env), ("service", service)) if v}
        return _secure(_event_stream(ui.stream(name, lambda: gate.reader(request), params)))

    @router.get("/ui/logs/{env}/{service}")
    async def logs(request: Request, env: str, service: str) -> Response:
        viewer = gate.session(request)  # never public: apps log what they should not
        if viewer is None:
            raise HTTPException(401, "log in first")
        if env not in viewer.envs(controller.envs):
            raise HTTPException(404, f"unknown environment {env!r}")
        sources = _log_sources(controller, env, service)

        async def lines() -> AsyncIterator[bytes]:
            async for batch in follow_logs(sources):
                if gate.session(request) is None:
                    yield sse("logout", {})
                    return
                yield sse("log", batch) if batch else b": idle\n\n"

        return _secure(_event_stream(lines()))


def _login_routes(router: APIRouter, ui: Dashboard, sessions: Sessions) -> None:
    @router.get("/login")
    async def login_form(request: Request, next: str = "/", error: str = "") -> Response:
        nonce = secrets.token_urlsafe(24)
        body = ui.render(
            "login.html",
            title="Log in",
            viewer=Viewer(None),
            next=_safe_next(next),
            nonce=nonce,
            error=error,
        )
        response = _secure(HTMLResponse(body, 401 if error else 200))
        response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict", path="/login")
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not secrets.compare_digest(nonce, form.get(CSRF_FIELD, "")):
            raise HTTPException(403, "the login form expired: reload it and try again")
        found = sessions.login(form.get("token", ""))
        target = _safe_next(form.get("next", "/"))
        if found is None:
            return _secure(RedirectResponse(f"/login?error=1&next={quote(target)}", 303))
        response = _secure(RedirectResponse(target, 303))
        secure = request.url.scheme == "https"
        response.set_cookie(
            COOKIE, found[0], httponly=True, samesite="strict", path="/", secure=secure
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        form = await _form(request)
        viewer = sessions.viewer(request.cookies.get(COOKIE))
        if viewer is not None and not csrf_ok(viewer, form.get(CSRF_FIELD)):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page")
        sessions.logout(request.cookies.get(COOKIE))
        response = _secure(RedirectResponse("/login", 303))
        response.delete_cookie(COOKIE, path="/")
        return response


def _action_routes(router: APIRouter, actions: Actions, gate: Gate, controller: Controller) -> None:
    async def act(request: Request, scope: Scope, work: Work) -> Response:
        """Check session, CSRF and scope, run `work`, answer its outcome (JSON or a redirect)."""
        form = await _form(request)
        env = form.get("env") or None
        if env is not None and env not in controller.envs:
            raise HTTPException(404, f"unknown environment {env!r}")
        viewer = gate.actor(request, form, scope, env)
        try:
            message, ok = await work(form, viewer), True
        except OndeckError as err:
            message, ok = str(err), False
        if request.headers.get("x-requested-with") == "ondeck":  # our script: it shows this
            return _secure(JSONResponse({"ok": ok, "message": message}, 200 if ok else 409))
        return _secure(RedirectResponse(_safe_next(form.get("next", "/")), 303))

    @router.post("/ui/actions/refresh")
    async def refresh(request: Request) -> Response:
        return await act(request, Scope.SYNC, actions.refresh)

    @router.post("/ui/actions/sync")
    async def sync(request: Request) -> Response:
        return await act(request, Scope.SYNC, actions.sync)

    @router.post("/ui/actions/rollback")
    async def rollback(request: Request) -> Response:
        return await act(request, Scope.DEPLOY, actions.rollback)

    @router.post("/ui/actions/rollout")
    async def rollout(request: Request) -> Response:
        return await act(request, Scope.DEPLOY, actions.rollout)


def _static_routes(router: APIRouter) -> None:
    static = _static_files()

    @router.get("/static/{name}")
    async def static_file(name: str) -> Response:
        found = static.get(name)
        if found is None:
            raise HTTPException(404, f"no static file {name!r}")
        body, media = found
        headers = {"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"}
        return Response(body, media_type=media, headers=headers)


_TASKS: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    """Hold a background task (the loop keeps only weak references)."""
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


def _router_stats(controller: Controller) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def stats() -> dict[str, Any]:
        return await controller.router.stats() if controller.router is not None else {}

    return stats


def _log_sources(controller: Controller, env: str, service: str) -> list[LogSource]:
    state = controller.envs[env]
    if state.supervisor is None:
        return []
    return [
        LogSource(inst.rec.id, Path(inst.rec.log_path), inst.rec.runtime == "container")
        for inst in state.supervisor.instances.values()
        if inst.rec.service == service
    ]


def _event_stream(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
    )


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _safe_next(target: str) -> str:
    """Only a path on this server: never an open redirect."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def _form(request: Request) -> dict[str, str]:
    """An url-encoded form (what the pages and their script send), first value per field."""
    if not request.headers.get("content-type", "").startswith(FORM_TYPE):
        return {}
    body = (await request.body())[:MAX_FORM].decode(errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("ondeck.api.ui") / "static"
    return {
        f.name: (f.read_bytes(), STATIC_TYPES.get(Path(f.name).suffix, "application/octet-stream"))
        for f in folder.iterdir()
        if f.is_file()
    }
