"""Limits and timeouts of the proxy, and what a listener tells its connections.

server.py builds both from the command line; every connection reads them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    # Bytes read for one request head: 431 beyond. httptools buffers a header
    # value whole before a callback sees it, so this is counted on the reads.
    max_head_bytes: int = 65536
    # Bytes all connections together may hold in request heads and request
    # bodies buffered meanwhile; beyond, the connection holding the most is cut.
    max_held_total: int = 64 << 20
    # When open sockets near the open-files limit, idle keep-alive connections
    # are closed after this instead of `keepalive_timeout`.
    pressure_keepalive: float = 1.0
    max_idle_per_backend: int = 256
    removed_keep: float = 300.0  # a removed, drained backend's counters stay visible this long
    # Peers (addresses or CIDRs) whose X-Forwarded-For/-Proto are kept, e.g. a
    # TLS terminator in front of the router; anyone else's are replaced.
    trusted_proxies: tuple[str, ...] = ()
    access_log: bool = True  # one JSON line per request in STATE_DIR/logs/access.log


def parse_trusted(values: tuple[str, ...] | list[str]) -> tuple[Network, ...]:
    """`--trusted-proxy` values as networks; ValueError with a hint for a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"--trusted-proxy {value!r}: not an IP address or CIDR"
                " (e.g. 10.0.0.0/8, 192.168.1.10 or fd00::/8)"
            ) from None
    return tuple(networks)


@dataclass(frozen=True)
class Listener:
    """The socket a client was accepted on, as the exchange needs to know it.

    `scheme` is what the upstream hears in X-Forwarded-Proto: "http" for a
    plain listener, "https" for one whose transport terminates TLS.
    """

    scheme: str = "http"
    proto_line: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "proto_line", b"X-Forwarded-Proto: %b\r\n" % self.scheme.encode())


HTTP = Listener("http")
HTTPS = Listener("https")
