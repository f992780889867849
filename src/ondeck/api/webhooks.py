"""Push webhooks from GitHub, GitLab and Gitea: verify, parse, and trigger a refresh.

`ondeck up` mounts `webhook_router` so a push to the watched branch refreshes
from git at once instead of at the next poll (`ondeck up --host-file`:
`fanout_router`, for every app's repo and the host file's). Verification and parsing are pure
functions; the router only checks the body size, the signature, replays and
whether the push concerns the watched repository and branch, then calls
`on_push`. A push that is wrongly accepted costs one idempotent refresh.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

MAX_BODY = 1024 * 1024
REPLAY_MEMORY = 1024
NO_SECRET = "webhooks need --webhook-secret or ONDECK_WEBHOOK_SECRET"
PROVIDERS = ("github", "gitlab", "gitea")

_EVENT_HEADER = {"github": "X-GitHub-Event", "gitlab": "X-Gitlab-Event", "gitea": "X-Gitea-Event"}
_DELIVERY_HEADER = {
    "github": "X-GitHub-Delivery",
    "gitlab": "X-Gitlab-Event-UUID",
    "gitea": "X-Gitea-Delivery",
}
# Where each provider's payload keeps the repository and the URLs it is known by.
_REPO_KEY = {"github": "repository", "gitlab": "project", "gitea": "repository"}
_URL_KEYS = {
    "github": ("clone_url", "ssh_url", "html_url", "git_url"),
    "gitlab": ("git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url"),
    "gitea": ("clone_url", "ssh_url", "html_url"),
}
_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?([^:/]+):(.*)$")


@dataclass(frozen=True)
class PushEvent:
    """A push as the provider reported it; `default_branch` when the payload names it."""

    provider: str
    repo_urls: tuple[str, ...]
    ref: str
    after: str
    delivery: str | None
    default_branch: str | None = None


# --- verification --------------------------------------------------------------------------


def verify_github(body: bytes, headers: Mapping[str, str], secret: str) -> bool:
    """`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`."""
    given = _header(headers, "X-Hub-Signature-256") or ""
    if not secret or not given.startswith("sha256="):
        return False
    return _same_hex(given.removeprefix("sha256="), _hmac_hex(secret, body))


def verify_gitlab(headers: Mapping[str, str], secret: str) -> bool:
    """`X-Gitlab-Token: <the secret>` (GitLab does not sign the body)."""
    given = _header(headers, "X-Gitlab-Token")
    return bool(secret) and given is not None and _same(given.encode(), secret.encode())


def verify_gitea(body: bytes, headers: Mapping[str, str], secret: str) -> bool:
    """`X-Gitea-Signature: <hex HMAC-SHA256 of the body>`, no prefix."""
    given = _header(headers, "X-Gitea-Signature")
    return bool(secret) and given is not None and _same_hex(given, _hmac_hex(secret, body))


def verify(provider: str, body: bytes, headers: Mapping[str, str], secret: str) -> bool:
    """The check of `provider` (one of `PROVIDERS`)."""
    if provider == "github":
        return verify_github(body, headers, secret)
    if provider == "gitlab":
        return verify_gitlab(headers, secret)
    if provider == "gitea":
        return verify_gitea(body, headers, secret)
    raise ValueError(f"unknown webhook provider {provider!r}")


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _same_hex(given: str, expected: str) -> bool:
    return _same(given.strip().lower().encode(), expected.encode())


def _same(given: bytes, expected: bytes) -> bool:
    # Constant time; on bytes because compare_digest refuses non-ASCII str, which callers send.
    return hmac.compare_digest(given, expected)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name, from starlette `Headers` or a plain dict."""
    found = headers.get(name)
    if found is not None:
        return found
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


# --- parsing -------------------------------------------------------------------------------


def event_name(provider: str, headers: Mapping[str, str]) -> str:
    """What the provider says happened ("push", "ping", "Push Hook"...), or "unknown"."""
    return _header(headers, _EVENT_HEADER[provider]) or "unknown"


def parse_push(provider: str, headers: Mapping[str, str], body: bytes) -> PushEvent | None:
    """The push in `body`, or None for any other event; `ValueError` when it is malformed."""
    payload = _json_object(body)
    if not _is_push(provider, headers, payload):
        return None
    ref = _text(payload, "ref")
    after = payload.get("after") or payload.get("checkout_sha")
    repo = payload.get(_REPO_KEY[provider])
    if not isinstance(after, str) or not isinstance(repo, dict):
        raise ValueError(f"a push payload needs 'after' and '{_REPO_KEY[provider]}'")
    urls = tuple(u for k in _URL_KEYS[provider] if isinstance(u := repo.get(k), str) and u)
    branch = repo.get("default_branch")
    return PushEvent(
        provider=provider,
        repo_urls=urls,
        ref=ref,
        after=after,
        delivery=_header(headers, _DELIVERY_HEADER[provider]),
        default_branch=branch if isinstance(branch, str) and branch else None,
    )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"the payload is not JSON: {err}") from err
    if not isinstance(payload, dict):
        raise ValueError("the payload is not a JSON object")
    return payload


