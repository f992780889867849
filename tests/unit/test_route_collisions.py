"""Two services or environments routing one host and path are refused, naming both.

On 2026-12-01 two environments both routing `path: /` with no host shared one
router: the first `--env` took every request while status said both were
Synced and Healthy.
"""

from __future__ import annotations

from ondeck.spec.load import validate
from ondeck.spec.routes import Claim, collisions

SPEC = """\
app: shop
services:
  web:
    command: [python3, web.py]
    port: true
    routes: [{path: /}]
environments:
  staging: {}
  production: {}
"""


def test_two_environments_inheriting_one_route_collide_at_the_second() -> None:
    [problem] = validate(SPEC)
    assert (problem.line, problem.col) == (6, 14)  # the route both inherit
    assert problem.message.startswith("production/web and staging/web both route host * path /")
    assert problem.hint == "in environment 'production'"


def test_giving_each_environment_its_own_host_resolves_it() -> None:
    spec = SPEC.replace(
        "  staging: {}\n", "  staging:\n    services: {web: {routes: [{host: staging.shop}]}}\n"
    )
    assert validate(spec) == []


def test_two_services_of_the_base_collide() -> None:
    spec = (
        "app: shop\nservices:\n"
        "  web: {command: [a], port: true, routes: [{host: Shop.Example, path: /}]}\n"
        "  api: {command: [a], port: true, routes: [{path: /api}, {host: shop.example.}]}\n"
    )
    [problem] = validate(spec)
    assert (problem.line, problem.col) == (4, 58)
    assert "default/api and default/web both route host Shop.Example path /" in problem.message


def test_an_overlay_route_is_located_in_the_overlay() -> None:
    spec = SPEC.replace(
        "  production: {}\n",
        "  production:\n    services: {web: {routes: [{path: /x}, {path: /}]}}\n",
    ).replace("  staging: {}\n", "  staging:\n    services: {web: {routes: [{path: /}]}}\n")
    [problem] = validate(spec)
    assert (problem.line, problem.col) == (11, 43)
    assert problem.message.startswith("environments.production: production/web and staging/web")


def test_collisions_are_per_host_and_path_and_ignore_one_owner_twice() -> None:
    found = collisions(
        [
            Claim("a/web", None, "/"),
            Claim("a/web", None, "/"),  # one service listing a route twice is not a collision
            Claim("b/web", "x.example", "/"),  # a host is not "any host"
            Claim("b/api", None, "/api"),
            Claim("c/web", None, "/"),
        ]
    )
    assert [(c.first.owner, c.second.owner) for c in found] == [("a/web", "c/web")]
