"""Scoped API tokens: read < sync < deploy, optionally limited to environments and apps.

`ondeck token create|revoke|list` manages them; the API calls `Tokens.check` and
`allows` on each request. Only a sha256 of a token rests in the store's kv
("tokens"); last use lives under its own key ("tokens.last_used", by hash) so the
API's periodic write never rewrites definitions another process may be changing.
The admin token (STATE_DIR/token) is not one of these; `ADMIN` describes its power.
Under `ondeck up --host-file` the tokens of every app live in one store of the
host, STATE_DIR/tokens.db (`HOST_STORE`): a token names the apps it may touch.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from ondeck.errors import UserError
from ondeck.spec.model import DNS_LABEL
from ondeck.store import Store

TOKENS_KEY = "tokens"
HOST_STORE = "tokens.db"  # `ondeck up --host-file`: the host's tokens, for every app
LAST_USED_KEY = "tokens.last_used"
TOKEN_PREFIX = "odk_"
SHOWN_CHARS = 8  # enough to tell tokens apart in a listing, far too few to guess one
TOUCH_INTERVAL = 60.0  # seconds: last_used is a hint, not worth a write per request
ADMIN_NAME = "admin"

Record = dict[str, Any]


class Scope(IntEnum):
    """What a token may do; each scope implies every scope below it."""

    READ = 1
    SYNC = 2
    DEPLOY = 3

    @property
    def label(self) -> str:
        """The word users type and see: read, sync or deploy."""
        return self.name.lower()


@dataclass(frozen=True)
class TokenInfo:
    """A token as shown and authorized: never the token itself."""

    name: str
    scope: Scope
    envs: tuple[str, ...]  # empty: every environment
    created_at: float
    last_used: float | None
    prefix: str
    apps: tuple[str, ...] = ()  # empty: every app of the host

    def may_touch_apps(self, apps: Iterable[str] | None) -> bool:
        """May this token act on each app of `apps`? None: the apps are not known yet.

        An app-restricted token is refused when the apps are unknown: what it
        would act on cannot be shown to be its own.
        """
        if not self.apps:
            return True
        return apps is not None and set(apps) <= set(self.apps)


# The admin token from the state dir: full power, every environment.
# Token management (create/revoke/list over the API) should require `info is ADMIN`.
ADMIN = TokenInfo(ADMIN_NAME, Scope.DEPLOY, (), 0.0, None, "")


class Tokens:
    """Create, revoke, list and check scoped tokens kept in a `Store`.

    Nothing is cached: every `check` reads the kv, so a revoke made by another
    process (the CLI beside `ondeck up`) takes effect on the next request.
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()  # read-modify-write of the kv within this process

    def create(
        self, name: str, scope: Scope, envs: Sequence[str] = (), apps: Sequence[str] = ()
    ) -> str:
        """Make a token and return it; this is the only time it can be seen."""
        _check_name(name)
        env_names = _clean_envs(envs)
        app_names = _clean_labels("app name", apps)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            records = self._records()
            if name in records:
                raise UserError(
                    f"a token named {name!r} exists already: revoke it or pick another name"
                )
            records[name] = {
                "hash": _digest(token),
                "scope": scope.label,
                "envs": list(env_names),
                "apps": list(app_names),
                "created_at": self._clock(),
                "prefix": token[:SHOWN_CHARS],
            }
            self._store.set_kv(TOKENS_KEY, _dumps(records))
        return token

    def revoke(self, name: str) -> None:
        """Delete a token by name; it stops working at once."""
        with self._lock:
            records = self._records()
            record = records.pop(name, None)
            if record is None:
                raise UserError(f"no token named {name!r}: see `ondeck token list`")
            self._store.set_kv(TOKENS_KEY, _dumps(records))
            used = self._last_used()
            if used.pop(record["hash"], None) is not None:
                self._store.set_kv(LAST_USED_KEY, _dumps(used))

    def check(self, token: str) -> TokenInfo | None:
        """The token's info if it is known, else None; notes its use (once a minute)."""
        if not token:
            return None
        digest = _digest(token)
        found = _find(self._records(), digest)
        if found is None:
            return None
        name, record = found
        return _info(name, record, self._touch(digest))

    def list(self) -> builtins.list[TokenInfo]:
        """Every token, by name."""
        used = self._last_used()
        return [_info(name, rec, used) for name, rec in sorted(self._records().items())]

    def _touch(self, digest: str) -> dict[str, float]:
        """Record a use now unless one was recorded less than TOUCH_INTERVAL ago."""
        with self._lock:
            used = self._last_used()
            now = self._clock()
            last = used.get(digest)
            if last is None or now - last >= TOUCH_INTERVAL:
                used[digest] = now
                self._store.set_kv(LAST_USED_KEY, _dumps(used))
            return used

    def _records(self) -> dict[str, Record]:
        records: dict[str, Record] = json.loads(self._store.get_kv(TOKENS_KEY) or "{}")
        return records

    def _last_used(self) -> dict[str, float]:
        used: dict[str, float] = json.loads(self._store.get_kv(LAST_USED_KEY) or "{}")
        return used


