"""The client side of the proxy: one accepted socket, its requests and answers.

server.py creates a `ClientConnection` per accepted socket (plain TCP, or a TLS
transport: the protocol sees only decrypted bytes) with the `Listener` it came
from. It parses requests with httptools, checks them strictly, picks a backend
through the router's `Balancer`, sends the request head through an
`UpstreamConnection` and answers in order, pipelining included.

Strictness (tested in tests/integration/test_router_hostile.py): llhttp runs in
its strict default mode, so bare LF, obs-fold, whitespace before a colon, bad
tokens, CL+TE and duplicate Content-Length are parse errors; on top we require
`Transfer-Encoding` to be exactly `chunked` (once, HTTP/1.1 only), a single
Host, and HTTP/1.0 or 1.1. Any rejection answers once and closes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from ondeck.router.balance import Slot
from ondeck.router.exchange import (
    BUFFER_LIMIT,
    PAUSE_BACKPRESSURE,
    PAUSE_BUFFER,
    PAUSE_QUEUE,
    Exchange,
)
from ondeck.router.headers import (
    CHUNK_END,
    CHUNKED_LINE,
    CONNECTION_TOKENS_KNOWN,
    CRLF,
    H_CL,
    H_CONN,
    H_COOKIE,
    H_HOST,
    H_PLAIN,
    H_TE,
    H_UPGRADE,
    H_XFF,
    H_XFP,
    REQUEST_SPECIAL,
    REQUEST_SPELLED,
    SEP,
)
from ondeck.router.options import HTTP, Listener
from ondeck.router.pages import PAGES, Reject, maintenance_answer
from ondeck.router.tls import CHALLENGE_PREFIX, hsts_line, redirect_answer
from ondeck.router.upstream import UpstreamConnection

if TYPE_CHECKING:
    from ondeck.router.proxy import Router

INF = float("inf")
_now = time.monotonic


class ClientConnection(asyncio.Protocol):
    """One accepted client socket: parse requests, dispatch, relay answers."""

    def __init__(self, router: Router, listener: Listener = HTTP) -> None:
        self.router = router
        self.options = router.options
        self.balancer = router.balancer
        self.host_keys = router.host_keys
        self.access_log = router.access_log
        self.listener = listener
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
        self.held = 0  # bytes this connection holds in a request head or buffered body
        self._head_fed = 0  # bytes of the current, unfinished request head read so far
        self._read_used = 0  # bytes of the current read that finished heads and bodies took
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
        self._xfp = b""
        self._cookie = b""
        self._upgrade = b""
        self._headers_done = False

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self.peer_bytes = self.peer.encode("latin-1")
        self.trusted = self.router.trusts(self.peer)
        self.router.clients.add(self)
        self.deadline = _now() + self.options.keepalive_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.router.clients.discard(self)
        self.deadline = INF
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.transport.close()
        ex = self.active
        self.queue.clear()
        if ex is not None:
            self._abandon(ex, "client")
        self._release_held()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        if self.tunnel_pending is not None:
            self._hold_tunnel_bytes(data)
            return
        if self.closing:
            return
        self._read_used = 0
        try:
            self.parser.feed_data(data)
            if not (self._headers_done or self.closing):
                self._count_head(len(data) - self._read_used)
        except httptools.HttpParserUpgrade as exc:
            self.tunnel_pending = []
            self._hold_tunnel_bytes(data[int(exc.args[0]) :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, Reject):
                raise
            self._reject(cause.page)
        except httptools.HttpParserError:
            if not self.closing:
                self._reject("bad_request")

    def _count_head(self, size: int) -> None:
        """A read ended inside a request head: bound what the parser holds for it.

        llhttp hands httptools a header value in pieces and httptools joins them
        before `on_header` sees it, so the limit is enforced on the bytes read:
        the read minus what finished bodies and heads in it took (`_read_used`).
        """
        if size <= 0:
            return
        self._head_fed += size
        if self._head_fed > self.options.max_head_bytes:
            self._reject("headers_too_large")
        else:
            self._hold(size)

    def _hold(self, size: int) -> None:
        """Count `size` bytes held (negative: released) here and in the router's budget."""
        if size < 0:
            size = max(size, -self.held)
        elif self.transport.is_closing():
            return  # being cut: what it still parses is dropped with it
        self.held += size
        router = self.router
        router.held += size
        if size > 0 and router.held > self.options.max_held_total:
            router.shed()

    def _release_held(self) -> None:
        if self.held:
            self._hold(-self.held)

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
        """Stop or restart reading the client for `reason` (see exchange.PAUSE_*)."""
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
            raise Reject("uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a trailer of a chunked body: not forwarded
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if (
            self._header_count > self.options.max_headers
            or self._header_bytes > self.options.max_header_bytes
        ):
            raise Reject("headers_too_large")
        kind = REQUEST_SPELLED.get(name)
        if kind is None:
            kind = REQUEST_SPECIAL.get(name.lower(), H_PLAIN)
        if kind == H_PLAIN:
            self._lines += (name, SEP, value, CRLF)
        elif kind == H_HOST:
            self._host = value
            self._host_count += 1
        elif kind == H_CL:
            self._cl = value
            self._cl_count += 1
        elif kind == H_TE:
            self._te = value
            self._te_count += 1
        elif kind == H_CONN:
            self._connection += b"," + value.lower()
        elif kind == H_XFF:
            self._xff = value if not self._xff else self._xff + b", " + value
        elif kind == H_COOKIE:
            self._cookie = value if not self._cookie else self._cookie + b"; " + value
            self._lines += (name, SEP, value, CRLF)
        elif kind == H_UPGRADE:
            self._upgrade = value
        elif kind == H_XFP:
            self._xfp = value if not self._xfp else self._xfp + b", " + value

    def on_headers_complete(self) -> None:
        self._headers_done = True
        ex = cast(Exchange, self.parsing)
        parser = self.parser
        ex.method = method = parser.get_method()
        # This head's size as written canonically; what earlier reads held of it is released.
        size = len(method) + len(self._url) + 13 + self._header_bytes + 4 * self._header_count
        fed = self._head_fed
        if fed:
            self._hold(-fed)
            self._head_fed = 0
            size = max(0, size - fed)
        self._read_used += size
        version = parser.get_http_version()
        if version != "1.1":
            if version != "1.0":
                raise Reject("bad_request")
            ex.http10 = True
        if method == b"CONNECT":
            raise Reject("method")
        ex.head_request = method == b"HEAD"
        host = self._check_host(ex)
        framing = self._check_framing(ex)
        ex.keep_alive = parser.should_keep_alive()
        ex.upgrade = parser.should_upgrade()
        if ex.upgrade and ex.has_body:
            raise Reject("bad_request")
        if not ex.keep_alive or ex.upgrade:
            ex.keep_alive = False
            self.closing = True  # nothing after this request is read as HTTP
        target, authority = self._target(ex)
        if authority is not None:
            host = authority  # absolute-form: its authority replaces Host (RFC 9112 3.2.2)
        if self.listener is HTTP:
            if target.startswith(CHALLENGE_PREFIX):
                ex.local_answer = self.router.challenges.response(target)
            elif self.router.tls_port:
                self._maybe_redirect(ex, target)
        elif self.router.tls is not None:
            served = self.router.tls.lookup(ex.host_key)
            if served is not None and served.hsts:
                ex.response_extra = hsts_line(served.hsts)
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
            self.set_pause(PAUSE_QUEUE, True)

    def _maybe_redirect(self, ex: Exchange, target: bytes) -> None:
        """Plain HTTP to a host served over HTTPS with `redirect`: answer 308 to https://."""
        tls = self.router.tls
        served = tls.lookup(ex.host_key) if tls is not None and ex.host_key else None
        if served is not None and served.redirect:
            head = redirect_answer(ex.host_key, target, self.router.tls_port)
            ex.local_answer = (308, head, b"")

    def _upstream_head(self, ex: Exchange, line: bytes, host: bytes, framing: bytes) -> bytes:
        """The request head sent upstream: kept headers, X-Forwarded-*, our framing.

        X-Forwarded-For and -Proto from a trusted proxy are kept (the peer is
        appended to the former); from anyone else they are replaced.
        """
        xff = self.peer_bytes
        proto = self.listener.proto_line
        if self.trusted:
            if self._xff:
                xff = self._xff + b", " + xff
            if self._xfp:
                proto = b"X-Forwarded-Proto: " + self._xfp + CRLF
        parts = [line, b" HTTP/1.1\r\n"]
        if host:
            parts += (b"Host: ", host, CRLF, b"X-Forwarded-Host: ", host, CRLF)
        else:
            ex.no_host = True  # HTTP/1.0 or an empty Host: the backend's address is sent
        parts += ex.header_lines
        parts += (b"X-Forwarded-For: ", xff, CRLF, proto)
        if framing:
            parts.append(framing)
        if ex.upgrade:
            parts += (b"Connection: Upgrade\r\nUpgrade: ", self._upgrade, CRLF)
        parts.append(CRLF)
        return b"".join(parts)

    def on_body(self, body: bytes) -> None:
        ex = cast(Exchange, self.parsing)
        ex.received += len(body)
        self._read_used += len(body)
        if ex.received > self.options.max_body:
            raise Reject("too_large")
        upstream = ex.upstream
        if ex.chunked:
            if upstream is not None:
                upstream.transport.writelines((b"%x\r\n" % len(body), body, CRLF))
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
                ex.upstream.transport.write(CHUNK_END)
            elif not ex.response_done:
                self._buffer(ex, CHUNK_END)
        if ex is self.active:
            self.deadline = INF
            if ex.response_done:
                self._advance()

    # -- request checks (raise Reject) ----------------------------------------

    def _check_host(self, ex: Exchange) -> bytes:
        host = self._host
        if self._host_count > 1 or (host is None and not ex.http10):
            raise Reject("bad_request")
        if host is None:
            return b""
        key = self.host_keys.key(host)
        if key is None:
            raise Reject("bad_request")
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
                raise Reject("bad_request")
            ex.chunked = ex.has_body = True
            return CHUNKED_LINE
        if self._cl_count:
            value = cast(bytes, self._cl).strip()
            if self._cl_count > 1 or not value.isdigit():
                raise Reject("bad_request")
            length = int(value)
            if length > self.options.max_body:
                raise Reject("too_large")
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
                raise Reject("bad_request") from None
            path = parsed.path or b"/"
            ex.path = path.decode("latin-1")
            authority = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
            key = self.host_keys.key(authority) if authority else None
            if key is None:
                raise Reject("bad_request")
            ex.host_key = key
            return path + (b"?" + parsed.query if parsed.query else b""), authority
        raise Reject("bad_request")

    def _only_known_tokens(self) -> bool:
        return all(t.strip() in CONNECTION_TOKENS_KNOWN for t in self._connection.split(b","))

    def _drop_connection_named(self, lines: list[bytes]) -> list[bytes]:
        """Remove headers that `Connection` names (they are hop-by-hop by declaration)."""
        named = {t.strip() for t in self._connection.split(b",")} - CONNECTION_TOKENS_KNOWN
        kept: list[bytes] = []
        for i in range(0, len(lines), 4):
            if lines[i].lower() not in named:
                kept += lines[i : i + 4]
        return kept

    # -- dispatch and answers ---------------------------------------------------

    def _dispatch(self, ex: Exchange) -> None:
        """Make `ex` the active exchange: pick a backend, send it the request."""
        self.active = ex
        if ex.local_answer is not None:
            self._answer(ex, *ex.local_answer)
            return
        chosen = self.balancer.choose(ex, self.peer)
        if not isinstance(chosen, Slot):
            if chosen is None:
                self._local(ex, "no_route")
                return
            ex.pool_name = chosen.name
            if chosen.maintenance is not None:
                accept = ex.header_map().get("accept", "")
                self._answer(ex, 503, *maintenance_answer(chosen.maintenance, accept))
            else:
                self._local(ex, "no_backend")
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
        retry = None if ex.retried else self.balancer.retry_slot(ex, slot)
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
        self._hold(len(data))
        if ex.pending_size > BUFFER_LIMIT:
            self.set_pause(PAUSE_BUFFER, True)

    def release_pending(self, ex: Exchange) -> None:
        """`ex`'s buffered body bytes went upstream: they no longer count as held."""
        self._hold(-ex.pending_size)
        ex.pending_size = 0

    def _hold_tunnel_bytes(self, data: bytes) -> None:
        pending = cast(list[bytes], self.tunnel_pending)
        if data:
            pending.append(data)
        if sum(len(d) for d in pending) > BUFFER_LIMIT:
            self.set_pause(PAUSE_BUFFER, True)

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
        self.set_pause(PAUSE_BUFFER | PAUSE_QUEUE, False)

    def _local(self, ex: Exchange, key: str) -> None:
        """Answer `ex` with one of the router's own pages."""
        page = PAGES[key]
        close = not ex.keep_alive or (ex.has_body and not ex.request_done)
        head = page.head_close if close else page.head_keep
        self.transport.write(head if ex.head_request else head + page.body)
        ex.bytes_out = 0 if ex.head_request else len(page.body)
        if close:
            ex.keep_alive = False
        ex.response_started = True
        self.response_done(ex, page.status)

    def _answer(self, ex: Exchange, status: int, head: bytes, body: bytes) -> None:
        """Answer `ex` with a response the router made (ACME challenge, HTTPS redirect)."""
        close = not ex.keep_alive or (ex.has_body and not ex.request_done)
        head += b"Connection: close\r\n\r\n" if close else b"\r\n"
        self.transport.write(head if ex.head_request else head + body)
        ex.bytes_out = 0 if ex.head_request else len(body)
        if close:
            ex.keep_alive = False
        ex.response_started = True
        self.response_done(ex, status)

    def response_done(self, ex: Exchange, status: int) -> None:
        """The last response byte of `ex` is written (or handed to the transport)."""
        ex.response_done = True
        ex.upstream = None
        self._end(ex, status, None)
        self.set_pause(PAUSE_BACKPRESSURE, False)
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
        """Count (and log) the end of `ex` once: answered with `status`, or 0 if cut."""
        if ex.ended:
            return
        ex.ended = True
        if ex.pending_size:  # body bytes held for an upstream that never took them
            self._hold(-ex.pending_size)
            ex.pending_size = 0
        slot, ex.slot = ex.slot, None
        duration = _now() - ex.started
        log = self.access_log
        if slot is None:
            if status:
                self.router.count_local(status)
            if log is not None:
                log.records.append(
                    (ex.started, ex.pool_name, None, ex.method, ex.path, status,
                     ex.bytes_out, duration, -1.0, error)
                )  # fmt: skip
            return
        stats = slot.stats
        stats.active -= 1
        if error is not None:
            stats.errors[error] += 1
        if status:
            stats.observe(status, duration)
        if log is not None:
            log.records.append(
                (ex.started, slot.pool, slot.backend, ex.method, ex.path, status,
                 ex.bytes_out, duration, ex.upstream_time, error)
            )  # fmt: skip

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
                        self.set_pause(PAUSE_QUEUE, False)
                    continue
                if self.error_after is not None:
                    self._reject(self.error_after)
                    return
                if self.closing:
                    self.transport.close()  # the client half-closed: nothing more comes
                    return
                if self.parsing is None:
                    self.deadline = _now() + self.options.keepalive_timeout
                self.set_pause(PAUSE_QUEUE, False)
        finally:
            self._advancing = False

    # -- giving up ----------------------------------------------------------------

    def _abandon(self, ex: Exchange, error: str | None) -> None:
        """Give up on `ex` unanswered: cut its upstream socket, release its slot.

        `error` is counted on the backend ("client" when the client is at fault
        or gone); None when the upstream side has counted its own failure.
        """
        if ex is self.active:
            self.active = None
        upstream, ex.upstream = ex.upstream, None
        if upstream is not None:
            upstream.detach_aborted()
        self._end(ex, 0, error)

    def _close_with(self, key: str) -> None:
        """Answer with the router's page `key` and close the connection."""
        self._release_held()
        page = PAGES[key]
        self.router.count_local(page.status)
        self.transport.write(page.head_close + page.body)
        self.transport.close()

    def _reject(self, key: str) -> None:
        """A request is unacceptable: answer `key` once earlier answers are out, close."""
        self.closing = True
        parsing, self.parsing = self.parsing, None
        if parsing is not None and parsing in self.queue:
            self.queue.remove(parsing)  # a request that went bad mid-body is not sent
        ex = self.active
        if ex is not None and parsing is not ex:
            self.error_after = key  # a pipelined request is bad; earlier ones finish first
            self.set_pause(PAUSE_QUEUE, True)
            return
        if ex is not None:  # the active request itself went bad mid-body
            self._abandon(ex, "client")  # the client's fault: not the backend's 4xx
            if ex.response_started:
                self.transport.abort()
                return
        self._close_with(key)

    def shed(self) -> None:
        """Cut by the router: this connection holds the most while the budget is exceeded."""
        self.closing = True
        self._release_held()
        ex = self.active
        if ex is not None:
            self._abandon(ex, "client")
        self.transport.abort()

    def idle(self) -> bool:
        """Between requests on a kept-alive connection (or before the first one)."""
        return (
            self.active is None
            and self.parsing is None
            and self.tunnel is None
            and self.tunnel_pending is None
        )

    def timed_out(self) -> None:
        """The client was silent too long: idle, slow headers, or a stalled body."""
        self.deadline = INF
        ex = self.active
        if ex is not None and not ex.request_done and not ex.response_started:
            self._abandon(ex, "client")
            self._close_with("timeout")
        elif ex is None:
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
            self._abandon(ex, None)
            self.transport.abort()
            return
        self._local(ex, key)
