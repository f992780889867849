"""The dashboard's HTTP routes: pages, their live fragments, actions, login and logout.

`create_app` (api/app.py) includes `ui_router`. Pages are rendered on the
server from the status document; each page is a list of fragments, and its
server-sent-events stream pushes a fragment again whenever its HTML changes.
Every POST needs the session's CSRF token; every answer carries a strict CSP.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
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
from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context, select_autoescape
from jinja2.runtime import Context
from markupsafe import Markup

from ondeck.api.ui import views
from ondeck.api.ui.access import COOKIE, CSRF_FIELD, CSRF_HEADER, Sessions, Viewer, csrf_ok
from ondeck.api.ui.charts import chart, chart_start, latest
from ondeck.api.ui.live import KEEPALIVE, LogSource, Sampler, StatusFeed, follow_logs, sse
from ondeck.errors import OndeckError, UserError
from ondeck.gitops import rollback
from ondeck.state.lifecycle import Trigger
from ondeck.tokens import Scope, Tokens

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
SYNC_WAIT = 300.0  # seconds an action waits for a sync's outcome
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
TRIGGER = Trigger.UI  # what history records as the cause of a sync asked for here
REFRESH_TRIGGER = Trigger.POLL  # fetch, sync only if auto-sync is on
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM = 64 * 1024
REFRESH_AGES = 5.0  # seconds: re-render at least this often, so ages move


class _Templates(Environment):
    """Jinja2, with `a.b` on a dict (the status document) looked up as a key first.

    Jinja tries the attribute first and the key second; on a dict the attribute
    lookup fails (an exception) for every field: half of the overview's render time.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


@dataclass(frozen=True)
class Fragment:
    id: str
    template: str
    vars: dict[str, Any]


