"""The API's listening socket: keep-alive answers are not held back by Nagle.

uvicorn writes an answer's headers and body in two writes; without TCP_NODELAY
the second waits for the client's delayed ACK, 40 ms on every request of a
kept-alive connection (the dashboard, `ondeck status`, every CLI call).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from ondeck.daemon import _bind
from ondeck.errors import UserError


def test_connections_accepted_by_the_api_socket_have_nagle_off() -> None:
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def scenario() -> None:
        listening = _bind("127.0.0.1:0")
        server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
        port = listening.getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.wait_for(reader.read(), timeout=10)  # the probe closes it
            writer.close()

    asyncio.run(scenario())
    assert seen and seen[0] != 0


def test_a_taken_port_is_a_clear_error() -> None:
    first = _bind("127.0.0.1:0")
    try:
        with pytest.raises(UserError, match="is another ondeck running"):
            _bind(f"127.0.0.1:{first.getsockname()[1]}")
    finally:
        first.close()


def test_a_malformed_address_says_how_to_write_it() -> None:
    with pytest.raises(UserError, match=r"--api .*expected HOST:PORT, e\.g\. 127\.0\.0\.1:7070"):
        _bind("localhost:http")
