"""From plans to the router: which instances serve each route, and with what split.

Pure: the controller hands over each environment's desired state, live
instances and the traffic split its plan chose; out comes the `RouterConfig`
the router should serve. An instance serves only once ready and stops serving
as soon as it is stopping (so it drains before it is stopped).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ondeck.router.table import Backend, Pool, Route, RouterConfig
from ondeck.spec.httpnames import route_host_key
from ondeck.state.desired import Desired, DesiredService
from ondeck.state.live import LiveInstance, Phase
from ondeck.state.rollout import Traffic

log = logging.getLogger("ondeck")


@dataclass(frozen=True)
class EnvTraffic:
    """One environment as the router needs it."""

    desired: Desired
    instances: tuple[LiveInstance, ...]
    traffic: Mapping[str, Traffic]


def pool_name(env: str, service: str) -> str:
    return f"{env}/{service}"


def router_config(envs: Iterable[EnvTraffic], generation: int) -> RouterConfig:
    routes: dict[tuple[str | None, str], Route] = {}
    pools: dict[str, Pool] = {}
    for env in envs:
        for svc in env.desired.services:
            if not svc.spec.routes:
                continue
            name = pool_name(env.desired.env, svc.name)
            serving = [i for i in env.instances if i.service == svc.name]
            pool = _pool(name, svc, serving, env.traffic.get(svc.name, Traffic(None)))
            if svc.spec.maintenance is not None:
                pool = dataclasses.replace(pool, maintenance=svc.spec.maintenance.message)
            pools[name] = pool
            for route in svc.spec.routes:
                key = (route_host_key(route.host) if route.host else None, route.path)
                if key in routes:
                    log.warning(
                        "route %s%s of %s already served by %s",
                        route.host or "*",
                        route.path,
                        name,
                        routes[key].pool,
                    )
                    continue
                routes[key] = Route(route.host, route.path, name)
    return RouterConfig(tuple(routes.values()), pools, generation)


def _pool(name: str, svc: DesiredService, instances: list[LiveInstance], traffic: Traffic) -> Pool:
    ready = [i for i in instances if i.phase is Phase.RUNNING and i.ready and i.port]
    if traffic.canary is None:
        stable = (
            ready
            if traffic.stable is None
            else [i for i in ready if i.fingerprint == traffic.stable]
        )
        return Pool(name, _backends(stable or ready, svc))
    stable = [i for i in ready if i.fingerprint == traffic.stable]
    canary = [i for i in ready if i.fingerprint == traffic.canary]
    if not stable:  # nothing left of the old version: everyone gets the new one
        return Pool(name, _backends(canary, svc))
    match = svc.spec.rollout.match
    return Pool(
        name,
        _backends(stable, svc),
        _backends(canary, svc),
        canary_weight=traffic.weight if canary else 0,
        match_headers=dict(match.header) if match else {},
        match_cookies=dict(match.cookie) if match else {},
    )


def _backends(instances: list[LiveInstance], svc: DesiredService) -> tuple[Backend, ...]:
    # The version is known for the desired release; older ones are named by fingerprint.
    return tuple(
        Backend(
            i.id,
            "127.0.0.1",
            i.port,
            version=(svc.spec.version or "") if i.fingerprint == svc.fingerprint else "",
            release=i.fingerprint,
        )
        for i in sorted(instances, key=lambda i: i.id)
        if i.port
    )


def same_routing(a: RouterConfig, b: RouterConfig) -> bool:
    """Equal but for the generation counter."""
    left, right = a.to_json(), b.to_json()
    left.pop("generation", None)
    right.pop("generation", None)
    return left == right
