"""The router under floods and scarcity: bounded heads, a memory budget, descriptors.

Each test failed before its fix (issue 16, "The router holds floods"): an
endless header value was buffered without bound, eight such clients took the
router to 572 MiB, 1,000 idle sockets at 1,024 descriptors denied every user,
and HTTP/1.0 without Host reached the upstream without one. Real sockets on
loopback; the memory and descriptor tests run `python -m ondeck.router` as its
own process with its own limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_router_proxy import (
    ROUTER_COMMAND,
    WAIT,
    Client,
    RouterProcess,
    Upstream,
    build,
    control_call,
    eventually,
    router_process,
    run,
    running_router,
    single_pool,
)

from ondeck.install import render_router_unit, render_unit

pytestmark = pytest.mark.timeout(180)
FLOOD_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-Flood: "
PRLIMIT = shutil.which("prlimit") or "prlimit"  # util-linux, installed by make test


async def read_until_closed(client: Client) -> bytes:
    """Everything the router sent before it closed (a reset counts as closed)."""
    rest = bytearray()
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(WAIT):
            while data := await client.reader.read(65536):
                rest += data
    return bytes(rest)


async def send_unterminated(client: Client, size: int, piece: int = 8192) -> int:
    """A request head whose last header value never ends; bytes sent until cut."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        await client.send(FLOOD_HEAD)
        while sent < size:
            await client.send(b"a" * piece)
            sent += piece
    return sent


# ---------------------------------------------------------------------------
# Bounded heads and the memory budget


def test_an_endless_header_value_gets_431_at_the_head_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            Upstream("a") as up,
            running_router(tmp_path, single_pool(up.backend()), max_head_bytes=16384) as r,
        ):
            client = await Client.connect(r.port)
            await send_unterminated(client, 64 * 1024, piece=4096)
            answer = await read_until_closed(client)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
            assert up.requests == [] and up.connections == 0
            await eventually(lambda: r.router.held == 0, "held bytes not released")
            ok = await Client.connect(r.port)
            assert (await ok.request("GET", "/after")).status == 200
            ok.close()

    run(scenario())


