"""Routing the router cannot serve never stops the controller, and what runs goes on serving.

Validation refuses such routes now, but a desired state an older ondeck let through
(`host: shop.example:8080`) used to raise out of `RouterLink.push`, through
`Controller.step`, and kill `ondeck up`, again at every restart; with `--host-file`
one app's routes stopped every app's. The specs here are built without validation
(`model_copy`) to stand for that stored state. Real router, real sockets.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_router_proxy import Upstream, get, run, running_router

from ondeck.hostrouter import HostRouter
from ondeck.rollout.strategies import EnvTraffic
from ondeck.router.table import RouterConfig
from ondeck.spec.model import Route, Service
from ondeck.state.desired import Desired, DesiredService
from ondeck.state.live import LiveInstance, Phase
from ondeck.traffic import RouterLink

pytestmark = pytest.mark.timeout(120)


def routed(app: str, host: str, port: int) -> EnvTraffic:
    """`app`'s environment `prod`: service web on `port`, routed by `host` (unchecked)."""
    spec = Service.model_validate({"command": ["app"], "port": True})
    spec = spec.model_copy(update={"routes": [Route.model_construct(host=host, path="/")]})
    desired = Desired(app, "prod", "rev", "process", (DesiredService("web", spec, "fp"),))
    live = LiveInstance("web-1", "web", "fp", "rev", Phase.RUNNING, ready=True, port=port)
    return EnvTraffic(desired, (live,), {})


async def answers(port: int, host: str) -> int:
    return (await get(port, "/", host=host)).status


def test_routes_the_router_refuses_are_reported_and_the_running_ones_kept(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, RouterConfig((), {})) as r:
            link = RouterLink(tmp_path, "127.0.0.1:0")
            await link.push([routed("shop", "shop.localhost", up.port)])
            assert link.error is None and await answers(r.port, "shop.localhost") == 200

            await link.push([routed("shop", "shop.localhost:8080", up.port)])  # no raise
            assert link.error is not None
            assert "'shop.localhost:8080' of prod/web is not a host name" in link.error
            assert "fix the spec" in link.error
            assert await answers(r.port, "shop.localhost") == 200  # still served

            await link.push([routed("shop", "shop.localhost", up.port)])
            assert link.error is None

    run(scenario())


def test_one_app_with_routes_the_router_refuses_does_not_stop_the_others(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with (
            Upstream("shop") as shop_up,
            Upstream("blog") as blog_up,
            running_router(tmp_path, RouterConfig((), {})) as r,
        ):
            host = HostRouter(RouterLink(tmp_path, "127.0.0.1:0"))
            shop, blog = host.view("shop"), host.view("blog")
            await blog.push([routed("blog", "blog.localhost", blog_up.port)])
            await blog.push([routed("blog", "*.blog.localhost", blog_up.port)])  # no raise
            assert blog.error is not None and "'*.blog.localhost'" in blog.error
            assert "app 'blog'" in blog.error

            await shop.push([routed("shop", "shop.localhost", shop_up.port)])
            assert shop.error is None  # the other app's routing still goes out
            assert await answers(r.port, "shop.localhost") == 200
            assert await answers(r.port, "blog.localhost") == 200  # blog's last good routes
            assert shop_up.requests and blog_up.requests

            await blog.push([routed("blog", "blog.localhost", blog_up.port)])
            assert blog.error is None

    run(scenario())
