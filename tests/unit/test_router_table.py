"""The router's pure decisions: which pool (resolve) and which backend (pick).

Randomness is an argument, so weight distributions are checked exactly with a
fixed, evenly spread sequence of `rnd` values.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from ondeck.router.table import (
    Backend,
    Pool,
    Route,
    RouterConfig,
    RouterConfigError,
    choose_backend,
    choose_set,
    client_fraction,
    parse_cookies,
    pick,
    resolve,
)

A = Backend("a", "127.0.0.1", 9001)
B = Backend("b", "127.0.0.1", 9002, weight=300)
C = Backend("c", "127.0.0.1", 9003)
D = Backend("d", "127.0.0.1", 9004)
EVEN = [i / 1000 for i in range(1000)]  # 1000 evenly spread rnd values


def pool(name: str = "prod/web", **kw: Any) -> Pool:
    kw.setdefault("stable", (A,))
    return Pool(name=name, **kw)


def config(*routes: Route, pools: tuple[Pool, ...] = ()) -> RouterConfig:
    by_name = {p.name: p for p in pools}
    for route in routes:
        by_name.setdefault(route.pool, Pool(route.pool, stable=()))
    return RouterConfig(routes=routes, pools=by_name, generation=1)


# -- resolve ---------------------------------------------------------------


def test_longest_prefix_wins() -> None:
    cfg = config(Route(None, "/", "root"), Route(None, "/api", "api"), Route(None, "/api/v2", "v2"))
    assert (resolve(cfg, "x", "/api/v2/users") or pool()).name == "v2"
    assert (resolve(cfg, "x", "/api/v1") or pool()).name == "api"
    assert (resolve(cfg, "x", "/other") or pool()).name == "root"


def test_prefix_matches_whole_segments_only() -> None:
    cfg = config(Route(None, "/api", "api"), Route(None, "/", "root"))
    assert (resolve(cfg, "x", "/api") or pool()).name == "api"
    assert (resolve(cfg, "x", "/apix") or pool()).name == "root"
    with_slash = config(Route(None, "/static/", "static"))
    assert resolve(with_slash, "x", "/static/app.js") is not None
    assert resolve(with_slash, "x", "/static") is None


def test_exact_host_beats_any_host() -> None:
    cfg = config(Route(None, "/api", "generic"), Route("shop.localhost", "/", "shop"))
    assert (resolve(cfg, "shop.localhost", "/api/x") or pool()).name == "shop"
    assert (resolve(cfg, "other.localhost", "/api/x") or pool()).name == "generic"


def test_any_host_route_is_the_fallback_when_host_routes_miss() -> None:
    cfg = config(Route("shop.localhost", "/admin", "admin"), Route(None, "/", "generic"))
    assert (resolve(cfg, "shop.localhost", "/cart") or pool()).name == "generic"


def test_no_route_is_none() -> None:
    assert resolve(config(Route("a.localhost", "/", "p")), "b.localhost", "/") is None
    assert resolve(config(), "any", "/") is None


def test_route_host_is_case_insensitive() -> None:
    cfg = config(Route("Shop.LocalHost", "/", "shop"))
    assert resolve(cfg, "shop.localhost", "/") is not None


# -- pick: within a set ------------------------------------------------------


def test_weights_split_traffic_exactly_on_an_even_sequence() -> None:
    p = pool(stable=(A, B))  # 100 : 300
    counts = Counter((pick(p, {}, {}, "", r)[0] or C).id for r in EVEN)
    assert counts == {"a": 250, "b": 750}


def test_zero_weight_backend_gets_nothing() -> None:
    p = pool(stable=(A, Backend("z", "127.0.0.1", 9009, weight=0)))
    assert {(pick(p, {}, {}, "", r)[0] or C).id for r in EVEN} == {"a"}


def test_least_active_wins_over_weight_order() -> None:
    chosen = choose_backend((A, C), 0.0, {"a": 3, "c": 1})
    assert chosen == C


def test_least_active_is_relative_to_weight() -> None:
    # b has 3x the weight of a: 2 in flight on b (0.0067/unit) beat 1 on a (0.01/unit).
    assert choose_backend((A, B), 0.0, {"a": 1, "b": 2}) == B


def test_exclude_skips_a_failed_backend() -> None:
    assert choose_backend((A, C), 0.0, {}, frozenset({"a"})) == C
    assert choose_backend((A,), 0.0, {}, frozenset({"a"})) is None


def test_empty_set_picks_nothing() -> None:
    assert pick(pool(stable=()), {}, {}, "", 0.5) == (None, "stable")


# -- pick: stable vs canary --------------------------------------------------


def test_canary_weight_is_a_percentage_of_traffic() -> None:
    p = pool(stable=(A,), canary=(C,), canary_weight=10, sticky=False)
    counts = Counter(pick(p, {}, {}, "", r)[1] for r in EVEN)
    assert counts == {"stable": 900, "canary": 100}


def test_rnd_is_rescaled_inside_the_chosen_set() -> None:
    p = pool(stable=(A, B), canary=(C, D), canary_weight=20, sticky=False)
    counts = Counter((pick(p, {}, {}, "", r)[0] or A).id for r in EVEN)
    assert counts == {"c": 100, "d": 100, "a": 200, "b": 600}


def test_canary_weight_zero_and_hundred_ignore_cookies() -> None:
    cookie = pool().cookie_name
    none = pool(canary=(C,), canary_weight=0)
    full = pool(canary=(C,), canary_weight=100)
    assert pick(none, {}, {cookie: "c"}, "1.2.3.4", 0.0)[1] == "stable"
    assert pick(full, {}, {cookie: "s"}, "1.2.3.4", 0.99)[1] == "canary"


def test_header_match_sends_to_canary_whatever_the_weight() -> None:
    p = pool(canary=(C,), canary_weight=0, match_headers={"X-Canary": "always"})
    assert pick(p, {"x-canary": "always"}, {}, "", 0.99) == (C, "canary")
    assert pick(p, {"x-canary": "never"}, {}, "", 0.99) == (A, "stable")


def test_cookie_match_sends_to_canary() -> None:
    p = pool(canary=(C,), canary_weight=0, match_cookies={"canary": "always"})
    assert pick(p, {}, {"canary": "always"}, "", 0.99) == (C, "canary")


def test_match_without_a_canary_set_stays_stable() -> None:
    p = pool(match_headers={"x-canary": "always"})
    assert pick(p, {"x-canary": "always"}, {}, "", 0.0) == (A, "stable")


# -- stickiness ----------------------------------------------------------------


def test_sticky_cookie_keeps_the_assignment() -> None:
    p = pool(canary=(C,), canary_weight=50)
    assert pick(p, {}, {p.cookie_name: "c"}, "", 0.99)[1] == "canary"
    assert pick(p, {}, {p.cookie_name: "s"}, "", 0.0)[1] == "stable"


def test_sticky_without_cookie_uses_the_client_address_hash() -> None:
    p = pool(canary=(C,), canary_weight=50)
    sets = {pick(p, {}, {}, "10.0.0.7", r)[1] for r in EVEN}
    assert len(sets) == 1  # the same client lands in the same set every time
    expected = "canary" if client_fraction(p, "10.0.0.7") < 0.5 else "stable"
    assert sets == {expected}


def test_address_hash_spreads_clients_by_weight() -> None:
    p = pool(canary=(C,), canary_weight=30)
    counts = Counter(pick(p, {}, {}, f"10.0.{i // 256}.{i % 256}", 0.5)[1] for i in range(4000))
    assert 0.25 < counts["canary"] / 4000 < 0.35


def test_first_answer_sets_the_cookie_later_ones_do_not() -> None:
    p = pool(canary=(C,), canary_weight=50)
    assert choose_set(p, {}, {}, "10.0.0.7", 0.1)[2] is True
    assert choose_set(p, {}, {p.cookie_name: "s"}, "10.0.0.7", 0.1)[2] is False


def test_not_sticky_ignores_the_cookie() -> None:
    p = pool(canary=(C,), canary_weight=50, sticky=False)
    assert pick(p, {}, {p.cookie_name: "s"}, "", 0.1)[1] == "canary"
    assert choose_set(p, {}, {}, "", 0.1)[2] is False


def test_cookie_name_is_per_pool() -> None:
    assert pool("prod/web").cookie_name != pool("staging/web").cookie_name
    assert pool("prod/web").cookie_name.startswith("ondeck_")


def test_parse_cookies() -> None:
    assert parse_cookies('a=1; b="2" ;c=3; a=9; junk') == {"a": "1", "b": "2", "c": "3"}


# -- JSON and validation --------------------------------------------------------


def full_config() -> RouterConfig:
    web = Pool(
        "prod/web",
        stable=(A, B),
        canary=(C,),
        canary_weight=25,
        match_headers={"X-Canary": "always"},
        match_cookies={"canary": "always"},
        sticky=False,
    )
    api = Pool("prod/api", stable=(D,), maintenance="Back at 10:00")
    routes = (Route(None, "/", "prod/web"), Route("api.localhost", "/v1", "prod/api"))
    return RouterConfig(routes=routes, pools={p.name: p for p in (web, api)}, generation=7)


def test_json_round_trip() -> None:
    cfg = full_config()
    text = json.dumps(cfg.to_json())
    assert RouterConfig.from_json(json.loads(text)) == cfg


def test_json_defaults_are_filled() -> None:
    raw = {
        "routes": [{"host": None, "path": "/", "pool": "p"}],
        "pools": {"p": {"stable": [{"id": "a", "host": "127.0.0.1", "port": 1}]}},
    }
    cfg = RouterConfig.from_json(raw)
    assert cfg.generation == 0
    assert cfg.pools["p"].stable[0].weight == 100
    assert cfg.pools["p"].sticky is True
    assert cfg.pools["p"].maintenance is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["routes"].append({"host": None, "path": "/", "pool": "nope"}), "unknown pool"),
        (lambda c: c["routes"].append({"host": None, "path": "api", "pool": "p"}), "must start"),
        (lambda c: c["routes"].append(dict(c["routes"][0])), "declared twice"),
        (lambda c: c["routes"].append({"host": "bad host", "path": "/", "pool": "p"}), "host"),
        (lambda c: c["pools"]["p"].update(canary_weight=101), "canary_weight"),
        (lambda c: c["pools"]["p"]["stable"][0].update(port=0), "port"),
        (lambda c: c["pools"]["p"]["stable"][0].update(port="80"), "integer"),
        (lambda c: c["pools"]["p"]["stable"][0].update(weight=-1), "weight"),
        (lambda c: c["pools"]["p"]["stable"].append(dict(c["pools"]["p"]["stable"][0])), "twice"),
        (lambda c: c["pools"]["p"].update(match_headers={"bad header": "x"}), "header name"),
        (lambda c: c.update(generation=-1), "generation"),
        (lambda c: c["pools"]["p"]["stable"][0].pop("host"), "KeyError"),
        (lambda c: c.update(routes="nope"), "invalid"),
    ],
)
def test_invalid_configs_are_refused(mutate: Any, message: str) -> None:
    raw: dict[str, Any] = {
        "generation": 1,
        "routes": [{"host": None, "path": "/", "pool": "p"}],
        "pools": {"p": {"stable": [{"id": "a", "host": "127.0.0.1", "port": 9001}]}},
    }
    mutate(raw)
    with pytest.raises(RouterConfigError, match=message):
        RouterConfig.from_json(raw)


def test_backend_ids_are_unique_across_pools() -> None:
    with pytest.raises(RouterConfigError, match="two pools"):
        RouterConfig(
            routes=(),
            pools={"x": Pool("x", stable=(A,)), "y": Pool("y", stable=(A,))},
        )


def test_pool_key_must_be_its_name() -> None:
    with pytest.raises(RouterConfigError, match="differs"):
        RouterConfig(routes=(), pools={"x": Pool("y", stable=(A,))})


def test_backends_lists_every_backend_with_its_set() -> None:
    found = full_config().backends()
    assert {k: v[1] for k, v in found.items()} == {
        "a": "stable",
        "b": "stable",
        "c": "canary",
        "d": "stable",
    }
