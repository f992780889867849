"""Balancing: the backends of the served config as slots, and the choice of one.

`Balancer` keeps one `Slot` per backend (its counters and idle upstream
connections) across config changes and picks the slot for each request with
table.py's pure choices. The client side (client.py) calls `choose` and
`retry_slot`; proxy.py's `Router` calls `apply` and `sweep`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from ondeck.router.exchange import Exchange
    from ondeck.router.upstream import UpstreamConnection

_now = time.monotonic
_random = random.random


class Slot:
    """One backend as the proxy sees it: its counters and idle connections."""

    __slots__ = (
        "backend",
        "host_line",
        "idle",
        "labels",
        "pool",
        "removed",
        "removed_at",
        "set_name",
        "stats",
    )

    def __init__(self, backend: Backend, pool: str, set_name: SetName, stats: BackendStats) -> None:
        self.backend = backend
        self.pool = pool
        self.set_name: str = set_name
        self.stats = stats
        self.idle: list[UpstreamConnection] = []
        self.removed = False
        self.removed_at = 0.0
        self.labels = {"pool": pool, "backend": backend.id, "set": set_name}
        host = f"[{backend.host}]" if ":" in backend.host else backend.host
        self.host_line = f"Host: {host}:{backend.port}\r\n".encode()

    def with_host(self, head: bytes) -> bytes:
        """`head` with a Host line naming this backend (for a request that had none)."""
        end = head.index(b"\r\n") + 2
        return head[:end] + self.host_line + head[end:]

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.transport.close()

    def expire_idle(self, oldest: float) -> None:
        """Close the idle connections unused since before `oldest`."""
        if self.idle and self.idle[0].idle_since < oldest:
            keep = [c for c in self.idle if c.idle_since >= oldest]
            for conn in self.idle:
                if conn.idle_since < oldest:
                    conn.transport.close()
            self.idle = keep


class ActiveCounts(Mapping[str, int]):
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


class Balancer:
    """The served config's backends as slots, and the per-request choice of one."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.slots: dict[str, Slot] = {}
        self.active = ActiveCounts(self.slots)
        self._cookies: dict[tuple[str, str], bytes] = {}
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

    def choose(self, ex: Exchange, client_ip: str) -> Slot | Pool | None:
        """The slot for `ex`; a Pool in maintenance or without a usable backend; None: no route."""
        pool = resolve(self.config, ex.host_key, ex.path)
        if pool is None or pool.maintenance is not None:
            return pool  # no route, or one the router answers itself
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

    def sweep(self, idle_timeout: float, removed_keep: float) -> None:
        """Expire idle upstream connections; forget removed slots drained long ago."""
        now = _now()
        oldest = now - idle_timeout
        for slot in self.slots.values():
            slot.expire_idle(oldest)
        forget = now - removed_keep
        for backend_id in [
            k
            for k, s in self.slots.items()
            if s.removed and s.stats.active == 0 and s.removed_at < forget
        ]:
            del self.slots[backend_id]

    def close_idle(self) -> None:
        for slot in self.slots.values():
            slot.close_idle()