def _is_push(provider: str, headers: Mapping[str, str], payload: Mapping[str, Any]) -> bool:
    if provider == "gitlab":  # object_kind is authoritative; "tag_push" is not a branch push
        return payload.get("object_kind") == "push"
    return event_name(provider, headers) == "push"


def _text(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"a push payload needs {key!r}")
    return value


# --- matching ------------------------------------------------------------------------------


def matches(event: PushEvent, repo: str, branch: str | None) -> bool:
    """True when `event` pushed to the watched `repo` and `branch`.

    URLs compare as host and path, blind to scheme, user, port, case, a
    trailing slash and `.git` (so the https, ssh and scp-like forms of one
    repository match); a local path matches itself or its `file://` URL. With
    `branch` None, a push to the payload's default branch matches; when the
    payload does not name one, any branch push does.
    """
    wanted = repo_key(repo)
    if not any(repo_key(url) == wanted for url in event.repo_urls):
        return False
    if not event.ref.startswith("refs/heads/"):
        return False
    pushed = event.ref.removeprefix("refs/heads/")
    if branch is not None:
        return pushed == branch
    return event.default_branch is None or pushed == event.default_branch


def repo_key(url: str) -> str:
    """A comparable form of a repository URL or path: `host/path` or `file:/abs/path`."""
    url = url.strip()
    if url.lower().startswith("file://"):
        return _path_key(unquote(urlsplit(url).path))
    if "://" in url:
        parts = urlsplit(url)
        return _remote_key(parts.hostname or "", parts.path)
    scp = _SCP_LIKE.match(url)
    if scp and "/" not in url.split(":", 1)[0]:
        return _remote_key(scp.group(1), scp.group(2))
    return _path_key(url)


def _remote_key(host: str, path: str) -> str:
    path = path.strip("/").lower().removesuffix(".git").rstrip("/")
    return f"{host.lower()}/{path}"


def _path_key(path: str) -> str:
    resolved = str(Path(os.path.expanduser(path)).resolve()).rstrip("/")
    return "file:" + resolved.removesuffix(".git").removesuffix("/")


# --- the router ----------------------------------------------------------------------------


class _Deliveries:
    """Recently seen delivery ids, oldest forgotten first (a bounded LRU)."""

    def __init__(self, size: int = REPLAY_MEMORY) -> None:
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def first_time(self, key: tuple[str, str]) -> bool:
        """Record `key`; False when it was already recorded (a replay)."""
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)
            return True

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._seen.pop(key, None)


@dataclass(frozen=True)
class HookTarget:
    """What a push to `repo`/`branch` wakes: `on_push` is called with the event."""

    repo: str
    branch: str | None
    on_push: Callable[[PushEvent], None]


def webhook_router(
    secret: str | None,
    repo: str,
    branch: str | None,
    on_push: Callable[[PushEvent], None],
) -> APIRouter:
    """POST /hooks/{github,gitlab,gitea}: each verified push to `repo`/`branch` calls `on_push`."""
    target = [HookTarget(repo, branch, on_push)]
    return fanout_router(secret, lambda: target)


def fanout_router(secret: str | None, targets: Callable[[], list[HookTarget]]) -> APIRouter:
    """POST /hooks/{github,gitlab,gitea} for several repositories (a host of many apps, its
    host file's repo): each verified push calls every target it concerns, asked per push."""
    router = APIRouter(prefix="/hooks", include_in_schema=False)
    deliveries = _Deliveries()

    async def receive(provider: str, request: Request) -> dict[str, Any]:
        if not secret:
            raise HTTPException(503, NO_SECRET)
        body = await _read_body(request)
        if not verify(provider, body, request.headers, secret):
            raise HTTPException(401, f"missing or wrong {provider} webhook signature")
        try:
            event = parse_push(provider, request.headers, body)
        except ValueError as err:
            raise HTTPException(400, f"malformed {provider} payload: {err}") from err
        if event is None:
            return {"ignored": f"{event_name(provider, request.headers)} event"}
        woken = [t for t in targets() if matches(event, t.repo, t.branch)]
        if not woken:
            return {"ignored": f"push to {event.ref} of another repository or branch"}
        key = (provider, event.delivery or "")
        if event.delivery and not deliveries.first_time(key):
            return {"ignored": "replay"}
        try:
            for target in woken:
                await run_in_threadpool(target.on_push, event)
        except BaseException:
            deliveries.forget(key)  # the provider's redelivery should get another chance
            raise
        return {"accepted": True}

    for provider in PROVIDERS:
        router.add_api_route(
            f"/{provider}", _endpoint(receive, provider), methods=["POST"], status_code=202
        )
    return router


Receiver = Callable[[str, Request], Awaitable[dict[str, Any]]]


def _endpoint(receive: Receiver, provider: str) -> Callable[[Request], Awaitable[dict[str, Any]]]:
    async def endpoint(request: Request) -> dict[str, Any]:
        return await receive(provider, request)

    endpoint.__name__ = f"hook_{provider}"
    return endpoint


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 past `MAX_BODY` whether or not Content-Length says so."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise HTTPException(413, f"webhook payloads are limited to {MAX_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPException(413, f"webhook payloads are limited to {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