def host_tokens(state_dir: Path) -> Tokens:
    """The tokens of a host of many apps (`ondeck up --host-file`), in STATE_DIR/tokens.db.

    The file is made 0600 before SQLite opens it (its -wal and -shm take that mode):
    the state dir's walk at start has already run when the API or the CLI first opens it.
    """
    path = state_dir / HOST_STORE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    return Tokens(Store(path))


def allows(info: TokenInfo, scope: Scope, env: str | None) -> bool:
    """May this token make a call needing `scope` on `env` (None: no single env)?

    A call not tied to one env needs an unrestricted token, except a read,
    whose results the caller filters with `visible_envs` instead.
    """
    if info.scope < scope:
        return False
    if not info.envs:
        return True
    if env is None:
        return scope is Scope.READ
    return env in info.envs


def visible_envs(info: TokenInfo, envs: Iterable[str]) -> list[str]:
    """The environments, in their given order, whose data a read call may show."""
    return [env for env in envs if not info.envs or env in info.envs]


def parse_scope(text: str) -> Scope:
    """`read`, `sync` or `deploy` (any case) as a `Scope`."""
    try:
        return Scope[text.strip().upper()]
    except KeyError:
        choices = ", ".join(s.label for s in Scope)
        raise UserError(f"unknown scope {text!r}: use one of {choices}") from None


def _check_name(name: str) -> None:
    _check_label("token name", name)
    if name == ADMIN_NAME:  # reserved, so `ADMIN` in a listing or log is unambiguous
        raise UserError(f"{ADMIN_NAME!r} names the state dir's token: pick another name")


def _check_label(what: str, value: str) -> None:
    if not DNS_LABEL.match(value):
        raise UserError(f"{value!r} is not a valid {what}: use lowercase letters, digits and '-'")


def _clean_envs(envs: Sequence[str]) -> tuple[str, ...]:
    return _clean_labels("environment name", envs)


def _clean_labels(what: str, names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):  # a bare string would become one name per letter
        raise TypeError(f"a sequence of {what}s, not a string")
    for name in names:
        _check_label(what, name)
    return tuple(sorted(set(names)))


def _digest(token: str) -> str:
    # A plain sha256 suffices: tokens carry 256 random bits, nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def _find(records: dict[str, Record], digest: str) -> tuple[str, Record] | None:
    for name, record in records.items():
        if hmac.compare_digest(record["hash"], digest):
            return name, record
    return None


def _info(name: str, record: Record, used: dict[str, float]) -> TokenInfo:
    return TokenInfo(
        name=name,
        scope=parse_scope(record["scope"]),
        envs=tuple(record["envs"]),
        created_at=float(record["created_at"]),
        last_used=used.get(record["hash"]),
        prefix=record["prefix"],
        apps=tuple(record.get("apps", ())),  # tokens made before apps could be scoped: all
    )


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
