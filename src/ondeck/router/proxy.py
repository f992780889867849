"""The data plane's shared state: an HTTP/1.1 reverse proxy on asyncio and httptools.

`Router` holds what every connection shares: the options, the `Balancer`
(served config and per-backend slots), the open connections and the router's
own answer counts. The proxy's other concepts live beside it: client.py (one
accepted socket and its exchanges), upstream.py (one socket to a backend),
balance.py (slots and choices), headers.py (header vocabulary), pages.py (the
router's own answers). server.py wires them to listeners; control.py swaps the
config and reads `stats`.
"""

from __future__ import annotations

import ipaddress
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ondeck.router.accesslog import AccessLog
from ondeck.router.balance import Balancer, Slot
from ondeck.router.headers import HostKeys
from ondeck.router.options import ProxyOptions, parse_trusted
from ondeck.router.table import RouterConfig
from ondeck.router.tls import Challenges, TlsState

if TYPE_CHECKING:
    from ondeck.router.client import ClientConnection
    from ondeck.router.upstream import UpstreamConnection

_now = time.monotonic
FD_PRESSURE = 0.75  # share of the open-files limit in sockets that counts as running short


def open_files_limit() -> int:
    """This process's soft limit on open descriptors."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def _held(client: ClientConnection) -> int:
    return client.held


def _within(peer: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False  # a Unix socket or no peer name
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
    return any(address in network for network in networks)


class Router:
    """Everything connections share: the config, the slots, the open sockets."""

    def __init__(self, config: RouterConfig, options: ProxyOptions | None = None) -> None:
        self.options = options or ProxyOptions()
        self.balancer = Balancer(config)
        self.host_keys = HostKeys()
        self.access_log: AccessLog | None = None  # set by server.py before serving
        self.local: dict[int, int] = {}
        self.clients: set[ClientConnection] = set()
        self.upstreams: set[UpstreamConnection] = set()
        self.held = 0  # bytes all clients hold in request heads and buffered bodies
        self.shed_count = 0  # connections cut to keep `held` within budget
        self.pressure_closed = 0  # idle connections closed early for lack of descriptors
        self.fd_pressure = int(open_files_limit() * FD_PRESSURE)
        self.trusted = parse_trusted(self.options.trusted_proxies)
        self._trust: dict[str, bool] = {}
        self.started = time.time()
        self.challenges = Challenges()  # HTTP-01 answers, served on the plain listener
        self.tls: TlsState | None = None  # certificates, when a TLS listener serves them
        self.tls_port = 0  # that listener's port (redirects name it unless it is 443)
        self._started_mono = _now()

    @property
    def config(self) -> RouterConfig:
        return self.balancer.config

    @property
    def slots(self) -> dict[str, Slot]:
        return self.balancer.slots

    def apply(self, config: RouterConfig) -> None:
        """Serve `config` from now on: removed backends take no new request."""
        self.balancer.apply(config)

    def tls_state(self, state_dir: Path) -> TlsState:
        """The certificates kept in `state_dir` (held even before a TLS listener serves them)."""
        if self.tls is None:
            self.tls = TlsState(state_dir)
            self.tls.load()
        return self.tls

    def trusts(self, peer: str) -> bool:
        """Whether `peer` is a trusted proxy (its X-Forwarded-* are kept); cached."""
        if not self.trusted:
            return False
        known = self._trust.get(peer)
        if known is None:
            known = self._trust[peer] = _within(peer, self.trusted)
            if len(self._trust) > 4096:
                self._trust.clear()
        return known

    def count_local(self, status: int) -> None:
        self.local[status] = self.local.get(status, 0) + 1

    def shed(self) -> None:
        """Over the memory budget: cut the connection holding the most, until within it.

        The abuser holds the most (a flood of header bytes, a body for a backend
        that does not connect); everyone else's requests go on.
        """
        budget = self.options.max_held_total
        while self.held > budget:
            victim = max(self.clients, key=_held, default=None)
            if victim is None or victim.held <= 0:
                return
            self.shed_count += 1
            victim.shed()

    def sweep(self) -> None:
        """Enforce deadlines, expire idle upstream connections, forget drained slots."""
        now = _now()
        for client in [c for c in self.clients if c.deadline < now]:
            client.timed_out()
        for upstream in [u for u in self.upstreams if u.deadline < now]:
            upstream.timed_out()
        idle_timeout = self.options.upstream_idle_timeout
        if len(self.clients) + len(self.upstreams) >= self.fd_pressure:
            self._close_idle_clients(now)
            idle_timeout = min(idle_timeout, self.options.pressure_keepalive)
        self.balancer.sweep(idle_timeout, self.options.removed_keep)
        if self.access_log is not None:
            self.access_log.flush()

    def _close_idle_clients(self, now: float) -> None:
        """Descriptors run short: idle keep-alive connections go after `pressure_keepalive`."""
        # An idle connection's deadline is `keepalive_timeout` after it became idle.
        cutoff = now + self.options.keepalive_timeout - self.options.pressure_keepalive
        for client in [c for c in self.clients if c.deadline < cutoff and c.idle()]:
            self.pressure_closed += 1
            client.transport.close()

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
            "held_bytes": self.held,
            "shed": self.shed_count,
            "pressure_closed": self.pressure_closed,
            "local": {str(k): v for k, v in sorted(self.local.items())},
            "backends": backends,
        }

    def close_all(self) -> None:
        self.balancer.close_idle()
        for client in list(self.clients):
            client.transport.close()
        for upstream in list(self.upstreams):
            upstream.transport.close()
