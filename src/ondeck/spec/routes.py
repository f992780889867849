"""Routes that collide: two owners claiming one host and path on the same router.

The router serves one pool per (host, path); a second claimant used to be
dropped with a log line while status said both were Synced and Healthy.
`load.validate` checks the environments of one spec file (all rendered, as
one router may serve them all); the controller checks every app and
environment it runs and reports a collision in status. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ondeck.spec.model import Service, Spec


@dataclass(frozen=True)
class Claim:
    """`owner` (e.g. `shop/production/web`) routes `host` (None: any host) + `path`."""

    owner: str
    host: str | None
    path: str
    index: int = 0  # the route's position in its service's `routes`

    @property
    def key(self) -> tuple[str | None, str]:
        return (self.host.lower().rstrip(".") if self.host else None, self.path)

    @property
    def where(self) -> str:
        return f"host {self.host or '*'} path {self.path}"


@dataclass(frozen=True)
class Collision:
    """`second` claims what `first` already routes; the router serves only `first`."""

    first: Claim
    second: Claim

    @property
    def message(self) -> str:
        return (
            f"{self.second.owner} and {self.first.owner} both route {self.first.where}: "
            "one router serves one of them only; give each its own host or path"
        )


def claims(spec: Spec, prefix: str) -> list[Claim]:
    """Every route of `spec`, owned by `PREFIX/SERVICE`."""
    return service_claims(spec.services.items(), prefix)


def service_claims(services: Iterable[tuple[str, Service]], prefix: str) -> list[Claim]:
    """Every route of `services` (name, service), owned by `PREFIX/NAME`, in order."""
    return [
        Claim(f"{prefix}/{name}", route.host, route.path, i)
        for name, service in services
        for i, route in enumerate(service.routes)
    ]


def collisions(all_claims: Iterable[Claim]) -> list[Collision]:
    """Each claim on a (host, path) already claimed by another owner, in the order given."""
    first: dict[tuple[str | None, str], Claim] = {}
    found: list[Collision] = []
    for claim in all_claims:
        holder = first.setdefault(claim.key, claim)
        if holder is not claim and holder.owner != claim.owner:
            found.append(Collision(holder, claim))
    return found
