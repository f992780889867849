"""The router's configuration and its two decisions: which pool, which backend.

Pure data and functions, no I/O: the controller builds a `RouterConfig`, sends
it as JSON over the control socket, and the proxy calls `resolve` then `pick`
for every request. Invalid values raise `RouterConfigError` at construction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ondeck.errors import UserError
from ondeck.spec.httpnames import is_header_name, is_route_path, route_host_key

SetName = Literal["stable", "canary"]

_NO_ACTIVE: Mapping[str, int] = {}


class RouterConfigError(UserError):
    """A router configuration that cannot be served; the running one is kept."""


def _problem(message: str) -> RouterConfigError:
    return RouterConfigError(f"invalid router config: {message}")


@dataclass(frozen=True)
class Backend:
    """One instance that can take requests: an address and a relative weight.

    `version` and `release` (the release fingerprint) only label the access log.
    """

    id: str
    host: str
    port: int
    weight: int = 100
    version: str = ""
    release: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            raise _problem("a backend needs a non-empty id")
        if not self.host:
            raise _problem(f"backend {self.id}: empty host")
        if not 0 < self.port < 65536:
            raise _problem(f"backend {self.id}: port {self.port} is not in 1..65535")
        if not 0 <= self.weight <= 10_000:
            raise _problem(f"backend {self.id}: weight {self.weight} is not in 0..10000")


def _cookie_name(pool_name: str) -> str:
    return "ondeck_" + hashlib.sha1(pool_name.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Pool:
    """The backends of one `ENV/SERVICE`: a stable set and an optional canary set.

    `canary_weight` percent of clients go to the canary set; a request matching
    any of `match_headers` / `match_cookies` always does (A/B). With `sticky`, a
    client keeps its set: by cookie `cookie_name` (`s` or `c`), or when it sends
    none, by a hash of its address so a client without cookies stays put too.
    With `maintenance` set (the message), the router answers every request
    itself with 503 and that message; the backends are kept but get nothing.
    """

    name: str
    stable: tuple[Backend, ...]
    canary: tuple[Backend, ...] = ()
    canary_weight: int = 0
    match_headers: Mapping[str, str] = field(default_factory=dict)
    match_cookies: Mapping[str, str] = field(default_factory=dict)
    sticky: bool = True
    maintenance: str | None = None
    cookie_name: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise _problem("a pool needs a non-empty name")
        if not 0 <= self.canary_weight <= 100:
            raise _problem(f"pool {self.name}: canary_weight {self.canary_weight} not in 0..100")
        for header in self.match_headers:
            if not is_header_name(header):
                raise _problem(f"pool {self.name}: {header!r} is not a header name")
        ids = [b.id for b in (*self.stable, *self.canary)]
        if len(set(ids)) != len(ids):
            raise _problem(f"pool {self.name}: a backend id appears twice")
        object.__setattr__(self, "stable", tuple(self.stable))
        object.__setattr__(self, "canary", tuple(self.canary))
        lowered = {k.lower(): v for k, v in self.match_headers.items()}
        object.__setattr__(self, "match_headers", lowered)
        object.__setattr__(self, "match_cookies", dict(self.match_cookies))
        object.__setattr__(self, "cookie_name", _cookie_name(self.name))


@dataclass(frozen=True)
class Route:
    """Requests for `host` (None: any host) under path prefix `path` go to `pool`."""

    host: str | None
    path: str
    pool: str

    def __post_init__(self) -> None:
        if self.host is not None:
            host = route_host_key(self.host)
            if host is None:
                raise _problem(f"route host {self.host!r} of {self.pool} is not a host name")
            object.__setattr__(self, "host", host)
        if not is_route_path(self.path):
            raise _problem(
                f"route path {self.path!r} of {self.pool} must start with / and hold no ? # or space"
            )


# A compiled route list: (prefix, pool) longest prefix first.
_Prefixes = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RouterConfig:
    """Everything the router serves; `generation` is the controller's counter."""

    routes: tuple[Route, ...]
    pools: Mapping[str, Pool]
    generation: int = 0
    _by_host: Mapping[str | None, _Prefixes] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", tuple(self.routes))
        object.__setattr__(self, "pools", dict(self.pools))
        _validate(self)
        object.__setattr__(self, "_by_host", _compile(self.routes))

    def backends(self) -> dict[str, tuple[Pool, SetName, Backend]]:
        """Every backend by id, with its pool and set."""
        found: dict[str, tuple[Pool, SetName, Backend]] = {}
        for pool in self.pools.values():
            for backend in pool.stable:
                found[backend.id] = (pool, "stable", backend)
            for backend in pool.canary:
                found[backend.id] = (pool, "canary", backend)
        return found

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; `from_json` reads it back to an equal config."""
        return {
            "generation": self.generation,
            "routes": [{"host": r.host, "path": r.path, "pool": r.pool} for r in self.routes],
            "pools": {name: _pool_to_json(pool) for name, pool in self.pools.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> RouterConfig:
        """Parse and validate; any problem raises `RouterConfigError`."""
        try:
            return _config_from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _problem(f"{type(exc).__name__}: {exc}") from exc


def _validate(config: RouterConfig) -> None:
    if config.generation < 0:
        raise _problem("generation must be >= 0")
    seen_ids: set[str] = set()
    for name, pool in config.pools.items():
        if name != pool.name:
            raise _problem(f"pool key {name!r} differs from its name {pool.name!r}")
        for backend in (*pool.stable, *pool.canary):
            if backend.id in seen_ids:
                raise _problem(f"backend id {backend.id!r} is in two pools")
            seen_ids.add(backend.id)
    seen_routes: set[tuple[str | None, str]] = set()
    for route in config.routes:
        if route.pool not in config.pools:
            raise _problem(
                f"route {route.host or '*'}{route.path} names unknown pool {route.pool!r}"
            )
        if (route.host, route.path) in seen_routes:
            raise _problem(f"route {route.host or '*'}{route.path} is declared twice")
        seen_routes.add((route.host, route.path))


def _compile(routes: Sequence[Route]) -> dict[str | None, _Prefixes]:
    by_host: dict[str | None, list[tuple[str, str]]] = {}
    for route in routes:
        by_host.setdefault(route.host, []).append((route.path, route.pool))
    return {
        host: tuple(sorted(entries, key=lambda e: len(e[0]), reverse=True))
        for host, entries in by_host.items()
    }


def _pool_to_json(pool: Pool) -> dict[str, Any]:
    return {
        "stable": [_backend_to_json(b) for b in pool.stable],
        "canary": [_backend_to_json(b) for b in pool.canary],
        "canary_weight": pool.canary_weight,
        "match_headers": dict(pool.match_headers),
        "match_cookies": dict(pool.match_cookies),
        "sticky": pool.sticky,
        "maintenance": pool.maintenance,
    }


def _backend_to_json(backend: Backend) -> dict[str, Any]:
    return {
        "id": backend.id,
        "host": backend.host,
        "port": backend.port,
        "weight": backend.weight,
        "version": backend.version,
        "release": backend.release,
    }


def _config_from_json(data: Mapping[str, Any]) -> RouterConfig:
    pools = {name: _pool_from_json(name, raw) for name, raw in dict(data["pools"]).items()}
    routes = tuple(
        Route(host=_opt_str(r.get("host")), path=_str(r["path"]), pool=_str(r["pool"]))
        for r in data["routes"]
    )
    return RouterConfig(routes=routes, pools=pools, generation=_int(data.get("generation", 0)))


def _pool_from_json(name: str, raw: Mapping[str, Any]) -> Pool:
    return Pool(
        name=_str(name),
        stable=tuple(_backend_from_json(b) for b in raw.get("stable", ())),
        canary=tuple(_backend_from_json(b) for b in raw.get("canary", ())),
        canary_weight=_int(raw.get("canary_weight", 0)),
        match_headers=_str_map(raw.get("match_headers", {})),
        match_cookies=_str_map(raw.get("match_cookies", {})),
        sticky=bool(raw.get("sticky", True)),
        maintenance=_opt_str(raw.get("maintenance")),
    )


def _backend_from_json(raw: Mapping[str, Any]) -> Backend:
    return Backend(
        id=_str(raw["id"]),
        host=_str(raw["host"]),
        port=_int(raw["port"]),
        weight=_int(raw.get("weight", 100)),
        version=_str(raw.get("version", "")),
        release=_str(raw.get("release", "")),
    )


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _str_map(value: Any) -> dict[str, str]:
    return {_str(k): _str(v) for k, v in dict(value).items()}


def _path_under(path: str, prefix: str) -> bool:
    """Segment-aware prefix: `/api` covers `/api` and `/api/x`, not `/apix`."""
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or prefix.endswith("/") or path[len(prefix)] == "/"


def _first_match(prefixes: _Prefixes, path: str) -> str | None:
    for prefix, pool in prefixes:
        if _path_under(path, prefix):
            return pool
    return None


def resolve(config: RouterConfig, host: str, path: str) -> Pool | None:
    """The pool serving `host` + `path`, or None when no route matches.

    Routes for the exact (lower-case, port-less) host are tried first, longest
    prefix winning; routes without a host are consulted only when none of those
    match, as nginx picks a server block before a location.
    """
    by_host = config._by_host
    exact = by_host.get(host)
    name = _first_match(exact, path) if exact else None
    if name is None:
        any_host = by_host.get(None)
        name = _first_match(any_host, path) if any_host else None
    return None if name is None else config.pools[name]


def client_fraction(pool: Pool, client_key: str) -> float:
    """A stable number in [0, 1) for this client and pool (sticky without cookie).

    A real hash, not a checksum: neighbouring addresses must land anywhere
    (crc32's top bits barely move between 127.0.1.1 and 127.0.2.1).
    """
    digest = hashlib.blake2b(f"{pool.name}|{client_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _matches(pool: Pool, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
    for name, value in pool.match_headers.items():
        if headers.get(name) == value:
            return True
    return any(cookies.get(name) == value for name, value in pool.match_cookies.items())


def choose_set(
    pool: Pool,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    client_key: str,
    rnd: float,
) -> tuple[SetName, float, bool]:
    """(set, a fresh uniform number for within the set, whether to set the cookie)."""
    weight = pool.canary_weight
    if not pool.canary:
        return "stable", rnd, False
    if _matches(pool, headers, cookies):
        return "canary", rnd, False
    if weight in (0, 100):
        return ("stable" if weight == 0 else "canary"), rnd, False
    if pool.sticky:
        held = cookies.get(pool.cookie_name)
        if held in ("s", "c"):
            return ("stable" if held == "s" else "canary"), rnd, False
        if client_key:
            cut = client_fraction(pool, client_key) * 100 < weight
            return ("canary" if cut else "stable"), rnd, True
    share = weight / 100
    if rnd < share:
        return "canary", rnd / share, pool.sticky
    return "stable", (rnd - share) / (1 - share), pool.sticky


def choose_backend(
    backends: Sequence[Backend],
    rnd: float,
    active: Mapping[str, int],
    exclude: frozenset[str] = frozenset(),
) -> Backend | None:
    """Weighted least-active: fewest in-flight requests per unit of weight wins.

    Ties (always the case on an idle router) are broken by weighted random with
    `rnd`, so an idle router spreads traffic in proportion to the weights.
    """
    best: list[Backend] = []
    best_score = 0.0
    for backend in backends:
        if backend.weight <= 0 or backend.id in exclude:
            continue
        score = active.get(backend.id, 0) / backend.weight
        if not best or score < best_score:
            best, best_score = [backend], score
        elif score == best_score:
            best.append(backend)
    if len(best) <= 1:
        return best[0] if best else None
    point = rnd * sum(b.weight for b in best)
    for backend in best:
        point -= backend.weight
        if point < 0:
            return backend
    return best[-1]


def pick(
    pool: Pool,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    client_key: str,
    rnd: float,
    active: Mapping[str, int] = _NO_ACTIVE,
    exclude: frozenset[str] = frozenset(),
) -> tuple[Backend | None, SetName]:
    """The backend for one request and the set it came from.

    `rnd` is uniform in [0, 1) (the proxy passes `random.random()`, tests a
    fixed sequence); `active` is in-flight requests per backend id; `exclude`
    lists backends that just failed to connect (the one retry).
    """
    set_name, within, _ = choose_set(pool, headers, cookies, client_key, rnd)
    backends = pool.canary if set_name == "canary" else pool.stable
    return choose_backend(backends, within, active, exclude), set_name


def parse_cookies(header: str) -> dict[str, str]:
    """`a=1; b=2` -> {"a": "1", "b": "2"}; the first of a repeated name wins."""
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


EMPTY_CONFIG = RouterConfig(routes=(), pools={}, generation=0)
