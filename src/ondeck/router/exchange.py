"""One request/response exchange, the state both sides of the proxy share.

client.py creates an `Exchange` per parsed request head and answers it;
upstream.py relays the backend's answer into it. Plain attributes in
`__slots__`: it is on the hot path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ondeck.router.balance import Slot
    from ondeck.router.upstream import UpstreamConnection

# Why the client socket is not being read (a bit set; read again when empty).
PAUSE_BACKPRESSURE = 1  # the upstream cannot take more bytes
PAUSE_QUEUE = 2  # a pipelined request waits for the previous answer
PAUSE_BUFFER = 4  # bytes held while the upstream connection opens

BUFFER_LIMIT = 65536  # request bytes held while an upstream connection opens


class Exchange:
    """One request from headers to the last response byte (plain attributes: hot path)."""

    __slots__ = (
        "bytes_out",
        "chunked",
        "cookie",
        "ended",
        "has_body",
        "head",
        "head_request",
        "header_lines",
        "host_key",
        "http10",
        "keep_alive",
        "local_answer",
        "method",
        "no_host",
        "path",
        "pending",
        "pending_size",
        "pool_name",
        "received",
        "request_done",
        "response_done",
        "response_extra",
        "response_started",
        "retried",
        "set_cookie",
        "set_name",
        "slot",
        "started",
        "status",
        "upgrade",
        "upstream",
        "upstream_sent",
        "upstream_time",
    )

    def __init__(self) -> None:
        self.head = b""
        self.method = b""
        self.bytes_out = 0  # response body bytes relayed (access log)
        self.ended = False  # counted and logged once
        self.pool_name = ""  # the pool of an answer made without a backend (access log)
        self.upstream_sent = 0.0  # when the head went upstream
        self.upstream_time = -1.0  # head sent -> response head received; -1: none
        self.header_lines: list[bytes] = []
        self.host_key = ""
        self.path = "/"
        self.cookie = b""
        self.chunked = False
        self.has_body = False
        self.head_request = False
        self.http10 = False
        self.keep_alive = True
        self.local_answer: tuple[int, bytes, bytes] | None = None  # (status, head, body)
        self.response_extra = b""  # header lines the router adds to the answer (HSTS)
        self.no_host = False
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
