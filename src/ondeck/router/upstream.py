"""The upstream side: one socket to a backend, relaying its answers to a client.

client.py opens an `UpstreamConnection` (or takes an idle one from the slot)
and `attach`es an exchange; the response parser's callbacks write the answer
to the client and hand the socket back to its slot when it can be reused.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, cast

import httptools

from ondeck.router.exchange import PAUSE_BACKPRESSURE, PAUSE_BUFFER, Exchange
from ondeck.router.headers import (
    CHUNK_END,
    CHUNKED_LINE,
    CONN_CLOSE,
    CONN_KEEP,
    CONTINUE,
    CRLF,
    H_CL,
    H_PLAIN,
    H_TE,
    H_UPGRADE,
    RESPONSE_SPECIAL,
    RESPONSE_SPELLED,
    SEP,
    STATUS_LINES,
)
from ondeck.router.pages import Reject

if TYPE_CHECKING:
    from ondeck.router.balance import Slot
    from ondeck.router.client import ClientConnection
    from ondeck.router.proxy import Router

INF = float("inf")
MAX_RESPONSE_HEADER_BYTES = 65536
_now = time.monotonic


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
        self._head_fed = 0
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
                client.transport.write(CHUNK_END)
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
            cast("ClientConnection", self.client).transport.write(data)
            return
        if self.ex is None:
            self.transport.close()  # bytes nobody asked for: never reuse this socket
            return
        try:
            self.parser.feed_data(data)
            if not self._headers_done:
                self._head_fed += len(data)  # httptools holds a header value whole
                if self._head_fed > MAX_RESPONSE_HEADER_BYTES:
                    raise Reject("bad_gateway")
            if self._out:
                self._flush()
        except httptools.HttpParserUpgrade as exc:
            self._flush()
            self._switch_protocols(data[int(exc.args[0]) :])
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, Reject):
                raise
            self._give_up("bad_gateway", "reset")
        except Reject:
            self._give_up("bad_gateway", "reset")
        except httptools.HttpParserError:
            self._give_up("bad_gateway", "reset")

    def _flush(self) -> None:
        """One write (a writev) per upstream read instead of one per parser callback."""
        out, self._out = self._out, []
        if out and self.client is not None:
            self.client.transport.writelines(out)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.set_pause(PAUSE_BACKPRESSURE, True)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.set_pause(PAUSE_BACKPRESSURE, False)

    # -- life in the pool -----------------------------------------------------

    def attach(self, ex: Exchange, client: ClientConnection) -> None:
        """Send `ex`'s request (and any body bytes held meanwhile) on this socket."""
        self.ex, self.client = ex, client
        ex.upstream = self
        self._reset_response()  # instead of an on_message_begin callback per response
        now = ex.upstream_sent = _now()
        self.deadline = now + self.router.options.upstream_timeout
        head = ex.head
        if ex.no_host:
            head = self.slot.with_host(head)
        pending = ex.pending
        if pending:
            ex.pending = None
            client.release_pending(ex)
            self.transport.writelines([head, *pending])
            client.set_pause(PAUSE_BUFFER, False)
        else:
            self.transport.write(head)
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
        """The backend was silent too long while an exchange was in flight: 504."""
        self._give_up("gateway_timeout", "timeout")

    def _give_up(self, page: str, error: str) -> None:
        """Cut this socket (never reused) and fail its exchange with `page`."""
        ex, client = self.ex, self.client
        self.detach_aborted()
        if ex is not None and client is not None:
            ex.upstream = None
            client.fail_exchange(ex, page, error)

    # -- httptools callbacks: the response parser -------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # trailers are dropped
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_RESPONSE_HEADER_BYTES:
            raise Reject("bad_gateway")
        kind = RESPONSE_SPELLED.get(name)
        if kind is None:
            kind = RESPONSE_SPECIAL.get(name.lower(), H_PLAIN)
        if kind == H_PLAIN:
            self._lines += (name, SEP, value, CRLF)
        elif kind == H_CL:
            self._cl = value
        elif kind == H_TE:
            self._te = True
        elif kind == H_UPGRADE:
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
                client.transport.write(CONTINUE)
            return
        ex.status = status
        self._keep_alive = self.parser.should_keep_alive()
        now = _now()
        ex.upstream_time = now - ex.upstream_sent
        self.deadline = now + self.router.options.upstream_timeout
        head = [STATUS_LINES[status]]
        head += self._lines
        if status == 101:
            if not ex.upgrade:
                raise Reject("bad_gateway")
            head += (b"Connection: Upgrade\r\nUpgrade: ", self._upgrade, CRLF)
        else:
            self._framing(ex, status, head)
        if ex.set_cookie:
            head.append(ex.set_cookie)
        if ex.response_extra:
            head.append(ex.response_extra)
        head.append(CRLF)
        self._out.append(b"".join(head))
        ex.response_started = True
        if ex.head_request:
            self._finish(reusable=False)  # llhttp would wait for a body HEAD never has

    def _framing(self, ex: Exchange, status: int, head: list[bytes]) -> None:
        """Content-Length / chunked / read-to-close, and the client Connection header."""
        no_body = ex.head_request or status in (204, 304)
        if self._cl is not None and not self._te:
            head += (b"Content-Length: ", self._cl, CRLF)
        elif no_body:
            pass
        elif not ex.http10:
            head.append(CHUNKED_LINE)
            self._chunk_out = True
            self._until_eof = not self._te
        else:
            self._until_eof = not self._te
            ex.keep_alive = False
        if not ex.keep_alive:
            head.append(CONN_CLOSE)
        elif ex.http10:
            head.append(CONN_KEEP)

    def on_body(self, body: bytes) -> None:
        client, ex = self.client, self.ex
        if client is None or ex is None:
            return
        ex.bytes_out += len(body)
        if self._chunk_out:
            self._out += (b"%x\r\n" % len(body), body, CRLF)
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
            self._out.append(CHUNK_END)
        self._finish(reusable=self._keep_alive)

    def _finish(self, reusable: bool) -> None:
        ex, client = cast(Exchange, self.ex), cast("ClientConnection", self.client)
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
            self._give_up("bad_gateway", "reset")
            return
        self.tunnel = True
        self.deadline = INF
        self.ex = None
        if rest:
            client.transport.write(rest)
        client.start_tunnel(self)