class Dashboard:
    """Renders pages and fragments for one controller."""

    def __init__(self, controller: Controller, feed: StatusFeed, sampler: Sampler) -> None:
        self.c, self.feed, self.sampler = controller, feed, sampler
        self.jinja = _Templates(
            loader=PackageLoader("ondeck.api.ui", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.jinja.filters.update(views.FILTERS)
        self.jinja.filters["fmt_value"] = lambda value, name: views.FILTERS[name](value)
        self.jinja.globals.update(
            chart=chart,
            latest=latest,
            Scope=Scope,
            age=_age,
            majority_revision=views.majority_revision,
        )

    # -- documents ---------------------------------------------------------------------

    def doc_for(self, viewer: Viewer, doc: dict[str, Any]) -> dict[str, Any]:
        """The status document with only the environments `viewer` may read."""
        names = set(viewer.envs(e["name"] for e in doc.get("environments", [])))
        return {
            **doc,
            "environments": [e for e in doc.get("environments", []) if e["name"] in names],
        }

    # -- pages -------------------------------------------------------------------------

    def fragments(
        self, page: str, viewer: Viewer, doc: dict[str, Any], params: dict[str, str]
    ) -> list[Fragment]:
        shown = self.doc_for(viewer, doc)
        if page == "overview":
            frags = [Fragment("source", "frag_source.html", {"doc": shown})]
            return frags + [
                Fragment(f"env-{e['name']}", "frag_env.html", {"env": e})
                for e in shown["environments"]
            ]
        if page == "service":
            env, svc = self._service(shown, params)
            state = self.c.envs[env["name"]]
            diff = "\n".join(self.c.unified_diffs(state).get(svc["name"], []))
            common = {"env": env, "svc": svc}
            return [
                Fragment("svc-head", "frag_svc_head.html", common),
                Fragment("svc-rollout", "frag_svc_rollout.html", common),
                Fragment("svc-instances", "frag_svc_instances.html", common),
                Fragment("svc-diff", "frag_svc_diff.html", {**common, "diff": diff}),
            ]
        if page == "traffic":
            now = time.time()
            window = self.sampler.series.keep * self.sampler.every
            frags = []
            for e in shown["environments"]:
                for s in e["services"]:
                    series = self.sampler.series.of(e["name"], s["name"])
                    start = chart_start(series, now, window, self.sampler.every)
                    values = {"env": e, "svc": s, "series": series, "start": start, "end": now}
                    frags.append(
                        Fragment(f"traffic-{e['name']}-{s['name']}", "frag_traffic.html", values)
                    )
            return frags
        if page == "history":
            names = {e["name"] for e in shown["environments"]}
            rows = [views.sync_json(r) for r in self.c.store.history(None, 100) if r.env in names]
            live = {e["name"]: e.get("live_revision") for e in shown["environments"]}
            return [Fragment("history", "frag_history.html", {"rows": rows, "live": live})]
        raise HTTPException(404, f"no page {page!r}")

    def _service(
        self, doc: dict[str, Any], params: dict[str, str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        env = views.find_env(doc, params.get("env", ""))
        svc = views.find_service(env, params.get("service", "")) if env else None
        if env is None or svc is None:
            raise HTTPException(404, "no such environment or service (or not visible to you)")
        return env, svc

    def render_fragments(self, frags: list[Fragment], viewer: Viewer, now: float) -> dict[str, str]:
        base = {"viewer": viewer, "now": now}
        return {
            f.id: self.jinja.get_template(f.template).render(**base, **f.vars, fragment_id=f.id)
            for f in frags
        }

    def page(
        self, page: str, title: str, viewer: Viewer, params: dict[str, str], **extra: Any
    ) -> str:
        _, doc = self.feed.current()
        now = time.time()
        html = self.render_fragments(self.fragments(page, viewer, doc, params), viewer, now)
        return self.jinja.get_template(f"{page}.html").render(
            viewer=viewer,
            now=now,
            title=title,
            page=page,
            params=params,
            stream=f"/ui/events/{page}?"
            + "&".join(f"{k}={quote(v)}" for k, v in sorted(params.items())),
            fragments={k: Markup(v) for k, v in html.items()},
            doc=self.doc_for(viewer, doc),
            **extra,
        )

    def render(self, template: str, **values: Any) -> str:
        return self.jinja.get_template(template).render(page="", stream="", **values)

    async def stream(
        self, page: str, viewer: Callable[[], Viewer | None], params: dict[str, str]
    ) -> AsyncIterator[bytes]:
        """The page's fragments whenever one changes; `reload` when the set of them does."""
        sent: dict[str, str] = {}
        seen = -1
        last_keepalive = time.monotonic()
        with self.feed.reading():
            while True:
                who = viewer()
                if who is None:
                    yield sse("logout", {})
                    return
                seen, doc = await self.feed.next(seen, REFRESH_AGES)
                try:
                    html = self.render_fragments(
                        self.fragments(page, who, doc, params), who, time.time()
                    )
                except HTTPException:
                    yield sse("reload", {})  # the service went away: the page says so on reload
                    return
                if sent and set(html) != set(sent):
                    yield sse("reload", {})
                    return
                changed = {k: v for k, v in html.items() if sent.get(k) != v}
                sent = html
                if changed:
                    yield sse("fragments", changed)
                    last_keepalive = time.monotonic()
                elif time.monotonic() - last_keepalive > KEEPALIVE:
                    yield b": keepalive\n\n"
                    last_keepalive = time.monotonic()


def ui_router(controller: Controller, token: str, public_read: bool = False) -> APIRouter:
    """The dashboard at `/`; the traffic sampler starts with it (in the running loop)."""
    sampler = Sampler(_router_stats(controller), controller.status_json)
    feed = StatusFeed(controller.status_json, sampler.learn)
    if controller.router is not None:
        _keep(asyncio.get_running_loop().create_task(sampler.run()))
    ui = Dashboard(controller, feed, sampler)
    sessions = Sessions(token, Tokens(controller.store).check)
    static = _static_files()
    router = APIRouter(include_in_schema=False)

    def viewer_of(request: Request) -> Viewer | None:
        found = sessions.viewer(request.cookies.get(COOKIE))
        if found is None and public_read:
            return Viewer(None)
        return found

    def need_viewer(request: Request) -> Viewer:
        found = viewer_of(request)
        if found is None:
            raise _Redirect(f"/login?next={quote(_here(request))}")
        return found

    def need_action(
        request: Request, form: dict[str, str], scope: Scope, env: str | None
    ) -> Viewer:
        found = sessions.viewer(request.cookies.get(COOKIE))
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

    def page(
        request: Request, name: str, title: str, params: dict[str, str], **extra: Any
    ) -> Response:
        try:
            viewer = need_viewer(request)
        except _Redirect as to:
            return _secure(RedirectResponse(to.location, 303))
        return _secure(HTMLResponse(ui.page(name, title, viewer, params, **extra)))

    @router.get("/")
    def overview(request: Request) -> Response:
        return page(request, "overview", "Overview", {})

    @router.get("/env/{env}/service/{service}")
    def service(request: Request, env: str, service: str) -> Response:
        return page(request, "service", f"{service} in {env}", {"env": env, "service": service})

    @router.get("/traffic")
    def traffic(request: Request) -> Response:
        return page(
            request,
            "traffic",
            "Traffic",
            {},
            every=sampler.every,
            routed=controller.router is not None,
        )

    @router.get("/history")
    def history(request: Request) -> Response:
        return page(request, "history", "History", {})

    @router.get("/ui/events/{name}")
    def events(request: Request, name: str, env: str = "", service: str = "") -> Response:
        if name not in ("overview", "service", "traffic", "history"):
            raise HTTPException(404, f"no page {name!r}")
        if viewer_of(request) is None:
            raise HTTPException(401, "log in first")
        params = {k: v for k, v in (("env", env), ("service", service)) if v}
        return _secure(_event_stream(ui.stream(name, lambda: viewer_of(request), params)))

    @router.get("/ui/logs/{env}/{service}")
    def logs(request: Request, env: str, service: str) -> Response:
        viewer = sessions.viewer(request.cookies.get(COOKIE))  # never public: apps log secrets
        if viewer is None:
            raise HTTPException(401, "log in first")
        if env not in viewer.envs(controller.envs):
            raise HTTPException(404, f"unknown environment {env!r}")
        sources = _log_sources(controller, env, service)

        async def lines() -> AsyncIterator[bytes]:
            async for batch in follow_logs(sources):
                if sessions.viewer(request.cookies.get(COOKIE)) is None:
                    yield sse("logout", {})
                    return
                yield sse("log", batch) if batch else b": idle\n\n"

        return _secure(_event_stream(lines()))

    @router.get("/static/{name}")
    def static_file(name: str) -> Response:
        found = static.get(name)
        if found is None:
            raise HTTPException(404, f"no static file {name!r}")
        body, media = found
        return Response(
            body,
            media_type=media,
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    # -- login / logout ------------------------------------------------------------------

    @router.get("/login")
    def login_form(request: Request, next: str = "/", error: str = "") -> Response:
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
            to = f"/login?error=1&next={quote(target)}"
            return _secure(RedirectResponse(to, 303))
        sid, _ = found
        response = _secure(RedirectResponse(target, 303))
        response.set_cookie(
            COOKIE,
            sid,
            httponly=True,
            samesite="strict",
            path="/",
            secure=request.url.scheme == "https",
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

    # -- actions ---------------------------------------------------------------------------

    async def act(
        request: Request, scope: Scope, work: Callable[[dict[str, str], Viewer], Awaitable[str]]
    ) -> Response:
        """Check session, CSRF and scope, run `work`, answer its outcome (JSON or a redirect)."""
        form = await _form(request)
        env = form.get("env") or None
        if env is not None and env not in controller.envs:
            raise HTTPException(404, f"unknown environment {env!r}")
        viewer = need_action(request, form, scope, env)
        try:
            message, ok = await work(form, viewer), True
        except OndeckError as err:
            message, ok = str(err), False
        if request.headers.get("x-requested-with") == "ondeck":
            return _secure(JSONResponse({"ok": ok, "message": message}, 200 if ok else 409))
        return _secure(RedirectResponse(_safe_next(form.get("next", "/")), 303))

    @router.post("/ui/actions/refresh")
    async def do_refresh(request: Request) -> Response:
        async def work(form: dict[str, str], viewer: Viewer) -> str:
            # A poll now, not a manual trigger: Refresh compares with git, Sync applies.
            controller.refresh(REFRESH_TRIGGER)
            return "fetching from git now" + (
                "" if controller.opts.auto_sync else " (auto-sync is off: press Sync to apply)"
            )

        return await act(request, Scope.SYNC, work)

    @router.post("/ui/actions/sync")
    async def do_sync(request: Request) -> Response:
        async def work(form: dict[str, str], viewer: Viewer) -> str:
            env = form.get("env") or None
            future = controller.request_sync(env, TRIGGER)
            try:
                answer = await asyncio.wait_for(asyncio.shield(future), SYNC_WAIT)
            except TimeoutError:
                return f"still syncing after {SYNC_WAIT:.0f}s: the page updates when it is done"
            if answer.error:
                raise UserError(f"sync failed: {answer.error}")
            assert answer.status is not None  # a waited-for answer carries the status
            return _sync_outcome(answer.status.model_dump(mode="json"), env)

        return await act(request, Scope.SYNC, work)

    @router.post("/ui/actions/rollback")
    async def do_rollback(request: Request) -> Response:
        async def work(form: dict[str, str], viewer: Viewer) -> str:
            env = form.get("env") or None
            overlay = controller.envs[env].overlay if env else None
            author = f"{viewer.name} (ondeck dashboard) <ondeck@{socket.gethostname()}>"
            opts = controller.opts
            result = await asyncio.to_thread(
                rollback,
                opts.repo,
                overlay,
                form.get("to") or None,
                True,
                author,
                opts.branch,
                opts.path,
            )
            if result.sha is None:
                return result.message
            controller.request_sync(env, Trigger.ROLLBACK)
            return f"committed {result.sha[:7]}: {result.message.splitlines()[0]}; syncing it now"

        return await act(request, Scope.DEPLOY, work)

    @router.post("/ui/actions/rollout")
    async def do_rollout(request: Request) -> Response:
        async def work(form: dict[str, str], viewer: Viewer) -> str:
            action = form.get("action", "")
            if action not in ("promote", "abort"):
                raise UserError(f"unknown rollout action {action!r}: promote or abort")
            progress = controller.rollout_action(
                form.get("env") or None, form.get("service", ""), action
            )
            return f"{progress.service}: {action} accepted ({progress.stage.value} at {progress.weight}%)"

        return await act(request, Scope.DEPLOY, work)

    return router


@pass_context
def _age(context: Context, then: float | None) -> str:
    return views.age(then, context["now"])


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        self.location = location


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


def _sync_outcome(doc: dict[str, Any], env: str | None) -> str:
    envs = [e for e in doc["environments"] if env is None or e["name"] == env]
    return "; ".join(
        f"{e['name']}: {e['sync']}, {e['health']} at {views.short(e['revision'])}" for e in envs
    )


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
