"""The router's control socket: apply/get/stats/metrics/ping, persistence, errors.

In-process routers here run on the stdlib asyncio loop (the proxy tests use
uvloop), so both loops are exercised; restarts use real router processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_router_proxy import (
    ROUTER_COMMAND,
    Client,
    RouterProcess,
    Upstream,
    control_call,
    get,
    router_process,
    running_router,
    single_pool,
)

from ondeck.router.control import RouterControl, RouterRefused, RouterUnavailable
from ondeck.router.server import worker_socket
from ondeck.router.table import Backend, Pool, Route, RouterConfig

pytestmark = pytest.mark.timeout(120)


def sample_config(port: int = 9001, generation: int = 3) -> RouterConfig:
    web = Pool(
        "prod/web",
        stable=(Backend("web-1", "127.0.0.1", port),),
        canary=(Backend("web-2", "127.0.0.1", port + 1, weight=50),),
        canary_weight=10,
        match_headers={"X-Canary": "always"},
    )
    return RouterConfig((Route("shop.localhost", "/", web.name),), {web.name: web}, generation)


def test_apply_get_ping_through_router_control(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_router(tmp_path):
            control = RouterControl(tmp_path / "router.sock")
            assert await control.ping()
            assert (await control.get()).generation == 0
            assert await control.apply(sample_config()) == 3
            assert await control.get() == sample_config()
            saved = json.loads((tmp_path / "router.json").read_text())
            assert RouterConfig.from_json(saved) == sample_config()
            assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".router-")] == []

    asyncio.run(scenario())


def test_bad_config_is_refused_and_the_old_one_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path) as r:
            control = RouterControl(tmp_path / "router.sock")
            await control.apply(single_pool(up.backend(), generation=5))
            before = (tmp_path / "router.json").read_bytes()
            bad = single_pool(up.backend(), generation=6).to_json()
            bad["routes"].append({"host": None, "path": "/x", "pool": "missing/pool"})
            answer = await control_call(tmp_path / "router.sock", {"op": "apply", "config": bad})
            assert answer["ok"] is False
            assert "unknown pool 'missing/pool'" in answer["error"]
            assert (await control.get()).generation == 5
            assert (tmp_path / "router.json").read_bytes() == before
            assert (await get(r.port, "/")).status == 200

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"this is not json\n", "not JSON"),
        (b"[1, 2]\n", "JSON object"),
        (b'{"op": "reboot"}\n', "unknown op"),
        (b'{"op": "apply"}\n', "invalid router config"),
        (
            b'{"op": "apply", "config": {"routes": [], "pools": {"p": {"stable": "x"}}}}\n',
            "invalid",
        ),
    ],
)
def test_malformed_requests_get_an_error_and_the_connection_survives(
    tmp_path: Path, line: bytes, message: str
) -> None:
    async def scenario() -> None:
        async with running_router(tmp_path):
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "router.sock"))
            writer.write(line + b'{"op": "ping"}\n')
            await writer.drain()
            async with asyncio.timeout(20):
                error = json.loads(await reader.readline())
                pong = json.loads(await reader.readline())
            assert error["ok"] is False and message in error["error"]
            assert pong["ok"] is True and pong["pid"] == os.getpid()
            writer.close()

    asyncio.run(scenario())


def test_a_client_hanging_up_mid_line_does_not_disturb_the_router(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_router(tmp_path):
            _, writer = await asyncio.open_unix_connection(str(tmp_path / "router.sock"))
            writer.write(b'{"op": "app')
            await writer.drain()
            writer.close()
            assert await RouterControl(tmp_path / "router.sock").ping()

    asyncio.run(scenario())


def test_the_socket_is_private(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_router(tmp_path):
            assert os.stat(tmp_path / "router.sock").st_mode & 0o777 == 0o600

    asyncio.run(scenario())


def test_router_control_without_a_router(tmp_path: Path) -> None:
    async def scenario() -> None:
        control = RouterControl(tmp_path / "router.sock", timeout=1.0)
        assert await control.ping() is False
        with pytest.raises(RouterUnavailable):
            await control.stats()
        with pytest.raises(RouterUnavailable):
            await control.apply(sample_config())

    asyncio.run(scenario())


def test_refusal_raises_router_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_router(tmp_path):
            control = RouterControl(tmp_path / "router.sock")
            with pytest.raises(RouterRefused, match="unknown op"):
                await control._call({"op": "nope"})

    asyncio.run(scenario())


# ---------------------------------------------------------------------------
# Stats and metrics


def test_stats_and_metrics_count_what_was_served(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            control = RouterControl(tmp_path / "router.sock")
            first = await control.stats()
            client = await Client.connect(r.port)
            for i in range(10):
                assert (await client.request("GET", f"/{i}")).status == 200
            for _ in range(3):
                assert (await client.request("GET", "/status/404")).status == 404
            assert (await client.request("GET", "/", host="nowhere", headers=())).status == 200
            client.close()
            await get(r.port, "/status/500")
            stats = await control.stats()
            backend: dict[str, Any] = stats["backends"]["a"]
            assert backend["requests"] == 15
            assert backend["status"] == {"1xx": 0, "2xx": 11, "3xx": 0, "4xx": 3, "5xx": 1}
            assert backend["active"] == 0
            assert backend["pool"] == "test/web" and backend["set"] == "stable"
            latency = backend["latency"]
            assert latency["count"] == 15 and latency["p50"] is not None
            assert latency["p50"] <= latency["p95"] <= latency["p99"]
            assert latency["buckets"][-1] == [None, 15]
            assert stats["since"] == first["since"] and stats["uptime"] >= first["uptime"]
            text = await control.metrics()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            requests = {
                s.labels["code"]: s.value
                for s in families["ondeck_router_requests"].samples
                if s.labels["backend"] == "a"
            }
            assert requests == {"1xx": 0, "2xx": 11, "3xx": 0, "4xx": 3, "5xx": 1}
            count = next(
                s.value
                for s in families["ondeck_router_request_duration_seconds"].samples
                if s.name.endswith("_count")
            )
            assert count == 15
            assert "ondeck_router_active_requests" in families
            assert "ondeck_router_config_generation" in families

    asyncio.run(scenario())


def test_router_made_answers_are_counted_apart(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_router(tmp_path, single_pool()) as r:
            assert (await get(r.port, "/")).status == 503
            stats = await RouterControl(tmp_path / "router.sock").stats()
            assert stats["local"] == {"503": 1}
            assert stats["backends"] == {}

    asyncio.run(scenario())


# ---------------------------------------------------------------------------
# Persistence across router processes


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_a_restarted_router_serves_the_last_config_at_once(tmp_path: Path, sig: int) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up:
            first = await RouterProcess(tmp_path).ready()
            try:
                control = RouterControl(tmp_path / "router.sock")
                await control.apply(single_pool(up.backend(), generation=9))
            finally:
                first.stop(sig)
            async with router_process(tmp_path) as second:
                answer = await get(second.port, "/restarted")
                assert (answer.status, answer.text) == (200, "a GET /restarted")
                assert (await control.get()).generation == 9

    asyncio.run(scenario())


def test_a_second_router_on_the_same_state_dir_refuses_to_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with router_process(tmp_path) as first:
            second = subprocess.run(
                [*ROUTER_COMMAND, "--state-dir", str(tmp_path), "--listen", "127.0.0.1:0"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert second.returncode == 1
            assert "another router already serves" in second.stderr
            assert await RouterControl(tmp_path / "router.sock").ping()
            assert first.proc.poll() is None

    asyncio.run(scenario())


def test_bad_listen_address_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ondeck.router", "--state-dir", str(tmp_path), "--listen", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "expected HOST:PORT" in result.stderr


# ---------------------------------------------------------------------------
# Several worker processes behind one control socket


async def _fresh_answers(port: int, count: int) -> set[str]:
    return {(await get(port, "/")).header("x-upstream") or "?" for _ in range(count)}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_workers_share_the_port_and_answer_as_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as a, Upstream("b") as b:
            router = await RouterProcess(tmp_path, "--workers", "2").ready()
            try:
                control = RouterControl(tmp_path / "router.sock")
                assert (await control_call(tmp_path / "router.sock", {"op": "ping"}))[
                    "workers"
                ] == 2
                worker_sock = worker_socket(tmp_path, 1)
                await control.apply(single_pool(a.backend(), generation=1))
                async with asyncio.timeout(20):  # the second worker starts, then is synced
                    while True:
                        with contextlib.suppress(OSError, ValueError):
                            answer = await control_call(worker_sock, {"op": "ping"})
                            if answer["generation"] == 1:
                                break
                        await asyncio.sleep(0.05)
                assert await _fresh_answers(router.port, 20) == {"a"}
                await control.apply(single_pool(b.backend(), generation=2))
                assert await _fresh_answers(router.port, 40) == {"b"}  # applied everywhere at once
                stats = await control.stats()
                assert stats["workers"] == 2
                assert stats["backends"]["b"]["requests"] == 40
                assert stats["backends"]["b"]["latency"]["count"] == 40
                own = await control_call(worker_sock, {"op": "stats"})
                assert 0 < own["backends"]["b"]["requests"] < 40  # both processes took some
                helper = (await control_call(worker_sock, {"op": "ping"}))["pid"]
                os.kill(helper, signal.SIGKILL)
                async with asyncio.timeout(20):
                    while True:
                        with contextlib.suppress(OSError, ValueError):
                            answer = await control_call(worker_sock, {"op": "ping"})
                            if answer["pid"] != helper and answer["generation"] == 2:
                                break
                        await asyncio.sleep(0.05)
                helper = answer["pid"]
            finally:
                assert router.stop() == 0
            async with asyncio.timeout(20):
                while not _gone(helper):
                    await asyncio.sleep(0.05)

    asyncio.run(scenario())
