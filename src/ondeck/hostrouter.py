"""One router for every app of a host (`ondeck up --host-file`): their routes merged.

Each app's `Controller` gets an `AppRouter`, the `RouterControl` it would get
alone; what it pushes is its part, and the host's `RouterLink` is sent all the
parts merged by `merge_routes`: pools named `APP/ENV/SERVICE`, and a host +
path claimed by two apps served by the app that held it first (the other is
refused: `route_guard` fails its sync before it gets that far). Called by
apphost.py (which builds one `AppRouter` per app).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ondeck.environment import Environment, PrepareStep
from ondeck.errors import UserError
from ondeck.rollout.strategies import EnvTraffic, router_config
from ondeck.router.table import Backend, Pool, Route, RouterConfig, RouterConfigError
from ondeck.spec.routes import Claim, collisions, service_claims
from ondeck.state.desired import Desired
from ondeck.store import InstanceRecord
from ondeck.traffic import RouterLink

log = logging.getLogger("ondeck")

RouteKey = tuple[str | None, str]


@dataclass(frozen=True)
class Merged:
    """The host's routing, who holds each route, and the routes refused per app."""

    config: RouterConfig
    holders: Mapping[RouteKey, str]
    refused: Mapping[str, tuple[str, ...]]


def _key(route: Route) -> RouteKey:
    return (route.host.lower().rstrip(".") if route.host else None, route.path)


def merge_routes(
    parts: Mapping[str, RouterConfig], holders: Mapping[RouteKey, str] | None = None
) -> Merged:
    """The apps' router configs as one: a route claimed twice goes to its holder (else the
    first app in `parts`); the other app's claim is refused, with both names. Pure."""
    held = holders or {}
    claims = [(app, route) for app, config in parts.items() for route in config.routes]
    claims.sort(key=lambda claim: held.get(_key(claim[1])) != claim[0])  # holders first
    routes: dict[RouteKey, tuple[str, Route]] = {}
    refused: dict[str, list[str]] = {}
    for app, route in claims:
        key = _key(route)
        if key in routes and routes[key][0] != app:
            holder = routes[key][0]
            where = f"host {route.host or '*'} path {route.path}"
            refused.setdefault(app, []).append(
                f"app {app!r} ({app}/{route.pool}) and app {holder!r} both route {where}: "
                f"{holder!r} serves it; give each app its own host or path"
            )
            continue
        routes.setdefault(key, (app, dataclasses.replace(route, pool=f"{app}/{route.pool}")))
    pools: dict[str, Pool] = {
        f"{app}/{name}": _owned(app, pool) for app, config in parts.items()
        for name, pool in config.pools.items()
    }  # fmt: skip
    config = RouterConfig(tuple(route for _, route in routes.values()), pools)
    return Merged(
        config,
        {key: app for key, (app, _) in routes.items()},
        {app: tuple(texts) for app, texts in refused.items()},
    )


def _owned(app: str, pool: Pool) -> Pool:
    """`pool` of `app` in the host's config: its name and its backends' ids prefixed with
    `APP/` (two apps' instances may have the same id; the router wants each id once)."""

    def owned(backends: tuple[Backend, ...]) -> tuple[Backend, ...]:
        return tuple(dataclasses.replace(b, id=f"{app}/{b.id}") for b in backends)

    return dataclasses.replace(
        pool, name=f"{app}/{pool.name}", stable=owned(pool.stable), canary=owned(pool.canary)
    )


def app_claims(app: str, desired: Desired) -> list[Claim]:
    """The routes one environment of `app` claims, owned by `APP/ENV/SERVICE`."""
    services = ((s.name, s.spec) for s in desired.services)
    return service_claims(services, f"{app}/{desired.env}")


def foreign_collisions(theirs: Iterable[Claim], mine: Iterable[Claim]) -> list[str]:
    """Why `mine` cannot be served: each host + path another app already routes. Pure."""
    found = collisions([*theirs, *mine])
    return [
        f"app {hit.second.owner.split('/')[0]!r} ({hit.second.owner}) and app "
        f"{hit.first.owner.split('/')[0]!r} ({hit.first.owner}) both route {hit.first.where}: "
        "one router serves one of them only; give each app its own host or path"
        for hit in found
        if hit.first.owner.split("/")[0] != hit.second.owner.split("/")[0]
    ]


