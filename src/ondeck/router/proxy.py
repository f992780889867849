"""The data plane: an HTTP/1.1 reverse proxy on asyncio protocols and httptools.

`Router` holds the served config, the per-backend slots (counters and idle
upstream connections) and the open connections; `ClientConnection` is the
protocol of one accepted socket and `UpstreamConnection` that of one socket to
a backend. server.py wires them to a listener; control.py swaps the config.

Strictness (decided here, tested in tests/integration/test_router_hostile.py):
llhttp runs in its strict default mode, so bare LF, obs-fold, whitespace before
a colon, bad tokens, CL+TE and duplicate Content-Length are parse errors; on top
we require `Transfer-Encoding` to be exactly `chunked` (once, HTTP/1.1 only), a
single Host, and HTTP/1.0 or 1.1. Any rejection answers once and closes.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from html import escape
from http import HTTPStatus
from typing import Any, cast

import httptools

from ondeck.router.metrics import BackendStats
from ondeck.router.table import (
    Backend,
    Pool,
    RouterConfig,
    SetName,
    choose_backend,
    choose_set,
    parse_cookies,
    resolve,
)

INF = float("inf")
_now = time.monotonic
_random = random.random


@dataclass(frozen=True)
class ProxyOptions:
    """Limits and timeouts of the proxy (seconds and bytes)."""

    header_timeout: float = 10.0  # first byte of a request to the end of its headers
    keepalive_timeout: float = 60.0  # an idle client connection is closed after this
    body_timeout: float = 60.0  # longest silence while a request body streams in
    connect_timeout: float = 5.0  # to open a connection to a backend
    upstream_timeout: float = 60.0  # longest upstream silence while a request is in flight
    upstream_idle_timeout: float = 15.0  # a pooled idle upstream connection is kept this long
    max_url: int = 8192  # request line longer: 414
    max_header_bytes: int = 32768  # all header names and values: 431
    max_headers: int = 100  # more header lines: 431
    max_body: int = 1 << 30  # request body larger: 413
    max_idle_per_backend: int = 256
    removed_keep: float = 300.0  # a removed, drained backend's counters stay visible this long


# ---------------------------------------------------------------------------
# Canned answers


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


class _Reject(Exception):
    """Raised inside a parser callback: answer `page` and close the connection."""

    def __init__(self, page: str) -> None:
        super().__init__(page)
        self.page = page


# ---------------------------------------------------------------------------
# Header vocabulary (lower-case names -> what the proxy does with them)

_H_HOST, _H_CL, _H_TE, _H_CONN, _H_DROP, _H_XFF, _H_COOKIE, _H_UPGRADE = range(8)
_REQUEST_SPECIAL = {
    b"host": _H_HOST,
    b"content-length": _H_CL,
    b"transfer-encoding": _H_TE,
    b"connection": _H_CONN,
    b"x-forwarded-for": _H_XFF,
    b"cookie": _H_COOKIE,
    b"upgrade": _H_UPGRADE,
    b"keep-alive": _H_DROP,
    b"te": _H_DROP,
    b"trailer": _H_DROP,
    b"proxy-connection": _H_DROP,
    b"proxy-authorization": _H_DROP,
    b"proxy-authenticate": _H_DROP,
    b"x-forwarded-proto": _H_DROP,  # ours replaces the client's
    b"x-forwarded-host": _H_DROP,
}
_RESPONSE_SPECIAL = {
    b"content-length": _H_CL,
    b"transfer-encoding": _H_TE,
    b"connection": _H_CONN,
    b"upgrade": _H_UPGRADE,
    b"keep-alive": _H_DROP,
    b"te": _H_DROP,
    b"trailer": _H_DROP,
    b"proxy-connection": _H_DROP,
    b"proxy-authenticate": _H_DROP,
    b"proxy-authorization": _H_DROP,
}
_H_PLAIN = -1  # forwarded as is
_COMMON_PLAIN = (
    b"Accept",
    b"Accept-Encoding",
    b"Accept-Language",
    b"Authorization",
    b"Cache-Control",
    b"Content-Type",
    b"Date",
    b"ETag",
    b"Last-Modified",
    b"Location",
    b"Origin",
    b"Referer",
    b"Server",
    b"User-Agent",
    b"Vary",
)


def _by_spelling(kinds: dict[bytes, int]) -> dict[bytes, int]:
    """Common spellings looked up before lower-casing (lower() costs on a hot path)."""
    spelled = {name.title(): kind for name, kind in kinds.items()}
    spelled.update(kinds)
    spelled.update((name, _H_PLAIN) for name in _COMMON_PLAIN)
    return spelled


_REQUEST_SPELLED = _by_spelling(_REQUEST_SPECIAL)
_RESPONSE_SPELLED = _by_spelling(_RESPONSE_SPECIAL)
_CONNECTION_TOKENS_KNOWN = frozenset((b"close", b"keep-alive", b"upgrade", b""))
_HOST_RE = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _status_line(code: int) -> bytes:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "Status"
    return f"HTTP/1.1 {code} {phrase}\r\n".encode()


# The reason phrase is ours, not the upstream's: it carries no meaning (RFC 9112
# 4) and not parsing it saves a parser callback per response.
_STATUS_LINES = {code: _status_line(code) for code in range(100, 1000)}
_CHUNK_END = b"0\r\n\r\n"
_CRLF = b"\r\n"
_SEP = b": "
_PROTO_LINE = b"X-Forwarded-Proto: http\r\n"
_CONN_CLOSE = b"Connection: close\r\n"
_CONN_KEEP = b"Connection: keep-alive\r\n"
_CHUNKED_LINE = b"Transfer-Encoding: chunked\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BUFFER_LIMIT = 65536  # request bytes held while an upstream connection opens
_MAX_RESPONSE_HEADER_BYTES = 65536

# Why the client socket is not being read (a bit set; read again when empty).
_PAUSE_BACKPRESSURE = 1  # the upstream cannot take more bytes
_PAUSE_QUEUE = 2  # a pipelined request waits for the previous answer
_PAUSE_BUFFER = 4  # bytes held while the upstream connection opens


# ---------------------------------------------------------------------------
# Router state


class Slot:
    """One backend as the proxy sees it: its counters and idle connections."""

    __slots__ = ("backend", "idle", "labels", "pool", "removed", "removed_at", "set_name", "stats")

    def __init__(self, backend: Backend, pool: str, set_name: SetName, stats: BackendStats) -> None:
        self.backend = backend
        self.pool = pool
        self.set_name: str = set_name
        self.stats = stats
        self.idle: list[UpstreamConnection] = []
        self.removed = False
        self.removed_at = 0.0
        self.labels = {"pool": pool, "backend": backend.id, "set": set_name}

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.transport.close()


class _ActiveCounts(Mapping[str, int]):
    """In-flight requests per backend id, read straight from the slots."""

    __slots__ = ("_slots",)

    def __init__(self, slots: dict[str, Slot]) -> None:
        self._slots = slots

    def __getitem__(self, key: str) -> int:
        return self._slots[key].stats.active

    def get(self, key: str, default: int = 0) -> int:  # type: ignore[override]
        slot = self._slots.get(key)
        return default if slot is None else slot.stats.active

    def __iter__(self) -> Iterator[str]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)


class Router:
    """Everything connections share: the config, the slots, the open sockets."""

    def __init__(self, config: RouterConfig, options: ProxyOptions | None = None) -> None:
        self.options = options or ProxyOptions()
        self.config = config
        self.slots: dict[str, Slot] = {}
        self.active = _ActiveCounts(self.slots)
        self.local: dict[int, int] = {}
        self.clients: set[ClientConnection] = set()
        self.upstreams: set[UpstreamConnection] = set()
        self.started = time.time()
        self._started_mono = _now()
        self._cookies: dict[tuple[str, str], bytes] = {}
        self._host_keys: dict[bytes, str] = {}
        self.apply(config)

    def apply(self, config: RouterConfig) -> None:
        """Serve `config` from now on: removed backends take no new request."""
        self.config = config
        wanted = config.backends()
        now = _now()
        for backend_id, (pool, set_name, backend) in wanted.items():
            slot = self.slots.get(backend_id)
            if slot is not None and (slot.backend.host, slot.backend.port) == (
                backend.host,
                backend.port,
            ):
                slot.backend, slot.removed = backend, False
                slot.pool, slot.set_name = pool.name, set_name
                slot.labels = {"pool": pool.name, "backend": backend_id, "set": set_name}
                continue
            stats = slot.stats if slot is not None else BackendStats()
            if slot is not None:
                slot.removed, slot.removed_at = True, now
                slot.close_idle()
            self.slots[backend_id] = Slot(backend, pool.name, set_name, stats)
        for backend_id, slot in self.slots.items():
            if backend_id not in wanted and not slot.removed:
                slot.removed, slot.removed_at = True, now
                slot.close_idle()

    # -- per-request decisions ------------------------------------------------

    def host_key(self, host: bytes) -> str | None:
        """`Shop.Localhost:8080` -> `shop.localhost`; None when not a valid host.

        Cached (valid hosts are few) so the syntax check runs once per name.
        """
        key = self._host_keys.get(host, "")
        if key == "":
            if not _HOST_RE.fullmatch(host):
                return None
            text = host.decode("latin-1").lower()
            bracket = text.find("]") + 1 if text.startswith("[") else 0
            text = text[:bracket] if bracket else text.partition(":")[0]
            if len(self._host_keys) > 4096:
                self._host_keys.clear()
            key = self._host_keys[host] = text.rstrip(".")
        return key

    def choose(self, ex: Exchange, client_ip: str) -> Slot | Pool | None:
        """The slot for `ex`; a Pool when it has no usable backend; None: no route."""
        pool = resolve(self.config, ex.host_key, ex.path)
        if pool is None:
            return None
        if not pool.canary:
            stable = pool.stable
            if len(stable) == 1 and stable[0].weight > 0:
                backend: Backend | None = stable[0]
            else:
                backend = choose_backend(stable, _random(), self.active)
            ex.set_name = "stable"
        else:
            backend = self._choose_with_canary(pool, ex, client_ip)
        if backend is None:
            return pool
        return self.slots[backend.id]

    def _choose_with_canary(self, pool: Pool, ex: Exchange, client_ip: str) -> Backend | None:
        cookies = parse_cookies(ex.cookie.decode("latin-1")) if ex.cookie else {}
        headers = ex.header_map() if pool.match_headers else {}
        set_name, within, sets_cookie = choose_set(pool, headers, cookies, client_ip, _random())
        ex.set_name = set_name
        if sets_cookie:
            ex.set_cookie = self._cookie_line(pool.cookie_name, set_name)
        backends = pool.canary if set_name == "canary" else pool.stable
        return choose_backend(backends, within, self.active)

    def retry_slot(self, ex: Exchange, failed: Slot) -> Slot | None:
        """Another backend of the same set after a failed connect, if any."""
        pool = resolve(self.config, ex.host_key, ex.path)
        if pool is None:
            return None
        backends = pool.canary if ex.set_name == "canary" else pool.stable
        exclude = frozenset((failed.backend.id,))
        backend = choose_backend(backends, _random(), self.active, exclude)
        return None if backend is None else self.slots[backend.id]

    def _cookie_line(self, name: str, set_name: str) -> bytes:
        line = self._cookies.get((name, set_name))
        if line is None:
            value = "c" if set_name == "canary" else "s"
            text = f"Set-Cookie: {name}={value}; Path=/; HttpOnly; SameSite=Lax\r\n"
            line = self._cookies[(name, set_name)] = text.encode()
        return line

    # -- bookkeeping ----------------------------------------------------------

    def count_local(self, status: int) -> None:
        self.local[status] = self.local.get(status, 0) + 1

    def sweep(self) -> None:
        """Enforce deadlines, expire idle upstream connections, forget drained slots."""
        now = _now()
        for client in [c for c in self.clients if c.deadline < now]:
            client.timed_out()
        for upstream in [u for u in self.upstreams if u.deadline < now]:
            upstream.timed_out()
        oldest = now - self.options.upstream_idle_timeout
        for slot in self.slots.values():
            if slot.idle and slot.idle[0].idle_since < oldest:
                keep = [c for c in slot.idle if c.idle_since >= oldest]
                for conn in slot.idle:
                    if conn.idle_since < oldest:
                        conn.transport.close()
                slot.idle = keep
        forget = now - self.options.removed_keep
        for backend_id in [
            k
            for k, s in self.slots.items()
            if s.removed and s.stats.active == 0 and s.removed_at < forget
        ]:
            del self.slots[backend_id]

    def stats(self) -> dict[str, Any]:
        """The `stats` answer of the control socket (cumulative since `since`)."""
        backends = {}
        for backend_id, slot in self.slots.items():
            entry = slot.stats.snapshot()
            entry.update(
                pool=slot.pool,
                set=slot.set_name,
                host=slot.backend.host,
                port=slot.backend.port,
                removed=slot.removed,
            )
            backends[backend_id] = entry
        return {
            "since": self.started,
            "uptime": round(_now() - self._started_mono, 3),
            "generation": self.config.generation,
            "connections": len(self.clients),
            "local": {str(k): v for k, v in sorted(self.local.items())},
            "backends": backends,
        }

    def close_all(self) -> None:
        for slot in self.slots.values():
            slot.close_idle()
        for client in list(self.clients):
            client.transport.close()
        for upstream in list(self.upstreams):
            upstream.transport.close()


# ---------------------------------------------------------------------------
# One request/response exchange


class Exchange:
    """One request from headers to the last response byte (plain attributes: hot path)."""

    __slots__ = (
        "chunked",
        "cookie",
        "has_body",
        "head",
        "head_request",
        "header_lines",
        "host_key",
        "http10",
        "keep_alive",
        "path",
        "pending",
        "pending_size",
        "received",
        "request_done",
        "response_done",
        "response_started",
        "retried",
        "set_cookie",
        "set_name",
        "slot",
        "started",
        "status",
        "upgrade",
        "upstream",
    )

    def __init__(self) -> None:
        self.head = b""
        self.header_lines: list[bytes] = []
        self.host_key = ""
        self.path = "/"
        self.cookie = b""
        self.chunked = False
        self.has_body = False
        self.head_request = False
        self.http10 = False
        self.keep_alive = True
        self.upgrade = False
        self.pending: list[bytes] | None = None
        self.pending_size = 0
        self.received = 0
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self.retried = False
        self.set_cookie = b""
        self.set_name = "stable"
        self.slot: Slot | None = None
        self.started = 0.0
        self.status = 0
        self.upstream: UpstreamConnection | None = None

    def header_map(self) -> dict[str, str]:
        """Request headers by lower-case name (for A/B matching only)."""
        lines = self.header_lines
        return {
            lines[i].decode("latin-1").lower(): lines[i + 2].decode("latin-1")
            for i in range(0, len(lines), 4)
        }


# ---------------------------------------------------------------------------
# The client side


class ClientConnection(asyncio.Protocol):
    """One accepted client socket: parse requests, dispatch, relay answers."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.options = router.options
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.peer_bytes = b""
        self.deadline = INF
        self.parsing: Exchange | None = None  # the request being parsed
        self.active: Exchange | None = None  # the request being answered
        self.queue: deque[Exchange] = deque()  # pipelined requests parsed ahead
        self.paused = 0
        self.write_paused = False
        self.closing = False  # no further request is read
        self.error_after: str | None = None  # a page owed once earlier answers are sent
        self.tunnel: UpstreamConnection | None = None
        self.tunnel_pending: list[bytes] | None = None
        self._advancing = False
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._header_bytes = 0
        self._header_count = 0
        self._lines: list[bytes] = []
        self._host: bytes | None = None
        self._host_count = 0
        self._cl: bytes | None = None
        self._cl_count = 0
        self._te: bytes | None = None
        self._te_count = 0
        self._connection = b""
        self._xff = b""
        self._cookie = b""
        self._upgrade = b""
        self._headers_done = False

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self.peer_bytes = self.peer.encode("latin-1")
        self.router.clients.add(self)
        self.deadline = _now() + self.options.keepalive_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.router.clients.discard(self)
        self.deadline = INF
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.transport.close()
        ex, self.active = self.active, None
        self.queue.clear()
        if ex is not None:
            upstream, ex.upstream = ex.upstream, None
            if upstream is not None:
                upstream.detach_aborted()
            self._end(ex, 0, "client")

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        if self.tunnel_pending is not None:
            self._hold_tunnel_bytes(data)
            return
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.tunnel_pending = []
            self._hold_tunnel_bytes(data[int(exc.args[0]) :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, _Reject):
                raise
            self._reject(cause.page)
        except httptools.HttpParserError:
            if not self.closing:
                self._reject("bad_request")

    def eof_received(self) -> bool | None:
        if self.active is None or self.tunnel is not None:
            return None  # close now
        self.closing = True  # answer what was asked, then close
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        upstream = self._current_upstream()
        if upstream is not None:
            upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        upstream = self._current_upstream()
        if upstream is not None:
            upstream.transport.resume_reading()

    def _current_upstream(self) -> UpstreamConnection | None:
        if self.tunnel is not None:
            return self.tunnel
        return self.active.upstream if self.active is not None else None

    def set_pause(self, reason: int, on: bool) -> None:
        """Stop or restart reading the client for `reason` (see _PAUSE_*)."""
        before = self.paused
        after = (before | reason) if on else (before & ~reason)
        self.paused = after
        if before and not after:
            self.transport.resume_reading()
        elif after and not before:
            self.transport.pause_reading()

    # -- httptools callbacks: the request parser -------------------------------

    def on_message_begin(self) -> None:
        self.parsing = Exchange()
        self.deadline = _now() + self.options.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.options.max_url:
            raise _Reject("uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a trailer of a chunked body: not forwarded
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if (
            self._header_count > self.options.max_headers
            or self._header_bytes > self.options.max_header_bytes
        ):
            raise _Reject("headers_too_large")
        kind = _REQUEST_SPELLED.get(name)
        if kind is None:
            kind = _REQUEST_SPECIAL.get(name.lower(), _H_PLAIN)
        if kind == _H_PLAIN:
            self._lines += (name, _SEP, value, _CRLF)
        elif kind == _H_HOST:
            self._host = value
            self._host_count += 1
        elif kind == _H_CL:
            self._cl = value
            self._cl_count += 1
        elif kind == _H_TE:
            self._te = value
            self._te_count += 1
        elif kind == _H_CONN:
            self._connection += b"," + value.lower()
        elif kind == _H_XFF:
            self._xff = value if not self._xff else self._xff + b", " + value
        elif kind == _H_COOKIE:
            self._cookie = value if not self._cookie else self._cookie + b"; " + value
            self._lines += (name, _SEP, value, _CRLF)
        elif kind == _H_UPGRADE:
            self._upgrade = value

    def on_headers_complete(self) -> None:
        self._headers_done = True
        ex = cast(Exchange, self.parsing)
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1":
            if version != "1.0":
                raise _Reject("bad_request")
            ex.http10 = True
        method = parser.get_method()
        if method == b"CONNECT":
            raise _Reject("method")
        ex.head_request = method == b"HEAD"
        host = self._check_host(ex)
        framing = self._check_framing(ex)
        ex.keep_alive = parser.should_keep_alive()
        ex.upgrade = parser.should_upgrade()
        if ex.upgrade and ex.has_body:
            raise _Reject("bad_request")
        if not ex.keep_alive or ex.upgrade:
            ex.keep_alive = False
            self.closing = True  # nothing after this request is read as HTTP
        target, authority = self._target(ex)
        if authority is not None:
            host = authority  # absolute-form: its authority replaces Host (RFC 9112 3.2.2)
        lines = self._lines
        if self._connection.strip(b", ") and not self._only_known_tokens():
            lines = self._drop_connection_named(lines)
        ex.header_lines = lines
        ex.cookie = self._cookie
        ex.head = self._upstream_head(ex, method + b" " + target, host, framing)
        now = _now()
        ex.started = now
        self._reset_message()
        self._headers_done = True  # until the next message begins
        if self.active is None:
            self.deadline = now + self.options.body_timeout if ex.has_body else INF
            self._dispatch(ex)
        else:
            self.deadline = INF  # not read until its turn: no client deadline meanwhile
            self.queue.append(ex)
            self.set_pause(_PAUSE_QUEUE, True)

    def _upstream_head(self, ex: Exchange, line: bytes, host: bytes, framing: bytes) -> bytes:
        """The request head sent upstream: kept headers, X-Forwarded-*, our framing."""
        xff = self._xff + b", " + self.peer_bytes if self._xff else self.peer_bytes
        parts = [line, b" HTTP/1.1\r\n"]
        if host:
            parts += (b"Host: ", host, _CRLF, b"X-Forwarded-Host: ", host, _CRLF)
        parts += ex.header_lines
        parts += (b"X-Forwarded-For: ", xff, _CRLF, _PROTO_LINE)
        if framing:
            parts.append(framing)
        if ex.upgrade:
            parts += (b"Connection: Upgrade\r\nUpgrade: ", self._upgrade, _CRLF)
        parts.append(_CRLF)
        return b"".join(parts)

    def on_body(self, body: bytes) -> None:
        ex = cast(Exchange, self.parsing)
        ex.received += len(body)
        if ex.received > self.options.max_body:
            raise _Reject("too_large")
        upstream = ex.upstream
        if ex.chunked:
            if upstream is not None:
                upstream.transport.writelines((b"%x\r\n" % len(body), body, _CRLF))
                upstream.deadline = _now() + self.options.upstream_timeout
            elif not ex.response_done:
                self._buffer(ex, b"%x\r\n%b\r\n" % (len(body), body))
        elif upstream is not None:
            upstream.transport.write(body)
            upstream.deadline = _now() + self.options.upstream_timeout
        elif not ex.response_done:
            self._buffer(ex, body)
        self.deadline = _now() + self.options.body_timeout

    def on_message_complete(self) -> None:
        ex = cast(Exchange, self.parsing)
        self.parsing = None
        self._headers_done = False
        ex.request_done = True
        if ex.chunked:
            if ex.upstream is not None:
                ex.upstream.transport.write(_CHUNK_END)
            elif not ex.response_done:
                self._buffer(ex, _CHUNK_END)
        if ex is self.active:
            self.deadline = INF
            if ex.response_done:
                self._advance()

    # -- request checks (raise _Reject) ---------------------------------------

    def _check_host(self, ex: Exchange) -> bytes:
        host = self._host
        if self._host_count > 1 or (host is None and not ex.http10):
            raise _Reject("bad_request")
        if host is None:
            return b""
        key = self.router.host_key(host)
        if key is None:
            raise _Reject("bad_request")
        ex.host_key = key
        return host

    def _check_framing(self, ex: Exchange) -> bytes:
        """The body framing header for the upstream; validates CL and TE strictly."""
        if self._te_count:
            if (
                self._te_count > 1
                or self._cl_count
                or ex.http10
                or cast(bytes, self._te).lower() != b"chunked"
            ):
                raise _Reject("bad_request")
            ex.chunked = ex.has_body = True
            return _CHUNKED_LINE
        if self._cl_count:
            value = cast(bytes, self._cl).strip()
            if self._cl_count > 1 or not value.isdigit():
                raise _Reject("bad_request")
            length = int(value)
            if length > self.options.max_body:
                raise _Reject("too_large")
            ex.has_body = length > 0
            return b"Content-Length: %d\r\n" % length
        return b""

    def _target(self, ex: Exchange) -> tuple[bytes, bytes | None]:
        """The origin-form target and, for an absolute-form one, its authority."""
        url = self._url
        if url.startswith(b"/"):
            ex.path = url.partition(b"?")[0].decode("latin-1")
            return url, None
        if url == b"*":
            return url, None
        if url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Reject("bad_request") from None
            path = parsed.path or b"/"
            ex.path = path.decode("latin-1")
            authority = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
            key = self.router.host_key(authority) if authority else None
            if key is None:
                raise _Reject("bad_request")
            ex.host_key = key
            return path + (b"?" + parsed.query if parsed.query else b""), authority
        raise _Reject("bad_request")

    def _only_known_tokens(self) -> bool:
        return all(t.strip() in _CONNECTION_TOKENS_KNOWN for t in self._connection.split(b","))

    def _drop_connection_named(self, lines: list[bytes]) -> list[bytes]:
        """Remove headers that `Connection` names (they are hop-by-hop by declaration)."""
        named = {t.strip() for t in self._connection.split(b",")} - _CONNECTION_TOKENS_KNOWN
        kept: list[bytes] = []
        for i in range(0, len(lines), 4):
            if lines[i].lower() not in named:
                kept += lines[i : i + 4]
        return kept

    # -- dispatch and answers ---------------------------------------------------

    def _dispatch(self, ex: Exchange) -> None:
        """Make `ex` the active exchange: pick a backend, send it the request."""
        self.active = ex
        chosen = self.router.choose(ex, self.peer)
        if not isinstance(chosen, Slot):
            self._local(ex, "no_route" if chosen is None else "no_backend")
            return
        ex.slot = chosen
        chosen.stats.active += 1
        idle = chosen.idle
        if idle:
            idle.pop().attach(ex, self)
        else:
            asyncio.get_running_loop().create_task(self._connect(ex, chosen))

    async def _connect(self, ex: Exchange, slot: Slot) -> None:
        """Open a connection to `slot` for `ex`; on failure retry once elsewhere."""
        backend = slot.backend
        loop = asyncio.get_running_loop()
        router = self.router
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(router, slot), backend.host, backend.port
                )
        except TimeoutError:
            self._connect_failed(ex, slot, "timeout")
            return
        except OSError:
            self._connect_failed(ex, slot, "connect")
            return
        if ex is not self.active or ex.response_done:
            conn.release()  # the client went away meanwhile
            return
        conn.attach(ex, self)

    def _connect_failed(self, ex: Exchange, slot: Slot, kind: str) -> None:
        slot.stats.errors[kind] += 1
        if ex is not self.active or ex.response_done:
            return
        retry = None if ex.retried else self.router.retry_slot(ex, slot)
        if retry is not None:
            ex.retried = True
            slot.stats.active -= 1
            retry.stats.active += 1
            ex.slot = retry
            asyncio.get_running_loop().create_task(self._connect(ex, retry))
            return
        self._local(ex, "gateway_timeout" if kind == "timeout" else "bad_gateway")

    def reconnect(self, ex: Exchange) -> None:
        """A reused upstream connection died before answering: try a fresh one."""
        ex.retried = True
        slot = cast(Slot, ex.slot)
        asyncio.get_running_loop().create_task(self._connect(ex, slot))

    def _buffer(self, ex: Exchange, data: bytes) -> None:
        if ex.pending is None:
            ex.pending = []
        ex.pending.append(data)
        ex.pending_size += len(data)
        if ex.pending_size > _BUFFER_LIMIT:
            self.set_pause(_PAUSE_BUFFER, True)

    def _hold_tunnel_bytes(self, data: bytes) -> None:
        pending = cast(list[bytes], self.tunnel_pending)
        if data:
            pending.append(data)
        if sum(len(d) for d in pending) > _BUFFER_LIMIT:
            self.set_pause(_PAUSE_BUFFER, True)

    def start_tunnel(self, upstream: UpstreamConnection) -> None:
        """After a 101: from now on bytes are spliced both ways."""
        ex = cast(Exchange, self.active)
        self.active = None
        self.tunnel = upstream
        self.deadline = INF
        pending, self.tunnel_pending = self.tunnel_pending or [], None
        if pending:
            upstream.transport.writelines(pending)
        self._end(ex, 101, None)
        self.set_pause(_PAUSE_BUFFER | _PAUSE_QUEUE, False)

    def _local(self, ex: Exchange, key: str) -> None:
        """Answer `ex` with one of the router's own pages."""
        page = PAGES[key]
        close = not ex.keep_alive or (ex.has_body and not ex.request_done)
        head = page.head_close if close else page.head_keep
        self.transport.write(head if ex.head_request else head + page.body)
        if close:
            ex.keep_alive = False
        ex.response_started = True
        self.response_done(ex, page.status)

    def response_done(self, ex: Exchange, status: int) -> None:
        """The last response byte of `ex` is written (or handed to the transport)."""
        ex.response_done = True
        ex.upstream = None
        self._end(ex, status, None)
        self.set_pause(_PAUSE_BACKPRESSURE, False)
        if ex.request_done:
            self._advance()
        elif ex.has_body:
            # Answered before the body arrived: drop the connection rather than
            # read and discard an unbounded body.
            ex.keep_alive = False
            self.closing = True
            self.transport.close()
        # else: a body-less request whose on_message_complete comes right after.

    def _end(self, ex: Exchange, status: int, error: str | None) -> None:
        slot, ex.slot = ex.slot, None
        if slot is None:
            if status:
                self.router.count_local(status)
            return
        stats = slot.stats
        stats.active -= 1
        if error is not None:
            stats.errors[error] += 1
        if status:
            stats.observe(status, _now() - ex.started)

    def _advance(self) -> None:
        """Move past finished exchanges: next pipelined request, idle, or close."""
        if self._advancing:
            return  # the loop below, further up the stack, continues
        self._advancing = True
        try:
            while True:
                ex = self.active
                if ex is None or not (ex.request_done and ex.response_done):
                    return
                self.active = None
                if not ex.keep_alive:
                    self.transport.close()
                    return
                if self.queue:
                    ex = self.queue.popleft()
                    if not ex.request_done:
                        self.deadline = _now() + self.options.body_timeout
                    self._dispatch(ex)
                    if not self.queue:
                        self.set_pause(_PAUSE_QUEUE, False)
                    continue
                if self.error_after is not None:
                    self._reject(self.error_after)
                    return
                if self.closing:
                    self.transport.close()  # the client half-closed: nothing more comes
                    return
                if self.parsing is None:
                    self.deadline = _now() + self.options.keepalive_timeout
                self.set_pause(_PAUSE_QUEUE, False)
        finally:
            self._advancing = False

    def _reject(self, key: str) -> None:
        """A request is unacceptable: answer `key` once earlier answers are out, close."""
        self.closing = True
        parsing, self.parsing = self.parsing, None
        if parsing is not None and parsing in self.queue:
            self.queue.remove(parsing)  # a request that went bad mid-body is not sent
        ex = self.active
        if ex is not None and parsing is not ex:
            self.error_after = key  # a pipelined request is bad; earlier ones finish first
            self.set_pause(_PAUSE_QUEUE, True)
            return
        if ex is not None:  # the active request itself went bad mid-body
            self.active = None
            upstream, ex.upstream = ex.upstream, None
            if upstream is not None:
                upstream.detach_aborted()
            self._end(ex, 0, "client")  # the client's fault: not the backend's 4xx
            if ex.response_started:
                self.transport.abort()
                return
        self.router.count_local(PAGES[key].status)
        page = PAGES[key]
        self.transport.write(page.head_close + page.body)
        self.transport.close()

    def timed_out(self) -> None:
        """The client was silent too long: idle, slow headers, or a stalled body."""
        self.deadline = INF
        ex = self.active
        if ex is not None and not ex.request_done and not ex.response_started:
            upstream, ex.upstream = ex.upstream, None
            if upstream is not None:
                upstream.detach_aborted()
            self.active = None
            self._end(ex, 0, "client")
            self.router.count_local(408)
            page = PAGES["timeout"]
            self.transport.write(page.head_close + page.body)
            self.transport.close()
            return
        if ex is None:
            self.transport.close()  # idle, or headers too slow (slowloris)
        else:
            self.transport.abort()

    def fail_exchange(self, ex: Exchange, key: str, error: str) -> None:
        """The upstream failed `ex`: answer with a page, or cut a started answer."""
        if ex is not self.active:
            return
        slot = ex.slot
        if slot is not None:
            slot.stats.errors[error] += 1
        if ex.response_started:
            self._end(ex, 0, None)
            self.active = None
            self.transport.abort()
            return
        self._local(ex, key)


# ---------------------------------------------------------------------------
# The upstream side


class UpstreamConnection(asyncio.Protocol):
    """One socket to a backend; serves one exchange at a time, then idles in its slot."""

    def __init__(self, router: Router, slot: Slot) -> None:
        self.router = router
        self.slot = slot
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientConnection | None = None
        self.ex: Exchange | None = None
        self.deadline = INF
        self.idle_since = 0.0
        self.served = 0
        self.tunnel = False
        self._out: list[bytes] = []  # response bytes of one read, written at its end
        self._reset_response()

    def _reset_response(self) -> None:
        self._lines: list[bytes] = []
        self._cl: bytes | None = None
        self._te = False
        self._upgrade = b""
        self._header_bytes = 0
        self._headers_done = False
        self._interim = False
        self._chunk_out = False
        self._until_eof = False
        self._keep_alive = False

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.router.upstreams.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.router.upstreams.discard(self)
        self.deadline = INF
        if self in self.slot.idle:
            self.slot.idle.remove(self)
        client, ex = self.client, self.ex
        self.client = self.ex = None
        if client is None:
            return
        if self.tunnel:
            client.transport.close()
            return
        if ex is None:
            return
        if self._until_eof and ex.response_started:
            if self._chunk_out:
                client.transport.write(_CHUNK_END)
            ex.keep_alive = ex.keep_alive and self._chunk_out
            client.response_done(ex, ex.status)
            return
        if not ex.response_started and self.served and not ex.has_body and not ex.retried:
            ex.upstream = None
            client.reconnect(ex)  # a kept-alive connection the backend had closed
            return
        client.fail_exchange(ex, "bad_gateway", "reset")

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            cast(ClientConnection, self.client).transport.write(data)
            return
        if self.ex is None:
            self.transport.close()  # bytes nobody asked for: never reuse this socket
            return
        try:
            self.parser.feed_data(data)
            if self._out:
                self._flush()
        except httptools.HttpParserUpgrade as exc:
            self._flush()
            self._switch_protocols(data[int(exc.args[0]) :])
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Reject):
                raise
            self._broken()
        except httptools.HttpParserError:
            self._broken()

    def _flush(self) -> None:
        """One write (a writev) per upstream read instead of one per parser callback."""
        out, self._out = self._out, []
        if out and self.client is not None:
            self.client.transport.writelines(out)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.set_pause(_PAUSE_BACKPRESSURE, True)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.set_pause(_PAUSE_BACKPRESSURE, False)

    # -- life in the pool -----------------------------------------------------

    def attach(self, ex: Exchange, client: ClientConnection) -> None:
        """Send `ex`'s request (and any body bytes held meanwhile) on this socket."""
        self.ex, self.client = ex, client
        ex.upstream = self
        self._reset_response()  # instead of an on_message_begin callback per response
        self.deadline = _now() + self.router.options.upstream_timeout
        pending = ex.pending
        if pending:
            ex.pending = None
            ex.pending_size = 0
            self.transport.writelines([ex.head, *pending])
            client.set_pause(_PAUSE_BUFFER, False)
        else:
            self.transport.write(ex.head)
        if client.write_paused:
            self.transport.pause_reading()

    def release(self) -> None:
        """Back to the slot's idle list, or closed when it cannot be reused."""
        self.ex = self.client = None
        self.deadline = INF
        self.served += 1
        slot = self.slot
        if (
            slot.removed
            or self.transport.is_closing()
            or len(slot.idle) >= self.router.options.max_idle_per_backend
        ):
            self.transport.close()
            return
        self.transport.resume_reading()
        self.idle_since = _now()
        slot.idle.append(self)

    def detach_aborted(self) -> None:
        """The client side gave up on the exchange: this socket is done for."""
        self.ex = self.client = None
        self.deadline = INF
        self.transport.abort()

    def timed_out(self) -> None:
        ex, client = self.ex, self.client
        self.ex = self.client = None
        self.deadline = INF
        self.transport.abort()
        if ex is not None and client is not None:
            ex.upstream = None
            client.fail_exchange(ex, "gateway_timeout", "timeout")

    def _broken(self) -> None:
        """The backend sent something that is not HTTP: 502, never reuse."""
        ex, client = self.ex, self.client
        self.ex = self.client = None
        self.transport.abort()
        if ex is not None and client is not None:
            ex.upstream = None
            client.fail_exchange(ex, "bad_gateway", "reset")

    # -- httptools callbacks: the response parser -------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # trailers are dropped
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > _MAX_RESPONSE_HEADER_BYTES:
            raise _Reject("bad_gateway")
        kind = _RESPONSE_SPELLED.get(name)
        if kind is None:
            kind = _RESPONSE_SPECIAL.get(name.lower(), _H_PLAIN)
        if kind == _H_PLAIN:
            self._lines += (name, _SEP, value, _CRLF)
        elif kind == _H_CL:
            self._cl = value
        elif kind == _H_TE:
            self._te = True
        elif kind == _H_UPGRADE:
            self._upgrade = value

    def on_headers_complete(self) -> None:
        self._headers_done = True
        ex = self.ex
        client = self.client
        if ex is None or client is None:
            return
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self._interim = True
            if status == 100 and not ex.http10:
                client.transport.write(_CONTINUE)
            return
        ex.status = status
        self._keep_alive = self.parser.should_keep_alive()
        self.deadline = _now() + self.router.options.upstream_timeout
        head = [_STATUS_LINES[status]]
        head += self._lines
        if status == 101:
            if not ex.upgrade:
                raise _Reject("bad_gateway")
            head += (b"Connection: Upgrade\r\nUpgrade: ", self._upgrade, _CRLF)
        else:
            self._framing(ex, status, head)
        if ex.set_cookie:
            head.append(ex.set_cookie)
        head.append(_CRLF)
        self._out.append(b"".join(head))
        ex.response_started = True
        if ex.head_request:
            self._finish(reusable=False)  # llhttp would wait for a body HEAD never has

    def _framing(self, ex: Exchange, status: int, head: list[bytes]) -> None:
        """Content-Length / chunked / read-to-close, and the client Connection header."""
        no_body = ex.head_request or status in (204, 304)
        if self._cl is not None and not self._te:
            head += (b"Content-Length: ", self._cl, _CRLF)
        elif no_body:
            pass
        elif not ex.http10:
            head.append(_CHUNKED_LINE)
            self._chunk_out = True
            self._until_eof = not self._te
        else:
            self._until_eof = not self._te
            ex.keep_alive = False
        if not ex.keep_alive:
            head.append(_CONN_CLOSE)
        elif ex.http10:
            head.append(_CONN_KEEP)

    def on_body(self, body: bytes) -> None:
        client = self.client
        if client is None:
            return
        if self._chunk_out:
            self._out += (b"%x\r\n" % len(body), body, _CRLF)
        else:
            self._out.append(body)
        self.deadline = _now() + self.router.options.upstream_timeout

    def on_message_complete(self) -> None:
        if self._interim:
            self._reset_response()  # the final response follows
            return
        if self.ex is None or self.ex.status == 101:
            return  # an HTTP-level end of a 101: the upgrade exception follows
        if self._chunk_out:
            self._out.append(_CHUNK_END)
        self._finish(reusable=self._keep_alive)

    def _finish(self, reusable: bool) -> None:
        ex, client = cast(Exchange, self.ex), cast(ClientConnection, self.client)
        self._flush()
        if reusable and ex.request_done and not ex.upgrade:
            self.release()
        else:
            self.ex = self.client = None
            self.deadline = INF
            self.transport.close()
        client.response_done(ex, ex.status)

    def _switch_protocols(self, rest: bytes) -> None:
        client = self.client
        if client is None or self.ex is None or self.ex.status != 101:
            self._broken()
            return
        self.tunnel = True
        self.deadline = INF
        self.ex = None
        if rest:
            client.transport.write(rest)
        client.start_tunnel(self)
