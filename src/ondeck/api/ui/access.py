"""Who is looking at the dashboard: sessions, CSRF tokens and what a viewer may do.

The UI routes call `Sessions` on every request. A browser logs in once with
an API token; the session keeps that token in this process's memory only and
checks it again on each request, so a revoked token stops working at once.
A restart of `ondeck up` forgets every session (log in again).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ondeck.tokens import ADMIN, Scope, TokenInfo, allows, visible_envs

COOKIE = "ondeck_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL = 12 * 3600.0  # seconds a session lives without use
MAX_SESSIONS = 1000  # the oldest are dropped beyond this: a login flood cannot grow memory

Check = Callable[[str], TokenInfo | None]


@dataclass(frozen=True)
class Viewer:
    """A person looking at the pages: a token's powers, or anonymous public read."""

    info: TokenInfo | None  # None: not logged in, reading because of --public-read
    csrf: str = ""

    @property
    def name(self) -> str:
        return self.info.name if self.info else "public"

    @property
    def logged_in(self) -> bool:
        return self.info is not None

    def can(self, scope: Scope, env: str | None = None) -> bool:
        """Would an action needing `scope` on `env` succeed? (Buttons shown only then.)"""
        return self.info is not None and allows(self.info, scope, env)

    def envs(self, names: Iterable[str]) -> list[str]:
        if self.info is None:
            return list(names)  # public read shows everything, acts on nothing
        return visible_envs(self.info, names)


@dataclass
class Session:
    token: str
    csrf: str
    seen: float
    created: float = field(default_factory=time.time)


class Sessions:
    """Server-side sessions keyed by a random cookie value."""

    def __init__(self, admin_token: str, check: Check, clock: Callable[[], float] = time.time):
        self._admin = admin_token
        self._check = check
        self._clock = clock
        self._by_id: dict[str, Session] = {}

    def authenticate(self, token: str) -> TokenInfo | None:
        """The powers of an API token (the admin one or a scoped one), None if unknown."""
        token = token.strip()
        if not token:
            return None
        if hmac.compare_digest(token.encode(), self._admin.encode()):
            return ADMIN
        return self._check(token)

    def login(self, token: str) -> tuple[str, TokenInfo] | None:
        """A new session for a valid token: (cookie value, powers); None for a bad token."""
        info = self.authenticate(token)
        if info is None:
            return None
        self._expire()
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = Session(token.strip(), secrets.token_urlsafe(32), self._clock())
        return sid, info

    def viewer(self, sid: str | None) -> Viewer | None:
        """The logged-in viewer of a cookie, None when absent, expired or its token revoked."""
        session = self._by_id.get(sid or "")
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > SESSION_TTL:
            self._by_id.pop(sid or "", None)
            return None
        info = self.authenticate(session.token)
        if info is None:  # revoked since login
            self._by_id.pop(sid or "", None)
            return None
        session.seen = now
        return Viewer(info, session.csrf)

    def logout(self, sid: str | None) -> None:
        self._by_id.pop(sid or "", None)

    def _expire(self) -> None:
        now = self._clock()
        for sid in [s for s, v in self._by_id.items() if now - v.seen > SESSION_TTL]:
            del self._by_id[sid]
        while len(self._by_id) >= MAX_SESSIONS:
            oldest = min(self._by_id, key=lambda s: self._by_id[s].seen)
            del self._by_id[oldest]


def csrf_ok(viewer: Viewer, given: str | None) -> bool:
    """Does the form field or header carry this session's CSRF token?"""
    return bool(viewer.csrf) and bool(given) and hmac.compare_digest(viewer.csrf, given or "")
