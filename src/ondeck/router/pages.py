"""The router's own answers: error pages and the exception that asks for one.

Both sides of an exchange (client.py, upstream.py) answer with these when the
request is unacceptable or the backend fails it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from html import escape
from http import HTTPStatus


@dataclass(frozen=True)
class Page:
    """One answer made by the router: status, head (closing or keep-alive), body."""

    status: int
    head_close: bytes
    head_keep: bytes
    body: bytes


def _page(status: int, text: str) -> Page:
    title = f"{status} {HTTPStatus(status).phrase}"
    body = (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f"<body><h1>{title}</h1>\n<p>{escape(text)}</p>\n<hr><p>ondeck router</p></body></html>\n"
    ).encode()
    head = (
        f"HTTP/1.1 {title}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
    ).encode()
    return Page(status, head + b"Connection: close\r\n\r\n", head + b"\r\n", body)


PAGES: dict[str, Page] = {
    "bad_request": _page(400, "The request is malformed or ambiguous, so it was not forwarded."),
    "method": _page(405, "CONNECT is not supported by this router."),
    "timeout": _page(408, "The request did not arrive in time."),
    "too_large": _page(413, "The request body is larger than this router accepts."),
    "uri_too_long": _page(414, "The request line is too long."),
    "headers_too_large": _page(431, "The request headers are too large or too many."),
    "bad_gateway": _page(
        502,
        "The application refused the connection or closed it before answering. "
        "It may be starting or restarting: try again in a moment.",
    ),
    "no_route": _page(503, "No application is routed for this host and path."),
    "no_backend": _page(503, "The application has no instance available. Try again soon."),
    "gateway_timeout": _page(504, "The application did not answer in time."),
}


MAINTENANCE_RETRY_AFTER = 60  # seconds a client is asked to wait during maintenance


def maintenance_answer(message: str, accept: str) -> tuple[bytes, bytes]:
    """(head without its final blank line, body) of the 503 of a service in maintenance.

    JSON when the client asks for JSON and not HTML (an API client), else an
    HTML page. The message comes from git: escaped for HTML, encoded for JSON.
    """
    wants_json = "json" in accept and "html" not in accept
    return _maintenance(message, wants_json)


@functools.lru_cache(maxsize=64)
def _maintenance(message: str, wants_json: bool) -> tuple[bytes, bytes]:
    if wants_json:
        body = json.dumps({"status": 503, "error": "maintenance", "message": message}).encode()
        kind = "application/json"
    else:
        title = "503 Service Unavailable"
        body = (
            f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
            f"<body><h1>Down for maintenance</h1>\n<p>{escape(message)}</p>\n"
            "<hr><p>ondeck router</p></body></html>\n"
        ).encode()
        kind = "text/html; charset=utf-8"
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {MAINTENANCE_RETRY_AFTER}\r\n"
        "Cache-Control: no-store\r\n"
    ).encode()
    return head, body


class Reject(Exception):
    """Raised inside a parser callback: answer `page` and close the connection."""

    def __init__(self, page: str) -> None:
        super().__init__(page)
        self.page = page
