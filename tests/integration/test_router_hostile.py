"""Hostile requests over raw sockets: each is refused once, and nothing leaks upstream.

Every case carries a smuggled request (`GET /smuggled`) where a lax parser
would find one; the recording upstream proves it never arrived. The router's
answer must be the expected 4xx and the connection must then be closed.
Timeouts (slowloris) use short router deadlines and wait for EOF, never sleep.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_router_proxy import Client, Upstream, build, eventually, run, running_router, single_pool

pytestmark = pytest.mark.timeout(120)

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
LIMIT = 1024 * 1024  # the router's max body in these tests


def post(*headers: bytes, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return (
        b"POST / "
        + version
        + b"\r\nHost: x\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"\r\n"
        + body
    )


CHUNKED_SMUGGLE = b"0\r\n\r\n" + SMUGGLED
CASES: dict[str, tuple[bytes, int]] = {
    # Content-Length and Transfer-Encoding together or in doubt
    "cl_then_te": (
        post(b"Content-Length: 4", b"Transfer-Encoding: chunked", body=CHUNKED_SMUGGLE),
        400,
    ),
    "te_then_cl": (
        post(b"Transfer-Encoding: chunked", b"Content-Length: 4", body=CHUNKED_SMUGGLE),
        400,
    ),
    "duplicate_cl_same": (
        post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello" + SMUGGLED),
        400,
    ),
    "duplicate_cl_different": (
        post(b"Content-Length: 5", b"Content-Length: 0", body=b"hello" + SMUGGLED),
        400,
    ),
    "cl_list": (post(b"Content-Length: 5, 5", body=b"hello" + SMUGGLED), 400),
    "cl_plus": (post(b"Content-Length: +5", body=b"hello" + SMUGGLED), 400),
    "cl_negative": (post(b"Content-Length: -1", body=SMUGGLED), 400),
    "cl_hex": (post(b"Content-Length: 0x5", body=b"hello" + SMUGGLED), 400),
    "cl_empty": (post(b"Content-Length: ", body=SMUGGLED), 400),
    "cl_inner_space": (post(b"Content-Length: 1 0", body=SMUGGLED), 400),
    "cl_overflow": (post(b"Content-Length: 99999999999999999999999", body=SMUGGLED), 400),
    "te_chunked_identity": (
        post(b"Transfer-Encoding: chunked, identity", body=CHUNKED_SMUGGLE),
        400,
    ),
    "te_identity_chunked": (
        post(b"Transfer-Encoding: identity, chunked", body=CHUNKED_SMUGGLE),
        400,
    ),
    "te_xchunked": (post(b"Transfer-Encoding: xchunked", body=CHUNKED_SMUGGLE), 400),
    "te_chunkedx": (post(b"Transfer-Encoding: chunkedx", body=CHUNKED_SMUGGLE), 400),
    "te_comma": (post(b"Transfer-Encoding: chunked,", body=CHUNKED_SMUGGLE), 400),
    "te_duplicated": (
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=CHUNKED_SMUGGLE),
        400,
    ),
    "te_vertical_tab": (post(b"Transfer-Encoding: \x0bchunked", body=CHUNKED_SMUGGLE), 400),
    "te_in_http10": (
        post(b"Transfer-Encoding: chunked", body=CHUNKED_SMUGGLE, version=b"HTTP/1.0"),
        400,
    ),
    # Header syntax
    "obs_fold": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n" + SMUGGLED, 400),
    "obs_fold_tab": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\tc\r\n\r\n" + SMUGGLED, 400),
    "obs_fold_te": (post(b"Transfer-Encoding:", b" chunked", body=CHUNKED_SMUGGLE), 400),
    "space_before_colon": (post(b"Transfer-Encoding : chunked", body=CHUNKED_SMUGGLE), 400),
    "tab_before_colon": (post(b"Content-Length\t: 5", body=b"hello" + SMUGGLED), 400),
    "invalid_header_name": (b"GET / HTTP/1.1\r\nHost: x\r\nX(A): b\r\n\r\n" + SMUGGLED, 400),
    "empty_header_name": (b"GET / HTTP/1.1\r\nHost: x\r\n: b\r\n\r\n" + SMUGGLED, 400),
    "header_without_colon": (b"GET / HTTP/1.1\r\nHost: x\r\nJunk\r\n\r\n" + SMUGGLED, 400),
    "nul_in_value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\x00c\r\n\r\n" + SMUGGLED, 400),
    "bare_lf_everywhere": (b"GET / HTTP/1.1\nHost: x\n\n" + SMUGGLED, 400),
    "bare_lf_in_headers": (b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n" + SMUGGLED, 400),
    "bare_lf_before_body": (post(b"Content-Length: 5", body=b"")[:-2] + b"\nhello" + SMUGGLED, 400),
    "bare_cr": (b"GET / HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n" + SMUGGLED, 400),
    # Host
    "missing_host": (b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n" + SMUGGLED, 400),
    "double_host": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + SMUGGLED, 400),
    "host_with_path": (b"GET / HTTP/1.1\r\nHost: evil.example/x\r\n\r\n" + SMUGGLED, 400),
    "host_with_space": (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n" + SMUGGLED, 400),
    "absolute_form_bad_authority": (b"GET http://a b/ HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    # Request line
    "http_1_2": (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    "http_2_0": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    "http_0_9": (b"GET /\r\n\r\n" + SMUGGLED, 400),
    "lowercase_method": (b"get / HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    "space_in_target": (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    "authority_form": (b"GET example.com:80 HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    "connect": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n" + SMUGGLED, 405),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + SMUGGLED, 400),
    # Chunked framing
    "chunk_size_invalid": (
        post(b"Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n" + CHUNKED_SMUGGLE),
        400,
    ),
    "chunk_size_overflow": (
        post(b"Transfer-Encoding: chunked", body=b"fffffffffffffffffff\r\n" + CHUNKED_SMUGGLE),
        400,
    ),
    "chunk_missing_crlf": (
        post(b"Transfer-Encoding: chunked", body=b"5\r\nhelloX" + CHUNKED_SMUGGLE),
        400,
    ),
    "chunk_bare_lf": (post(b"Transfer-Encoding: chunked", body=b"5\nhello\n0\n\n" + SMUGGLED), 400),
    # Sizes
    "uri_too_long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 414),
    "header_too_large": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
    "too_many_headers": (
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(101))
        + b"\r\n",
        431,
    ),
    "body_over_limit_by_length": (post(b"Content-Length: %d" % (LIMIT + 1), body=SMUGGLED), 413),
    # Upgrade
    "upgrade_with_body": (
        b"POST /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n"
        b"Content-Length: 5\r\n\r\nhello" + SMUGGLED,
        400,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_request_is_refused_and_closed(tmp_path: Path, name: str) -> None:
    raw, expected = CASES[name]

    async def scenario() -> None:
        async with (
            Upstream("a") as up,
            running_router(tmp_path, single_pool(up.backend()), max_body=LIMIT) as r,
        ):
            client = await Client.connect(r.port)
            await client.send(raw)
            answer = await client.response()
            assert answer.status == expected, answer.text
            assert answer.header("connection") == "close"
            assert await client.closed() == b""
            assert b"/smuggled" not in up.raw
            assert up.requests == []
            assert sum(r.router.local.values()) == 1

    run(scenario())


def test_chunked_body_over_the_limit_is_413_and_stops(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            Upstream("a") as up,
            running_router(tmp_path, single_pool(up.backend()), max_body=LIMIT) as r,
        ):
            client = await Client.connect(r.port)
            await client.send(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            piece = b"%x\r\n%b\r\n" % (65536, b"a" * 65536)
            with_smuggle = piece * (LIMIT // 65536 + 1) + CHUNKED_SMUGGLE
            client.writer.write(with_smuggle)
            answer = await client.response()
            assert answer.status == 413
            await client.closed()
            assert b"/smuggled" not in up.raw
            assert up.requests == []  # the upstream never saw a complete request

    run(scenario())


def test_good_request_then_garbage_answers_both_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            await client.send(build("GET", "/first") + b"GARBAGE\r\n\r\n" + SMUGGLED)
            assert (await client.response()).text == "a GET /first"
            assert (await client.response()).status == 400
            await client.closed()
            assert up.targets == ["/first"]

    run(scenario())


def test_bytes_after_connection_close_are_not_forwarded(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            await client.send(build("GET", "/once", headers=(("Connection", "close"),)) + SMUGGLED)
            assert (await client.response()).status == 200
            await client.closed()
            assert up.targets == ["/once"]

    run(scenario())


def test_pipelined_smuggle_in_a_valid_body_stays_a_body(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            await client.send(build("POST", "/upload", body=SMUGGLED) + build("GET", "/next"))
            assert (await client.response()).status == 200
            assert (await client.response()).text == "a GET /next"
            assert up.targets == ["/upload", "/next"]
            assert up.requests[0].size == len(SMUGGLED)
            client.close()

    run(scenario())


def test_slowloris_connections_are_closed_and_do_not_block_others(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up:
            config = single_pool(up.backend())
            async with running_router(tmp_path, config, header_timeout=0.5) as r:
                slow = [await Client.connect(r.port) for _ in range(30)]
                for client in slow:
                    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")

                async def drip(client: Client) -> bytes:
                    # One more header line now and then, never the end of the headers.
                    for i in range(1000):
                        if client.reader.at_eof():
                            break
                        try:
                            await client.send(b"X-%d: y\r\n" % i)
                        except ConnectionError:
                            break
                        with_deadline = asyncio.wait_for(client.reader.read(1), 0.1)
                        try:
                            if not await with_deadline:
                                break
                        except TimeoutError:
                            continue
                    return await client.closed()

                drips = asyncio.gather(*(drip(c) for c in slow))
                for _ in range(5):
                    assert (await Client.connect(r.port)).writer is not None
                fresh = await Client.connect(r.port)
                assert (await fresh.request("GET", "/ok")).status == 200
                fresh.close()
                async with asyncio.timeout(30):
                    await drips
                await eventually(lambda: len(r.router.clients) <= 5, "slow clients still held")

    run(scenario())


def test_idle_and_silent_connections_are_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up:
            options = {"keepalive_timeout": 0.3, "header_timeout": 0.3}
            async with running_router(tmp_path, single_pool(up.backend()), **options) as r:
                never_speaks = await Client.connect(r.port)
                assert await never_speaks.closed() == b""
                idle = await Client.connect(r.port)
                assert (await idle.request("GET", "/")).status == 200
                assert await idle.closed() == b""
                await eventually(lambda: not r.router.clients, "connections still open")

    run(scenario())


def test_stalled_request_body_gets_408(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            Upstream("a") as up,
            running_router(tmp_path, single_pool(up.backend()), body_timeout=0.3) as r,
        ):
            client = await Client.connect(r.port)
            await client.send(post(b"Content-Length: 100", body=b"only part"))
            answer = await client.response()
            assert answer.status == 408
            await client.closed()
            await eventually(lambda: up.open == 0, "upstream connection of the stalled body kept")

    run(scenario())
