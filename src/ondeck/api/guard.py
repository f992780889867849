"""The caller's mistakes answer 4xx, never 500: guards `create_app` installs on every route.

A NUL character anywhere in a request (path, query, JSON body) is refused
before a handler sees it: no name, version or path ondeck stores may hold
one. A `UserError` a handler lets through is the caller's fault (400), and so
is a number too large for the store (OverflowError from SQLite).
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, field_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from ondeck.errors import UserError
from ondeck.tokens import ADMIN, TokenInfo, Tokens

MAX_LIMIT = 10_000
"""The most rows one history or events call returns."""
_NUL = re.compile(rb"%00|\x00")


class Body(BaseModel):
    """Base of every JSON request body: no string may carry a NUL character."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\0" in value:
            raise ValueError("a NUL character (\\u0000) is not allowed")
        return value


class _RefuseNul:
    """ASGI middleware: a NUL in the path or query string is a 400 before routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode(errors="surrogateescape")
            if _NUL.search(raw) or _NUL.search(scope.get("query_string", b"")):
                response = JSONResponse(
                    {"detail": "a NUL character (%00) is not allowed in a request"}, 400
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install(app: FastAPI) -> None:
    """Add the guards to `app`."""
    app.add_middleware(_RefuseNul)

    @app.exception_handler(UserError)
    async def user_error(request: Request, err: UserError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 400)

    @app.exception_handler(OverflowError)
    async def overflow(request: Request, err: OverflowError) -> JSONResponse:
        return JSONResponse({"detail": f"a number in the request is out of range ({err})"}, 400)


def bearer(request: Request, admin_token: str, tokens: Tokens) -> TokenInfo:
    """Who calls: the state dir's token (ADMIN) or one of `tokens`; else 401."""
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if given and hmac.compare_digest(given.encode(), admin_token.encode()):
        return ADMIN
    info = tokens.check(given) if given else None
    if info is None:
        raise HTTPException(
            401,
            "missing or wrong bearer token: see the `token` file in the state dir, "
            "or `ondeck token create`",
        )
    return info
