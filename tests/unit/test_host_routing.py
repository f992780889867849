"""One router for many apps: their routes merged, a host + path claimed twice refused.

`ondeck up --host-file` sends the router every app's routes at once; pools of two
apps with the same environment and service names must not overwrite each other,
and a route another app already serves stays with it (data in, config out).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ondeck.apphost import app_options
from ondeck.environment import Options
from ondeck.errors import UserError
from ondeck.hostrouter import (
    HostRouter,
    app_claims,
    foreign_collisions,
    merge_routes,
    route_guard,
)
from ondeck.router.table import Backend, Pool, Route, RouterConfig, resolve
from ondeck.spec.host import HostApp
from ondeck.spec.load import parse, render_spec
from ondeck.spec.routes import Claim
from ondeck.state.desired import Desired, render
from ondeck.traffic import RouterLink


def _config(env: str, *routes: tuple[str | None, str], port: int = 1000) -> RouterConfig:
    pool = Pool(f"{env}/web", (Backend(f"web-{port}", "127.0.0.1", port),))
    return RouterConfig(tuple(Route(h, p, pool.name) for h, p in routes), {pool.name: pool})


def test_pools_of_two_apps_are_kept_apart_and_routed_by_host() -> None:
    merged = merge_routes(
        {
            "shop": _config("staging", ("staging.shop.example", "/"), port=1001),
            "blog": _config("staging", ("staging.blog.example", "/"), port=2001),
        }
    )
    assert set(merged.config.pools) == {"shop/staging/web", "blog/staging/web"}
    shop = resolve(merged.config, "staging.shop.example", "/")
    blog = resolve(merged.config, "staging.blog.example", "/cart")
    assert shop is not None and shop.stable[0].port == 1001
    assert blog is not None and blog.stable[0].port == 2001
    assert merged.refused == {}


def test_two_apps_may_have_instances_of_the_same_id() -> None:
    """Instance ids are per app (`web-<fingerprint[:4]>-<seq>`); the router wants each once."""
    merged = merge_routes(
        {
            "shop": _config("production", ("shop.example", "/"), port=1000),
            "blog": _config("production", ("blog.example", "/"), port=1000),
        }
    )
    ids = [b.id for p in merged.config.pools.values() for b in p.stable]
    assert sorted(ids) == ["blog/web-1000", "shop/web-1000"]


def test_a_route_two_apps_claim_stays_with_its_holder_and_names_both() -> None:
    first = merge_routes({"shop": _config("production", ("shop.example", "/"), port=1)})
    # blog comes first in the host file now, but shop already serves the route
    second = merge_routes(
        {
            "blog": _config("production", ("Shop.Example", "/"), port=2),
            "shop": _config("production", ("shop.example", "/"), port=1),
        },
        first.holders,
    )
    served = resolve(second.config, "shop.example", "/")
    assert served is not None and served.name == "shop/production/web"
    assert second.refused == {
        "blog": (
            "app 'blog' (blog/production/web) and app 'shop' both route host shop.example "
            "path /: 'shop' serves it; "
            "give each app its own host or path",
        )
    }


def test_a_refused_route_is_told_to_the_environment_that_asked_for_it(tmp_path: Path) -> None:
    host = HostRouter(RouterLink(tmp_path, "127.0.0.1:1"))  # never started: nothing is sent
    host.merged = merge_routes(
        {
            "shop": _config("production", ("shop.example", "/"), port=1),
            "blog": _config("staging", ("shop.example", "/"), port=2),
        }
    )
    [why] = host.refusals("blog", "staging")
    assert "app 'blog' (blog/staging/web) and app 'shop'" in why
    assert host.refusals("blog", "production") == [] and host.refusals("shop", "production") == []


def test_a_route_without_host_is_the_fallback_of_every_app() -> None:
    merged = merge_routes(
        {
            "shop": _config("production", ("shop.example", "/"), port=1),
            "blog": _config("production", (None, "/"), port=2),
        }
    )
    shop, other = resolve(merged.config, "shop.example", "/"), resolve(merged.config, "x", "/")
    assert shop is not None and shop.name == "shop/production/web"
    assert other is not None and other.name == "blog/production/web"


SPEC = """\
app: {app}
services:
  web:
    command: [python3, web.py]
    port: true