def test_over_the_memory_budget_the_connection_holding_most_is_cut(tmp_path: Path) -> None:
    budget = 240 * 1024
    options = {"max_head_bytes": 256 * 1024, "max_held_total": budget}

    async def scenario() -> None:
        async with (
            Upstream("a") as up,
            running_router(tmp_path, single_pool(up.backend()), **options) as r,
        ):
            abuser = await Client.connect(r.port)
            await send_unterminated(abuser, 200 * 1024)
            await eventually(lambda: r.router.held >= 180 * 1024, "abuser's bytes not held")
            # Two users with big (but finite) heads: together over the budget.
            users = [await Client.connect(r.port) for _ in range(2)]
            for user in users:
                await user.send(b"GET /user HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 30000)
            await eventually(lambda: r.router.shed_count == 1, "nobody was cut")
            assert await read_until_closed(abuser) == b""  # cut without an answer
            for user in users:
                await user.send(b"\r\n\r\n")
                assert (await user.response()).status == 200
                user.close()
            assert up.targets == ["/user", "/user"]
            assert r.router.shed_count == 1
            await eventually(lambda: r.router.held == 0, "held bytes not released")
            metrics = await control_call(tmp_path / "router.sock", {"op": "metrics"})
            assert "\nondeck_router_shed_connections_total 1\n" in metrics["text"]
            assert "\nondeck_router_held_bytes 0\n" in metrics["text"]

    run(scenario())


def test_eight_flooding_clients_leave_router_memory_bounded(tmp_path: Path) -> None:
    per_client = 8 * 1024 * 1024

    async def attacker(port: int) -> int:
        """Flood until `per_client` bytes are sent, reconnecting whenever cut."""
        sent = 0
        while sent < per_client:
            client = await Client.connect(port)
            sent += await send_unterminated(client, per_client - sent, piece=65536) + 1
            client.close()
        return sent

    async def scenario() -> None:
        async with Upstream("a") as up, router_process(tmp_path) as router:
            up.record_raw = False
            await control_call(
                router.state_dir / "router.sock",
                {"op": "apply", "config": single_pool(up.backend()).to_json()},
            )
            warm = await Client.connect(router.port)
            assert (await warm.request("GET", "/warm")).status == 200
            warm.close()
            baseline = router.peak_rss_kib()
            flood = [asyncio.create_task(attacker(router.port)) for _ in range(8)]
            user = await Client.connect(router.port)
            assert (await user.request("GET", "/during")).status == 200
            user.close()
            async with asyncio.timeout(120):
                await asyncio.gather(*flood)
            growth_mib = (router.peak_rss_kib() - baseline) / 1024
            assert growth_mib < 32, f"router peak RSS grew {growth_mib:.0f} MiB under the flood"
            stats = await control_call(router.state_dir / "router.sock", {"op": "stats"})
            assert stats["local"].get("431", 0) >= 8
            assert stats["held_bytes"] == 0

    run(scenario())


# ---------------------------------------------------------------------------
# Host for HTTP/1.0 and empty Host


@pytest.mark.parametrize(
    "request_bytes",
    [b"GET /headers HTTP/1.0\r\n\r\n", b"GET /headers HTTP/1.1\r\nHost: \r\n\r\n"],
    ids=["http10_without_host", "empty_host"],
)
def test_a_request_without_a_host_reaches_the_upstream_with_one(
    tmp_path: Path, request_bytes: bytes
) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            await client.send(request_bytes)
            answer = await client.response()
            assert answer.status == 200
            headers = [name.lower() for name, _ in json.loads(answer.body)["headers"]]
            assert headers.count("host") == 1
            assert up.requests[0].header("host") == f"127.0.0.1:{up.port}"
            client.close()

    run(scenario())


# ---------------------------------------------------------------------------
# Open descriptors


class LimitedRouter(RouterProcess):
    """`python -m ondeck.router` started with RLIMIT_NOFILE = (soft, hard)."""

    def __init__(self, state_dir: Path, soft: int, hard: int, *args: str) -> None:
        self.state_dir = state_dir
        self.log = state_dir / "router.log"

        # prlimit (util-linux) sets the limits and execs the router: same pid.
        limit = [PRLIMIT, f"--nofile={soft}:{hard}", "--"]
        argv = [*ROUTER_COMMAND, "--state-dir", str(state_dir), "--listen", "127.0.0.1:0", *args]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*limit, *argv], stdout=log, stderr=subprocess.STDOUT)
        self.port = 0

    def open_files_limit(self) -> tuple[int, int]:
        limits = Path(f"/proc/{self.proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        soft, hard = line.split()[3:5]
        return int(soft), int(hard)


@contextlib.asynccontextmanager
async def limited_router(state_dir: Path, soft: int, hard: int) -> AsyncIterator[LimitedRouter]:
    proc = LimitedRouter(state_dir, soft, hard)
    try:
        await proc.ready()
        yield proc
    finally:
        proc.stop()


def test_the_router_raises_its_open_files_soft_limit_to_the_hard_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with limited_router(tmp_path, 256, 4096) as router:
            assert router.open_files_limit() == (4096, 4096)

    run(scenario())


def test_idle_connections_are_closed_sooner_when_descriptors_run_short(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, limited_router(tmp_path, 128, 128) as router:
            sock = router.state_dir / "router.sock"
            await control_call(sock, {"op": "apply", "config": single_pool(up.backend()).to_json()})
            # One client's idle keep-alive sockets: more than the router has descriptors.
            idle = [await asyncio.open_connection("127.0.0.1", router.port) for _ in range(140)]
            answered = False
            async with asyncio.timeout(WAIT):
                while not answered:
                    with contextlib.suppress(ConnectionError, TimeoutError):
                        user = await Client.connect(router.port)
                        await user.send(build("GET", "/user"))
                        answered = (await user.response(timeout=2)).status == 200
                        user.close()
            stats = await control_call(sock, {"op": "stats"})
            assert stats["pressure_closed"] > 0
            for _, writer in idle:
                writer.close()

    run(scenario())


# ---------------------------------------------------------------------------
# The units `ondeck install` writes


def test_installed_units_raise_the_open_files_limit(tmp_path: Path) -> None:
    router = render_router_unit(
        tmp_path / "state", "127.0.0.1:8080", trusted_proxies=("10.0.0.0/8", "fd00::/8")
    )
    assert "--trusted-proxy 10.0.0.0/8 --trusted-proxy fd00::/8" in router
    units = {
        "ondeck-router.service": router,
        "ondeck.service": render_unit(
            "https://example.com/shop.git", [], tmp_path / "state", "127.0.0.1:7070"
        ),
    }
    for name, text in units.items():
        assert "\nLimitNOFILE=65536\n" in text, name
        (tmp_path / name).write_text(text)
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "make test installs systemd (systemd-analyze)"
    verify = subprocess.run(
        [analyze, "verify", *(str(tmp_path / name) for name in units)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert "LimitNOFILE" not in verify.stderr
