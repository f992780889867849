"""Maintenance mode at the router: 503, Retry-After and the message, switched exactly.

A pool with `maintenance` is answered by the router itself (HTML or JSON by
Accept, the message escaped) while its backends stay in the config; under
load, every request sent after the router acknowledged the config (the
control socket's `apply` returned) gets the new behaviour. Real sockets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import pytest
from test_router_proxy import Client, Upstream, build, run, running_router, single_pool

from ondeck.router.control import RouterControl
from ondeck.router.table import RouterConfig

pytestmark = pytest.mark.timeout(120)
MESSAGE = 'Back at 10:00 <script>alert("x")</script> & more'


def in_maintenance(config: RouterConfig, message: str | None, generation: int) -> RouterConfig:
    pools = {name: dataclasses.replace(p, maintenance=message) for name, p in config.pools.items()}
    return RouterConfig(config.routes, pools, generation)


def test_a_pool_in_maintenance_is_answered_by_the_router(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up:
            config = in_maintenance(single_pool(up.backend()), MESSAGE, 2)
            async with running_router(tmp_path, config) as r:
                client = await Client.connect(r.port)
                page = await client.request("GET", "/page")
                assert page.status == 503
                assert page.header("retry-after") == "60"
                assert page.header("content-type") == "text/html; charset=utf-8"
                assert (
                    "Back at 10:00 &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page.text
                )
                assert "<script>" not in page.text
                api = await client.request("GET", "/api", headers=(("Accept", "application/json"),))
                assert api.status == 503 and api.header("content-type") == "application/json"
                assert json.loads(api.body)["message"] == MESSAGE
                await client.send(build("HEAD", "/page"))
                head = await client.raw_head()
                assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 60" in head
                again = await client.request("GET", "/still-kept-alive")
                assert again.status == 503
                client.close()
                assert up.requests == [] and up.connections == 0
                assert r.router.local.get(503) == 4

    run(scenario())


def test_the_switch_is_exact_under_load(tmp_path: Path) -> None:
    """A request sent after the router acknowledged a config, and answered before the
    next switch, follows that config: 503 after "on", the app after "off"."""
    log: list[tuple[float, float, int, bytes]] = []  # (sent, answered, status, body)

    async def load(port: int, stop: asyncio.Event) -> None:
        client = await Client.connect(port)
        while not stop.is_set():
            sent = time.monotonic()
            answer = await client.request("GET", "/work")
            log.append((sent, time.monotonic(), answer.status, answer.body))
        client.close()

    async def scenario() -> None:
        async with Upstream("a") as up:
            serving = single_pool(up.backend(), generation=1)
            async with running_router(tmp_path, serving) as r:
                control = RouterControl(tmp_path / "router.sock")
                stop = asyncio.Event()
                clients = [asyncio.create_task(load(r.port, stop)) for _ in range(8)]
                switches: list[float] = []
                for generation in range(2, 8):
                    seen = len(log)
                    while len(log) < seen + 150:  # load on each side of every switch
                        await asyncio.sleep(0.01)
                    on = generation % 2 == 0
                    await control.apply(
                        in_maintenance(serving, MESSAGE if on else None, generation)
                    )
                    switches.append(time.monotonic())
                seen = len(log)
                while len(log) < seen + 150:
                    await asyncio.sleep(0.01)
                stop.set()
                await asyncio.gather(*clients)
                checked = {"app": 0, "maintenance": 0}
                for sent, answered, status, body in log:
                    passed = [t for t in switches if t < sent]
                    if not passed or len([t for t in switches if t < answered]) != len(passed):
                        continue  # before the first switch, or a switch came while in flight
                    on = len(passed) % 2 == 1
                    if on:
                        assert status == 503 and b"Back at 10:00" in body, (sent, status, body)
                        checked["maintenance"] += 1
                    else:
                        assert status == 200 and body == b"a GET /work", (sent, status, body)
                        checked["app"] += 1
                assert checked["maintenance"] >= 100 and checked["app"] >= 100, checked
                assert all(status in (200, 503) for _, _, status, _ in log)

    run(scenario())
