"""`/api/v1/secrets`: the host's secret store over HTTP, write-only.

A deploy-scoped token sets or unsets a secret of an environment it may
deploy to; a read lists names and fingerprints. No endpoint returns a value,
and the body is parsed here (not by a pydantic model) so that a rejected
request never echoes the value back in a validation error.
Included by `api/app.py`. No `from __future__ import annotations`: FastAPI reads the
annotations of these local functions at run time.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request

from ondeck.errors import UserError
from ondeck.secrets.hoststore import ANY, HostStore
from ondeck.tokens import Scope, TokenInfo, allows

MAX_BODY = 128 * 1024

Require = Callable[[TokenInfo, Scope, str | None], None]


def secrets_router(
    state_dir: Path,
    authorized: Callable[..., TokenInfo],
    require: Require,
    on_change: Callable[[], None] = lambda: None,
    app_name: str | None = None,
) -> APIRouter:
    """The routes; `require` raises 403 for a token without the scope, `on_change` wakes the
    controller so services that use a changed secret roll. Under a host file the store is
    app `app_name`'s own: a secret named for no app is that app's, for an app-limited token."""
    store = HostStore(state_dir)
    router = APIRouter(prefix="/api/v1/secrets")
    Caller = Annotated[TokenInfo, Depends(authorized)]

    @router.get("")
    def list_secrets(info: Caller, env: str | None = None, app: str | None = None) -> Any:
        require(info, Scope.READ, env)
        if app is not None:
            _require_app(info, Scope.READ, app)
        rows = store.infos(app=app, env=env)
        seen = [
            r
            for r in rows
            if allows(info, Scope.READ, None if r.env == ANY else r.env)
            and (r.app == ANY or info.may_touch_apps([r.app]))
        ]
        return {"secrets": [r.to_json() for r in seen]}

    @router.put("/{name}")
    async def set_secret(name: str, request: Request, info: Caller) -> Any:
        body = await _body(request)
        env, app, value = body.get("env"), body.get("app"), body.get("value")
        require(info, Scope.DEPLOY, env)
        if not all(v is None or isinstance(v, str) for v in (env, app)):
            raise HTTPException(422, "env and app are strings")
        _require_app(info, Scope.DEPLOY, app or app_name)
        if not isinstance(value, str):
            raise HTTPException(422, 'the body is {"value": "...", "env": "E"} with a string value')
        try:
            saved = store.set(name, value, app=app, env=env)
        except UserError as err:
            raise HTTPException(422, str(err)) from None
        on_change()
        return saved.to_json()

    @router.delete("/{name}")
    def unset_secret(
        name: str, info: Caller, env: str | None = None, app: str | None = None
    ) -> Any:
        require(info, Scope.DEPLOY, env)
        _require_app(info, Scope.DEPLOY, app or app_name)
        try:
            store.unset(name, app=app, env=env)
        except UserError as err:
            raise HTTPException(404, str(err)) from None
        on_change()
        return {"unset": name}

    return router


def _require_app(info: TokenInfo, scope: Scope, app: str | None) -> None:
    """An app-restricted token names one of its apps (None would mean every app): else 403."""
    if info.may_touch_apps(None if app in (None, ANY) else [app]):
        return
    held = ", ".join(info.apps)
    target = f"app {app!r}" if app not in (None, ANY) else "every app"
    raise HTTPException(
        403,
        f"token {info.name!r} is limited to app {held}: it may not {scope.label} "
        f"secrets of {target}; name one of its apps",
    )


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise HTTPException(413, f"body larger than {MAX_BODY // 1024} KiB")
    try:
        data = json.loads(raw)
    except ValueError:
        raise HTTPException(422, "the body must be JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(422, 'the body is {"value": "...", "env": "E"}')
    return data