class HostRouter:
    """The one router of a host and the part each app asked for."""

    def __init__(self, link: RouterLink) -> None:
        self.link = link
        self.parts: dict[str, list[EnvTraffic]] = {}
        self.merged = Merged(RouterConfig((), {}), {}, {})
        self.good: dict[str, RouterConfig] = {}  # each app's last part the router could serve
        self.broken: dict[str, str] = {}  # why an app's newest part could not be served

    def refusals(self, app: str, env: str) -> list[str]:
        """Why routes of `app`'s `env` are not served (another app held them first)."""
        mark = f"({app}/{env}/"
        return [text for text in self.merged.refused.get(app, ()) if mark in text]

    def served(self) -> list[Claim]:
        """What the router serves now, owned by `APP/ENV/SERVICE` (its pool)."""
        return [Claim(r.pool, r.host, r.path) for r in self.merged.config.routes]

    def broken_of(self, app: str) -> tuple[str, ...]:
        """Why `app`'s newest routing is not served (empty when it is)."""
        return (self.broken[app],) if app in self.broken else ()

    def view(self, app: str) -> AppRouter:
        return AppRouter(self, app)

    async def push(self) -> None:
        parts = {app: self._part(app, envs) for app, envs in self.parts.items()}
        merged = merge_routes(parts, self.merged.holders)
        for app, texts in merged.refused.items():
            if texts != self.merged.refused.get(app):
                log.error("[%s] routes refused: %s", app, "; ".join(texts))
        self.merged = merged
        await self.link.send(merged.config)

    def _part(self, app: str, envs: Iterable[EnvTraffic]) -> RouterConfig:
        """`app`'s routing; one the router could not serve (a desired state an older ondeck
        let through) is that app's error, and its last good part is kept: the other apps'
        routing goes on updating."""
        try:
            self.good[app] = router_config(envs, 0)
        except RouterConfigError as err:
            why = f"routing of app {app!r} not updated, the router keeps its routes: {err}"
            if self.broken.get(app) != why:
                log.error("[%s] %s; fix the spec", app, why)
            self.broken[app] = why
        else:
            self.broken.pop(app, None)
        return self.good.get(app, RouterConfig((), {}))

    async def forget(self, app: str) -> None:
        """`app` left the host: its routes go (the others' stay as they are)."""
        self.parts.pop(app, None)
        self.good.pop(app, None)
        self.broken.pop(app, None)
        await self.push()


class AppRouter:
    """What one app's controller sees of the host's router (a `RouterControl`)."""

    def __init__(self, host: HostRouter, app: str) -> None:
        self.host, self.app = host, app

    @property
    def error(self) -> str | None:
        refused = [*self.host.merged.refused.get(self.app, ()), *self.host.broken_of(self.app)]
        return self.host.link.error or ("; ".join(refused) if refused else None)

    async def ensure(self) -> bool:
        return await self.host.link.ensure()

    async def push(self, envs: Iterable[EnvTraffic]) -> None:
        self.host.parts[self.app] = list(envs)
        await self.host.push()

    async def drain(self, rec: InstanceRecord, envs: Iterable[EnvTraffic]) -> None:
        await self.push(envs)
        await self.host.link.drained(f"{self.app}/{rec.id}", rec.drain)

    async def stop(self) -> None:
        """This app is down: its routes leave the router, which goes on serving the others."""
        await self.host.forget(self.app)

    async def stats(self) -> dict[str, Any]:
        """This app's backends, by instance id (the router knows them as `APP/ID`)."""
        prefix = f"{self.app}/"
        backends = await self.host.link.stats()
        return {k.removeprefix(prefix): v for k, v in backends.items() if k.startswith(prefix)}

    async def metrics(self) -> str:
        return await self.host.link.metrics()


def route_guard(
    app: str,
    others: Callable[[], Iterable[Desired]],
    served: Callable[[], Iterable[Claim]] = list,
) -> PrepareStep:
    """A prepare step of every environment of `app`: a revision is refused (its sync fails,
    nothing running is touched) when it is named otherwise, asks for what a host of many apps
    cannot do yet, or routes a host + path another app claims (`others()`: their desired) or
    serves (`served()`: the router's routes, also those of an app being restarted)."""

    async def check(env: Environment, desired: Desired) -> None:
        if desired.app != app:
            raise UserError(
                f"ondeck.yaml says `app: {desired.app}` but the host file runs it as {app!r}: "
                "rename one of them so they match"
            )
        if desired.tls is not None:
            raise UserError(
                "tls: not supported by `ondeck up --host-file` yet; run this app on its own "
                "(`ondeck up REPO --listen-tls ...`) or remove `tls:`"
            )
        theirs = [c for d in others() if d.app != app for c in app_claims(d.app, d)]
        theirs += [c for c in served() if not c.owner.startswith(f"{app}/")]
        problems = foreign_collisions(theirs, app_claims(app, desired))
        if problems:
            raise UserError("; ".join(dict.fromkeys(problems)))

    return check
