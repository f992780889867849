"""A route or match header the spec accepts is one the router serves, and the reverse.

The two used to disagree (`host: shop.example:8080` validated, then the router's
config refused it inside the controller's push); both now ask `spec/httpnames.py`.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ondeck.router.table import Pool, Route, RouterConfigError
from ondeck.spec.model import Match
from ondeck.spec.model import Route as SpecRoute

HOSTS = [
    "shop.example",
    "Shop.Example",
    "shop.example.",
    "a_b.localhost",
    "127.0.0.1",
    "[::1]",
    "x",
]
BAD_HOSTS = ["shop.example:8080", "*.shop.example", "a b", "https://shop.example", "", ".", "a.."]
PATHS = ["/", "/api", "/a-b/c.d", "/%20x"]
BAD_PATHS = ["api", "/a b", "/search?q=1", "/#top", ""]
HEADERS = ["X-Canary", "x_ab", "Beta!"]
BAD_HEADERS = ["X Canary", "X-Canary:", "", "é"]


def spec_accepts(**route: str) -> bool:
    try:
        SpecRoute.model_validate(route)
    except ValidationError:
        return False
    return True


def router_accepts(host: str | None = None, path: str = "/") -> bool:
    try:
        Route(host, path, "prod/web")
    except RouterConfigError:
        return False
    return True


@pytest.mark.parametrize("host", HOSTS + BAD_HOSTS)
def test_hosts(host: str) -> None:
    assert spec_accepts(host=host) == router_accepts(host=host) == (host in HOSTS)


@pytest.mark.parametrize("path", PATHS + BAD_PATHS)
def test_paths(path: str) -> None:
    assert spec_accepts(path=path) == router_accepts(path=path) == (path in PATHS)


@pytest.mark.parametrize("name", HEADERS + BAD_HEADERS)
def test_match_header_names(name: str) -> None:
    try:
        Match.model_validate({"header": {name: "always"}})
        spec = True
    except ValidationError:
        spec = False
    try:
        Pool("prod/web", (), match_headers={name: "always"})
        router = True
    except RouterConfigError:
        router = False
    assert spec == router == (name in HEADERS)


def test_the_router_matches_a_route_host_as_it_reads_a_request_host() -> None:
    """Lower case, without the trailing dot of a fully qualified name (router/headers.py)."""
    assert Route("Shop.Example.", "/", "prod/web").host == "shop.example"