environments:
  staging:
    services: {{web: {{routes: [{{host: {staging}}}]}}}}
  production:
    services: {{web: {{routes: [{{host: {production}}}]}}}}
"""


def _desired(app: str, env: str, staging: str, production: str, **extra: str) -> Desired:
    text = SPEC.format(app=app, staging=staging, production=production)
    for key, value in extra.items():
        text += f"{key}: {value}\n"
    spec = render_spec(parse(text), env)
    return render(spec, env, "a" * 40, "c" * 40)


def test_a_revision_routing_what_another_app_serves_is_refused_naming_both() -> None:
    shop = _desired("shop", "production", "staging.shop.example", "shop.example")
    blog = _desired("blog", "production", "staging.blog.example", "shop.example")
    [problem] = foreign_collisions(app_claims("shop", shop), app_claims("blog", blog))
    assert problem.startswith(
        "app 'blog' (blog/production/web) and app 'shop' (shop/production/web) "
        "both route host shop.example path /"
    )
    # the same app's other environment is not "another app"
    staging = _desired("shop", "staging", "shop.example", "x.example")
    assert foreign_collisions(app_claims("shop", shop), app_claims("shop", staging)) == []


def _guard(app: str, desired: Desired, others: list[Desired]) -> None:
    check = route_guard(app, lambda: others)
    asyncio.run(check(None, desired))  # type: ignore[arg-type]  # the guard reads no env


def test_the_guard_refuses_collisions_misnamed_apps_and_tls() -> None:
    shop = _desired("shop", "production", "staging.shop.example", "shop.example")
    blog = _desired("blog", "staging", "shop.example", "blog.example")
    with pytest.raises(UserError, match=r"app 'blog' .* and app 'shop' .* both route host shop"):
        _guard("blog", blog, [shop])
    _guard("blog", _desired("blog", "staging", "s.blog", "blog.example"), [shop])  # no error
    with pytest.raises(UserError, match="`app: shop` but the host file runs it as 'store'"):
        _guard("store", shop, [])
    tls = _desired("blog", "staging", "s.blog", "blog", tls="{acme: {email: a@b.example}}")
    with pytest.raises(UserError, match="tls: not supported by `ondeck up --host-file` yet"):
        _guard("blog", tls, [])


def test_the_guard_also_refuses_what_the_router_serves_for_an_app_being_restarted() -> None:
    """An app whose controller is being replaced has no desired state for a moment; the
    routes the router serves for it still belong to it."""
    blog = _desired("blog", "staging", "shop.example", "blog.example")
    served = [Claim("shop/production/web", "shop.example", "/")]
    check = route_guard("blog", lambda: [], lambda: served)
    with pytest.raises(UserError, match=r"app 'blog' .* and app 'shop' .* both route host shop"):
        asyncio.run(check(None, blog))  # type: ignore[arg-type]  # the guard reads no env
    mine = [Claim("blog/staging/web", "shop.example", "/")]  # its own routes: no conflict
    asyncio.run(route_guard("blog", lambda: [], lambda: mine)(None, blog))  # type: ignore[arg-type]


def test_an_app_runs_in_its_own_state_dir_with_its_own_source(tmp_path: Path) -> None:
    (tmp_path / "repos" / "blog").mkdir(parents=True)
    base = Options(repo="host.yaml", state_dir=tmp_path / "state", poll=3.0, envs=("x",))
    entry = HostApp(repo="repos/blog", branch="main", path="deploy", envs=["staging"])
    opts = app_options(base, "blog", entry, tmp_path)
    assert opts.state_dir == tmp_path / "state" / "apps" / "blog"
    assert opts.repo == str(tmp_path / "repos" / "blog")  # relative to the host file
    assert (opts.branch, opts.path, opts.envs, opts.poll) == ("main", "deploy", ("staging",), 3.0)
    url = app_options(base, "shop", HostApp(repo="https://git.example/shop.git"), tmp_path)
    assert (url.repo, url.branch, url.envs) == ("https://git.example/shop.git", None, ())
