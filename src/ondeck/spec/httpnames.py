"""What the router can match on: a route's host and path, a header's name. Pure.

One rule, two users: the spec's validation (`model.py`) refuses what the
router could not serve, and the router's table (`router/table.py`) refuses a
config holding it. Written once so the two can never disagree (a spec that
validates and a router that refuses it crashed the controller's push).
"""

from __future__ import annotations

import re

# A host name as the router compares it: lower case, no port, no wildcard; or an IP literal.
_HOST = re.compile(r"[a-z0-9]([a-z0-9\-._]*[a-z0-9])?|\[[0-9a-f:.]+\]")
# An HTTP header name (RFC 9110 token).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_PATH_FORBIDDEN = " ?#"


def route_host_key(host: str) -> str | None:
    """`host` as the router matches it (lower case, no trailing dot, as it reads a request's
    Host), or None when the router cannot match it (a port, a wildcard, a space...)."""
    key = host.lower().removesuffix(".")
    return key if _HOST.fullmatch(key) else None


def is_route_host(host: str) -> bool:
    """Whether the router can match `host` (any case, a trailing dot allowed)."""
    return route_host_key(host) is not None


def is_route_path(path: str) -> bool:
    """Whether `path` is a path prefix the router can match: `/...`, no `?`, `#` or space."""
    return path.startswith("/") and not any(c in path for c in _PATH_FORBIDDEN)


def is_header_name(name: str) -> bool:
    """Whether `name` is an HTTP header name (a token: no space, colon or separator)."""
    return _TOKEN.fullmatch(name.lower()) is not None
