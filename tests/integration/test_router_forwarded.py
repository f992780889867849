"""X-Forwarded-For and X-Forwarded-Proto: kept from trusted proxies, set for everyone else.

A TLS terminator in front of the router says `X-Forwarded-Proto: https`; the
router must pass that on (Django and Rails build their URLs from it) but never
believe the same header from an arbitrary client. Real sockets: the "proxy"
is a client bound to 127.0.0.2, everyone else comes from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_router_proxy import WAIT, Client, Upstream, build, run, running_router, single_pool

from ondeck.router.control import RouterControl
from ondeck.traffic import RouterLink

pytestmark = pytest.mark.timeout(120)
PROXY = "127.0.0.2"
SPOOFED = (("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"))


async def connect_from(address: str, port: int) -> Client:
    """A client whose source address is `address` (any 127/8 address is loopback)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    return Client(reader, writer)


async def forwarded(client: Client, up: Upstream, *headers: tuple[str, str]) -> tuple[str, str]:
    """What the upstream heard as X-Forwarded-For and -Proto for one request."""
    await client.send(build("GET", "/seen", headers=headers))
    assert (await client.response()).status == 200
    seen = up.requests[-1]
    assert len([k for k, _ in seen.headers if k.lower() == "x-forwarded-proto"]) == 1
    assert len([k for k, _ in seen.headers if k.lower() == "x-forwarded-for"]) == 1
    return seen.header("x-forwarded-for") or "", seen.header("x-forwarded-proto") or ""


def test_a_client_cannot_claim_a_scheme_or_an_address(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            Upstream("a") as up,
            running_router(
                tmp_path, single_pool(up.backend()), trusted_proxies=(f"{PROXY}/32",)
            ) as r,
        ):
            client = await connect_from("127.0.0.1", r.port)
            assert await forwarded(client, up, *SPOOFED) == ("127.0.0.1", "http")
            client.close()

    run(scenario())


def test_a_trusted_proxy_keeps_its_headers_and_is_appended(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            Upstream("a") as up,
            running_router(
                tmp_path, single_pool(up.backend()), trusted_proxies=("127.0.0.0/30",)
            ) as r,
        ):
            proxy = await connect_from(PROXY, r.port)
            assert await forwarded(proxy, up, *SPOOFED) == (f"203.0.113.7, {PROXY}", "https")
            assert await forwarded(proxy, up) == (PROXY, "http")  # nothing said: ours
            proxy.close()

    run(scenario())


def test_without_trusted_proxies_nobody_is_believed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            for source in ("127.0.0.1", PROXY):
                client = await connect_from(source, r.port)
                assert await forwarded(client, up, *SPOOFED) == (source, "http")
                client.close()

    run(scenario())


def test_the_router_that_ondeck_up_starts_trusts_the_given_proxies(tmp_path: Path) -> None:
    """RouterLink is how `ondeck up --trusted-proxy` starts the router process."""

    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        link = RouterLink(tmp_path, f"127.0.0.1:{port}", (PROXY,))
        try:
            assert await link.ensure(), link.error
            async with Upstream("a") as up:
                await RouterControl(tmp_path / "router.sock").apply(single_pool(up.backend()))
                proxy = await connect_from(PROXY, port)
                assert await forwarded(proxy, up, *SPOOFED) == (f"203.0.113.7, {PROXY}", "https")
                proxy.close()
                client = await connect_from("127.0.0.1", port)
                assert await forwarded(client, up, *SPOOFED) == ("127.0.0.1", "http")
                client.close()
        finally:
            link.close()  # stop watching first, or the link restarts the router it lost
            process = link._process
            if process is not None:
                process.terminate()
                process.wait(timeout=WAIT)

    run(scenario())


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "ondeck.router", "--state-dir", "STATE", "--trusted-proxy", "10.0.0.0/33"],
        ["-m", "ondeck", "router", "--state-dir", "STATE", "--trusted-proxy", "proxy.example"],
        ["-m", "ondeck", "up", "REPO", "--state-dir", "STATE", "--trusted-proxy", "10.0.0.300"],
        [
            "-m",
            "ondeck",
            "install",
            "--repo",
            "REPO",
            "--unit-dir",
            "STATE",
            "--trusted-proxy",
            "x",
        ],
    ],
    ids=["python_-m_ondeck.router", "ondeck_router", "ondeck_up", "ondeck_install"],
)
def test_a_bad_trusted_proxy_is_refused_with_an_example(tmp_path: Path, argv: list[str]) -> None:
    args = [
        str(tmp_path / "state") if a == "STATE" else str(tmp_path) if a == "REPO" else a
        for a in argv
    ]
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "ONDECK_STATE_DIR": str(tmp_path / "state")},
    )
    assert result.returncode == 1, result.stderr
    assert "--trusted-proxy" in result.stderr and "e.g. 10.0.0.0/8" in result.stderr
    assert not (tmp_path / "state" / "router.sock").exists()
    assert not (tmp_path / "state" / "ondeck-router.service").exists()
