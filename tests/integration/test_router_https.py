"""HTTPS at the router over real sockets: termination, redirects, HSTS, ACME answers, hostility.

Certificates come from a throwaway CA (tests about obtaining them use pebble,
see test_https_acme.py) and reach the router the way the controller sends
them: over the control socket. Clients trust only that CA's root.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from local_ca import LocalCA
from test_router_proxy import (
    WAIT,
    Client,
    RouterProcess,
    Upstream,
    build,
    control_call,
    run,
    single_pool,
)

from ondeck.router.control import RouterControl
from ondeck.router.options import ProxyOptions
from ondeck.router.server import RouterServer
from ondeck.router.table import Backend

pytestmark = pytest.mark.timeout(180)


@contextlib.asynccontextmanager
async def https_router(state_dir: Path, **options: Any) -> AsyncIterator[RouterServer]:
    server = RouterServer(
        state_dir, "127.0.0.1:0", ProxyOptions(**options), listen_tls="127.0.0.1:0"
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0)


def tls_port(server: RouterServer) -> int:
    assert server.tls_address is not None
    return server.tls_address[1]


def client_context(ca: LocalCA) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca.root_pem.decode())


async def tls_client(port: int, host: str, ca: LocalCA) -> Client:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(ca), server_hostname=host
    )
    return Client(reader, writer)


async def install(control: RouterControl, ca: LocalCA, name: str, *hosts: str, **kw: Any) -> str:
    leaf = ca.issue(*hosts)
    await control.tls_install(name, hosts, leaf.chain_pem, leaf.key_pem,
                              kw.get("redirect", True), kw.get("hsts"))  # fmt: skip
    return _fingerprint(leaf.chain_pem)


def _fingerprint(chain_pem: bytes) -> str:
    der = ssl.PEM_cert_to_DER_cert(chain_pem.decode())
    return hashlib.sha256(der).hexdigest()


def peer_fingerprint(client: Client) -> str:
    ssl_object = client.writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest()


def test_https_is_terminated_per_host_and_the_upstream_hears_https(tmp_path: Path) -> None:
    async def scenario() -> None:
        ca = LocalCA()
        async with Upstream("a") as up, https_router(tmp_path) as server:
            server.router.apply(single_pool(Backend("a", "127.0.0.1", up.port)))
            control = RouterControl(server.control.socket_path)
            shop = await install(control, ca, "shop", "shop.test")
            blog = await install(control, ca, "wild", "*.blog.test")
            for host, expected in [("shop.test", shop), ("www.blog.test", blog)]:
                client = await tls_client(tls_port(server), host, ca)
                response = await client.request("GET", "/hello", host=host)
                assert response.status == 200
                assert peer_fingerprint(client) == expected
                assert client.writer.get_extra_info("ssl_object").version() in {
                    "TLSv1.2",
                    "TLSv1.3",
                }
                client.close()
            assert [r.header("X-Forwarded-Proto") for r in up.requests] == ["https", "https"]
            ping = await control_call(server.control.socket_path, {"op": "ping"})
            assert ping["listen_tls"] == f"127.0.0.1:{tls_port(server)}"
            listing = await control.tls_list()
            assert {e["name"] for e in listing} == {"shop", "wild"}
            assert "key" not in str(listing).lower().replace("fingerprint", "")

    run(scenario())


def test_plain_http_redirects_hosts_with_a_certificate_and_hsts_is_sent(tmp_path: Path) -> None:
    async def scenario() -> None:
        ca = LocalCA()
        async with Upstream("a") as up, https_router(tmp_path) as server:
            server.router.apply(single_pool(Backend("a", "127.0.0.1", up.port)))
            control = RouterControl(server.control.socket_path)
            await install(control, ca, "shop", "shop.test", hsts=15552000.0)
            await install(control, ca, "blog", "blog.test", redirect=False)
            plain = await Client.connect(server.port)
            moved = await plain.request("GET", "/cart?id=7", host=f"shop.test:{server.port}")
            assert moved.status == 308
            assert moved.header("Location") == f"https://shop.test:{tls_port(server)}/cart?id=7"
            kept = await plain.request("GET", "/x", host="blog.test")  # redirect: false
            other = await plain.request("GET", "/y", host="nocert.test")
            assert (kept.status, other.status) == (200, 200)
            assert [r.target for r in up.requests] == ["/x", "/y"]
            assert kept.header("Strict-Transport-Security") is None  # never over plain HTTP
            plain.close()
            secure = await tls_client(tls_port(server), "shop.test", ca)
            response = await secure.request("GET", "/", host="shop.test")
            assert response.header("Strict-Transport-Security") == "max-age=15552000"
            secure.close()
            no_hsts = await tls_client(tls_port(server), "blog.test", ca)
            response = await no_hsts.request("GET", "/", host="blog.test")
            assert response.status == 200
            assert response.header("Strict-Transport-Security") is None
            no_hsts.close()

    run(scenario())


def test_acme_challenges_are_answered_on_the_plain_listener_before_routing(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        ca = LocalCA()
        async with Upstream("a") as up, https_router(tmp_path) as server:
            server.router.apply(single_pool(Backend("a", "127.0.0.1", up.port)))
            control = RouterControl(server.control.socket_path)
            await install(control, ca, "shop", "shop.test")  # a redirecting host
            await control.challenge_publish("tok_1-A", "tok_1-A.thumbprint")
            client = await Client.connect(server.port)
            for host in ("shop.test", "any.test"):
                found = await client.request(
                    "GET", "/.well-known/acme-challenge/tok_1-A", host=host
                )
                assert (found.status, found.body) == (200, b"tok_1-A.thumbprint")
            missing = await client.request("GET", "/.well-known/acme-challenge/nope", host="x")
            assert missing.status == 404
            await control.challenge_withdraw("tok_1-A")
            gone = await client.request("GET", "/.well-known/acme-challenge/tok_1-A", host="x")
            assert gone.status == 404
            client.close()
            assert up.requests == []  # none of it was routed to the app

    run(scenario())


def test_a_renewed_certificate_is_used_at_once_and_open_connections_continue(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        ca = LocalCA()
        async with Upstream("a") as up, https_router(tmp_path) as server:
            server.router.apply(single_pool(Backend("a", "127.0.0.1", up.port)))
            control = RouterControl(server.control.socket_path)
            old = await install(control, ca, "shop", "shop.test")
            kept = await tls_client(tls_port(server), "shop.test", ca)
            assert (await kept.request("GET", "/1", host="shop.test")).status == 200
            new = await install(control, ca, "shop", "shop.test")
            fresh = await tls_client(tls_port(server), "shop.test", ca)
            assert peer_fingerprint(fresh) == new != old
            assert (await fresh.request("GET", "/2", host="shop.test")).status == 200
            assert peer_fingerprint(kept) == old
            assert (await kept.request("GET", "/3", host="shop.test")).status == 200
            kept.close()
            fresh.close()

    run(scenario())


def test_certificates_survive_router_restart_and_kill(tmp_path: Path) -> None:
    async def scenario() -> None:
        ca = LocalCA()
        tls_listen = f"127.0.0.1:{_free_port()}"
        async with Upstream("a") as up:
            first = await RouterProcess(tmp_path, "--listen-tls", tls_listen).ready()
            control = RouterControl(tmp_path / "router.sock")
            try:
                await control_call(
                    tmp_path / "router.sock",
                    {"op": "apply", "config": single_pool(
                        Backend("a", "127.0.0.1", up.port)).to_json()},
                )  # fmt: skip
                served = await install(control, ca, "shop", "shop.test")
            finally:
                first.stop(signal.SIGKILL)
            for stop in (signal.SIGTERM, signal.SIGKILL):
                again = await RouterProcess(tmp_path, "--listen-tls", tls_listen).ready()
                try:
                    client = await tls_client(int(tls_listen.rsplit(":", 1)[1]), "shop.test", ca)
                    assert peer_fingerprint(client) == served
                    assert (await client.request("GET", "/", host="shop.test")).status == 200
                    client.close()
                finally:
                    again.stop(stop)
            key = tmp_path / "router-tls" / "shop.key"
            assert key.stat().st_mode & 0o077 == 0

    run(scenario())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------
# Hostile TLS: each gets a clean refusal; the router keeps serving others


CLIENT_HELLO_START = bytes.fromhex("160301")  # a TLS handshake record header


async def served_ok(server: RouterServer, ca: LocalCA) -> bool:
    client = await tls_client(tls_port(server), "shop.test", ca)
    try:
        return (await client.request("GET", "/", host="shop.test")).status == 200
    finally:
        client.close()


async def raw(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    async with asyncio.timeout(WAIT):
        with contextlib.suppress(ConnectionResetError):
            while data := await reader.read(65536):
                out += data
    return bytes(out)


def test_hostile_tls_gets_clean_refusals(tmp_path: Path) -> None:
    async def scenario() -> None:
        ca = LocalCA()
        async with Upstream("a") as up, https_router(tmp_path, header_timeout=2.0) as server:
            server.router.apply(single_pool(Backend("a", "127.0.0.1", up.port)))
            await install(RouterControl(server.control.socket_path), ca, "shop", "shop.test")
            port = tls_port(server)
            # plain HTTP to the TLS port: not a handshake, closed
            reader, writer = await raw(port, build("GET", "/", host="shop.test"))
            assert b"200" not in await read_to_eof(reader)
            writer.close()
            # a ClientHello to the plain port: a bad request, answered once and closed
            hello = _client_hello()
            reader, writer = await raw(server.port, hello)
            assert (await read_to_eof(reader)).startswith(b"HTTP/1.1 400")
            writer.close()
            # garbage and a truncated handshake on the TLS port
            for junk in (b"\x00garbage" * 100, hello[: len(hello) // 2]):
                reader, writer = await raw(port, junk)
                await read_to_eof(reader)  # refused at once, or closed by the handshake timeout
                writer.close()
            # unknown SNI: refused (an alert, or a reset when the loop drops it), others served
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                await tls_client(port, "unknown.test", ca)
            assert await served_ok(server, ca)
            assert up.requests and all(r.target == "/" for r in up.requests)

    run(scenario())


def test_200_connections_stalled_mid_handshake_are_bounded(tmp_path: Path) -> None:
    async def scenario() -> None:
        ca = LocalCA()
        async with Upstream("a") as up, https_router(tmp_path, header_timeout=3.0) as server:
            server.router.apply(single_pool(Backend("a", "127.0.0.1", up.port)))
            await install(RouterControl(server.control.socket_path), ca, "shop", "shop.test")
            half = _client_hello()[:40]
            stalled = [await raw(tls_port(server), half) for _ in range(200)]
            # while they stall, others are served
            assert await served_ok(server, ca)
            # the router gives up on each after its handshake timeout (the clients would
            # have stalled for 20 s): every one of them sees EOF well before that
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.gather(*(read_to_eof(r) for r, _ in stalled))
            assert loop.time() - started < 20.0
            for _, writer in stalled:
                writer.close()
            assert await served_ok(server, ca)

    run(scenario())


def _client_hello() -> bytes:
    """The first flight of a real TLS client (captured from ssl.MemoryBIO)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="shop.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    data = outgoing.read()
    assert data.startswith(CLIENT_HELLO_START[:1])
    return data
