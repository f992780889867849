"""The router proxying real HTTP between real loopback sockets.

Upstreams are small asyncio servers that answer by path and record every byte
they get; clients speak raw HTTP/1.1 over sockets. Most tests run a router in
the test's own event loop (uvloop, as in production); the memory test runs
`python -m ondeck.router` as a separate process. This module also holds the
harness that test_router_hostile.py and test_router_control.py import.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httptools
import pytest

from ondeck.router.options import ProxyOptions
from ondeck.router.server import RouterServer
from ondeck.router.table import Backend, Pool, Route, RouterConfig

pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")
ROUTER_COMMAND = (sys.executable, "-m", "ondeck.router")
WAIT = 20.0  # seconds any single wait may take before the test fails


def run(scenario: Coroutine[Any, Any, T]) -> T:
    """Run a test scenario on uvloop when installed (the router's production loop)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(scenario)
    return uvloop.run(scenario)


async def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait until `check()` holds, polling; fail with `what` after `timeout`."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)
    assert check(), what


# ---------------------------------------------------------------------------
# A recording upstream


@dataclass
class Seen:
    """One request as an upstream parsed it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    size: int = 0
    sha: str = ""

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


@dataclass
class _Parsed:
    requests: deque[Seen] = field(default_factory=deque)
    current: Seen | None = None
    url: bytes = b""
    hasher: Any = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    parser: Any = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        method = self.parser.get_method().decode()
        self.current = Seen(method, self.url.decode("latin-1"), self.headers)
        self.hasher = hashlib.sha256()
        self.url, self.headers = b"", []

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.size += len(body)
        self.hasher.update(body)

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.sha = self.hasher.hexdigest()
        self.requests.append(self.current)
        self.current = None


def pattern(n: int) -> bytes:
    """Deterministic bytes for bodies (cheap to make and to check)."""
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


class Upstream:
    """An HTTP/1.1 server answering by path; it records raw bytes and requests.

    /slow waits for `release`; /silent never answers; /close hangs up; /ws
    upgrades and echoes; /download?n=N streams N bytes; /upload answers the
    size and sha256 of the body; /stall-upload reads nothing until `release`.
    """

    def __init__(self, name: str, keep_alive: bool = True) -> None:
        self.name = name
        self.keep_alive = keep_alive
        self.connections = 0
        self.open = 0
        self.raw = bytearray()
        self.record_raw = True
        self.requests: list[Seen] = []
        self.release = asyncio.Event()
        self.slow_started = asyncio.Event()
        self.download_sent = 0
        self.download_blocked = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.release.set()

    def backend(self, weight: int = 100) -> Backend:
        return Backend(self.name, "127.0.0.1", self.port, weight)

    @property
    def targets(self) -> list[str]:
        return [r.target for r in self.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        parsed = _Parsed()
        parsed.parser = httptools.HttpRequestParser(parsed)
        try:
            await self._loop(reader, writer, parsed)
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def _loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parsed: _Parsed
    ) -> None:
        while True:
            current = parsed.current
            if current is not None and current.target.startswith("/stall-upload"):
                await self.release.wait()
            data = await reader.read(65536)
            if not data:
                return
            if self.record_raw:
                self.raw += data
            try:
                parsed.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                request = parsed.requests.popleft()
                self.requests.append(request)
                if request.target.startswith("/ws-"):
                    await self._echo(reader, writer, data[int(exc.args[0]) :])
                else:
                    await self._refuse_upgrade(reader, writer)
                return
            while parsed.requests:
                request = parsed.requests.popleft()
                self.requests.append(request)
                if not await self._answer(request, writer):
                    return

    async def _answer(self, req: Seen, writer: asyncio.StreamWriter) -> bool:
        """Write the answer to `req`; False when the connection must end."""
        url = urlsplit(req.target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path == "/silent":
            await asyncio.Event().wait()
        if path == "/close":
            return False
        if path == "/slow":
            self.slow_started.set()
            await self.release.wait()
        if path == "/download":
            await self._download(writer, int(query["n"]), query.get("chunked") == "1")
            return True
        if path == "/chunked":
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Upstream: "
                + self.name.encode()
                + b"\r\n\r\n5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
            )
            return True
        if path == "/interim":
            writer.write(
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
            )
            return True
        if path == "/nolength":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
            return False
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            length = b"" if status in (204, 304) else b"Content-Length: 0\r\n"
            writer.write(b"HTTP/1.1 %d Whatever\r\n%b\r\n" % (status, length))
            return True
        body = self._body(req, path)
        self._respond(writer, 200, body, req.method == "HEAD")
        await writer.drain()
        return self.keep_alive

    def _body(self, req: Seen, path: str) -> bytes:
        if path in ("/upload", "/stall-upload"):
            return json.dumps({"size": req.size, "sha": req.sha}).encode()
        if path == "/headers":
            return json.dumps({"headers": req.headers, "target": req.target}).encode()
        return f"{self.name} {req.method} {req.target}".encode()

    def _respond(self, writer: asyncio.StreamWriter, status: int, body: bytes, head: bool) -> None:
        connection = b"" if self.keep_alive else b"Connection: close\r\n"
        writer.write(
            b"HTTP/1.1 %d OK\r\nContent-Length: %d\r\nX-Upstream: %b\r\n%b\r\n"
            % (status, len(body), self.name.encode(), connection)
        )
        if not head:
            writer.write(body)

    async def _download(self, writer: asyncio.StreamWriter, n: int, chunked: bool) -> None:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % n
        writer.write(b"HTTP/1.1 200 OK\r\n%b\r\n\r\n" % framing)
        piece = pattern(65536)
        self.download_sent = 0
        while self.download_sent < n:
            part = piece[: n - self.download_sent]
            writer.write(b"%x\r\n%b\r\n" % (len(part), part) if chunked else part)
            self.download_sent += len(part)
            if writer.transport.get_write_buffer_size() > 0:
                self.download_blocked.set()  # the kernel would not take more: pushed back
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _refuse_upgrade(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        while data := await reader.read(65536):  # record whatever else arrives
            self.raw += data

    async def _echo(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rest: bytes
    ) -> None:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        if rest:
            writer.write(b"echo:" + rest)
        while data := await reader.read(65536):
            writer.write(b"echo:" + data)
            await writer.drain()


# ---------------------------------------------------------------------------
# A raw HTTP client


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _ResponseParser:
    def __init__(self) -> None:
        self.done: deque[Response] = deque()
        self.parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()
        self.body_bytes = 0
        self.keep_body = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.keep_body:
            self._body += body

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.done.append(Response(status, self._headers, bytes(self._body)))
        self._headers, self._body = [], bytearray()


class Client:
    """One client connection speaking raw bytes; responses parsed in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parsed = _ResponseParser()
        self.eof = False

    @classmethod
    async def connect(cls, port: int, rcvbuf: int | None = None) -> Client:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def response(self, timeout: float = WAIT) -> Response:
        async with asyncio.timeout(timeout):
            while not self.parsed.done:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionResetError("closed before a full response")
                self.parsed.parser.feed_data(data)
        return self.parsed.done.popleft()

    async def raw_head(self, timeout: float = WAIT) -> bytes:
        """The head of a response read as bytes (for HEAD, whose body never comes)."""
        async with asyncio.timeout(timeout):
            return await self.reader.readuntil(b"\r\n\r\n")

    async def closed(self, timeout: float = WAIT) -> bytes:
        """Read to EOF (fails if the router keeps the connection open); returns the rest."""
        rest = bytearray()
        async with asyncio.timeout(timeout):
            while data := await self.reader.read(65536):
                rest += data
        return bytes(rest)

    async def request(self, method: str, target: str, **kw: Any) -> Response:
        await self.send(build(method, target, **kw))
        return await self.response()

    def close(self) -> None:
        self.writer.close()


def build(
    method: str,
    target: str,
    host: str = "app.localhost",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes | None = None,
) -> bytes:
    """A well-formed HTTP/1.1 request as bytes."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


async def get(port: int, target: str, **kw: Any) -> Response:
    """One request on a fresh connection."""
    client = await Client.connect(port)
    try:
        return await client.request("GET", target, **kw)
    finally:
        client.close()


# ---------------------------------------------------------------------------
# Routers


def single_pool(*backends: Backend, generation: int = 1, **pool_kw: Any) -> RouterConfig:
    pool = Pool("test/web", stable=backends, **pool_kw)
    return RouterConfig((Route(None, "/", pool.name),), {pool.name: pool}, generation)


@contextlib.asynccontextmanager
async def running_router(
    state_dir: Path, config: RouterConfig | None = None, **options: Any
) -> AsyncIterator[RouterServer]:
    """A router in this event loop on an ephemeral port."""
    server = RouterServer(state_dir, "127.0.0.1:0", ProxyOptions(**options))
    await server.start()
    if config is not None:
        server.router.apply(config)
    try:
        yield server
    finally:
        await server.stop(grace=0)


async def control_call(socket_path: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One raw control request (the test sees exactly what the router answers)."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        async with asyncio.timeout(WAIT):
            answer: dict[str, Any] = json.loads(await reader.readline())
        return answer
    finally:
        writer.close()


class RouterProcess:
    """`python -m ondeck.router` as a child process; always stopped by the test."""

    def __init__(self, state_dir: Path, *args: str, listen: str = "127.0.0.1:0") -> None:
        self.state_dir = state_dir
        self.log = state_dir / "router.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*ROUTER_COMMAND, "--state-dir", str(state_dir), "--listen", listen, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.port = 0

    async def ready(self) -> RouterProcess:
        """Wait until the control socket answers; learn the listening port from ping."""
        sock = self.state_dir / "router.sock"
        async with asyncio.timeout(WAIT):
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"router exited: {self.log.read_text()}")
                with contextlib.suppress(OSError, ValueError):
                    answer = await control_call(sock, {"op": "ping"})
                    if answer.get("pid") == self.proc.pid:
                        self.port = int(answer["listen"].rsplit(":", 1)[1])
                        return self
                await asyncio.sleep(0.02)

    def peak_rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=WAIT)


@contextlib.asynccontextmanager
async def router_process(state_dir: Path, *args: str) -> AsyncIterator[RouterProcess]:
    proc = RouterProcess(state_dir, *args)
    try:
        yield await proc.ready()
    finally:
        proc.stop()


async def gather_all(*aws: Awaitable[T]) -> list[T]:
    return list(await asyncio.gather(*aws))


# ---------------------------------------------------------------------------
# Routing


def test_routes_by_host_then_longest_prefix(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("root") as root, Upstream("api") as api, Upstream("shop") as shop:
            pools = {
                "p/root": Pool("p/root", stable=(root.backend(),)),
                "p/api": Pool("p/api", stable=(api.backend(),)),
                "p/shop": Pool("p/shop", stable=(shop.backend(),)),
            }
            routes = (
                Route(None, "/", "p/root"),
                Route(None, "/api", "p/api"),
                Route("shop.localhost", "/", "p/shop"),
            )
            async with running_router(tmp_path, RouterConfig(routes, pools, 1)) as router:
                port = router.port
                assert (await get(port, "/x")).header("x-upstream") == "root"
                assert (await get(port, "/api/v1?q=1")).header("x-upstream") == "api"
                assert (await get(port, "/apix")).header("x-upstream") == "root"
                shop_answer = await get(port, "/api/v1", host="Shop.Localhost:8080")
                assert shop_answer.header("x-upstream") == "shop"
                assert api.targets == ["/api/v1?q=1"]

    run(scenario())


def test_absolute_form_target_routes_by_its_authority(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as a, Upstream("shop") as shop:
            pools = {
                "p/a": Pool("p/a", stable=(a.backend(),)),
                "p/shop": Pool("p/shop", stable=(shop.backend(),)),
            }
            routes = (Route(None, "/", "p/a"), Route("shop.localhost", "/", "p/shop"))
            async with running_router(tmp_path, RouterConfig(routes, pools, 1)) as router:
                answer = await get(router.port, "http://shop.localhost/cart?x=1")
                assert answer.header("x-upstream") == "shop"
                assert shop.targets == ["/cart?x=1"]

    run(scenario())


# ---------------------------------------------------------------------------
# Keep-alive and pipelining


def test_keep_alive_reuses_upstream_connections(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            for i in range(50):
                answer = await client.request("GET", f"/n/{i}")
                assert answer.status == 200
            clients = [await Client.connect(r.port) for _ in range(4)]
            for round_ in range(10):
                answers = await gather_all(*(c.request("GET", f"/r/{round_}") for c in clients))
                assert {a.status for a in answers} == {200}
            assert len(up.requests) == 90
            assert up.connections <= 5  # one per concurrent client at most, not one per request
            for c in [client, *clients]:
                c.close()

    run(scenario())


def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            await client.send(b"".join(build("GET", f"/p/{i}") for i in range(20)))
            bodies = [(await client.response()).text for _ in range(20)]
            assert bodies == [f"a GET /p/{i}" for i in range(20)]
            await client.send(build("POST", "/upload", body=b"x" * 1000) + build("GET", "/after"))
            assert json.loads((await client.response()).body)["size"] == 1000
            assert (await client.response()).text == "a GET /after"
            client.close()

    run(scenario())


def test_connection_close_from_client_is_honoured(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            answer = await client.request("GET", "/", headers=(("Connection", "close"),))
            assert answer.header("connection") == "close"
            assert await client.closed() == b""

    run(scenario())


def test_stale_pooled_connection_is_retried_not_a_502(tmp_path: Path) -> None:
    async def scenario() -> None:
        # This upstream closes every connection after answering, without saying so.
        async with Upstream("a") as up:
            up.keep_alive = False
            async with running_router(tmp_path, single_pool(up.backend())) as r:
                client = await Client.connect(r.port)
                for i in range(10):
                    answer = await client.request("GET", f"/{i}")
                    assert answer.status == 200, answer.text
                client.close()

    run(scenario())


# ---------------------------------------------------------------------------
# Bodies


def test_chunked_request_is_streamed_and_rechunked(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            head = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            await client.send(head + b"4;ext=1\r\nabcd\r\n")
            await client.send(b"3\r\nefg\r\n0\r\nX-Trailer: t\r\n\r\n")
            answer = await client.response()
            assert json.loads(answer.body) == {
                "size": 7,
                "sha": hashlib.sha256(b"abcdefg").hexdigest(),
            }
            assert up.requests[0].header("transfer-encoding") == "chunked"
            assert b"ext=1" not in up.raw and b"X-Trailer" not in up.raw
            client.close()

    run(scenario())


def test_chunked_response_reaches_http11_and_http10_clients(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            answer = await client.request("GET", "/chunked")
            assert answer.body == b"hello world"
            assert answer.header("transfer-encoding") == "chunked"
            assert answer.header("x-trailer") is None
            client.close()
            old = await Client.connect(r.port)
            await old.send(b"GET /chunked HTTP/1.0\r\nHost: x\r\n\r\n")
            rest = await old.closed()  # close-delimited: no chunked framing for HTTP/1.0
            assert rest.startswith(b"HTTP/1.1 200")
            assert rest.endswith(b"\r\n\r\nhello world")
            assert b"chunked" not in rest.lower()

    run(scenario())


def test_response_without_length_is_relayed_to_the_end(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            answer = await client.request("GET", "/nolength")
            assert answer.body == b"until the end"
            assert (await client.request("GET", "/again")).status == 200
            client.close()

    run(scenario())


def test_head_204_and_304_have_no_body(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            await client.send(build("HEAD", "/thing"))
            head = await client.raw_head()
            assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 13" in head
            for status in (204, 304):
                answer = await client.request("GET", f"/status/{status}")
                assert (answer.status, answer.body) == (status, b"")
            assert (await client.request("GET", "/after")).text == "a GET /after"
            client.close()

    run(scenario())


def test_interim_responses_relay_100_and_drop_others(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            await client.send(build("GET", "/interim"))
            assert await client.raw_head() == b"HTTP/1.1 100 Continue\r\n\r\n"
            answer = await client.response()
            assert (answer.status, answer.body) == (200, b"final")
            assert (await client.request("GET", "/next")).text == "a GET /next"
            client.close()

    run(scenario())


def test_expect_continue_is_relayed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            await client.send(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                b"Expect: 100-continue\r\n\r\nabc"
            )
            answer = await client.response()
            assert json.loads(answer.body)["size"] == 3
            client.close()

    run(scenario())


def test_50mb_upload_and_download_stream_with_bounded_router_memory(tmp_path: Path) -> None:
    size = 50 * 1024 * 1024

    async def scenario() -> None:
        async with Upstream("a") as up, router_process(tmp_path) as router:
            up.record_raw = False
            await control_call(
                router.state_dir / "router.sock",
                {"op": "apply", "config": single_pool(up.backend()).to_json()},
            )
            baseline = router.peak_rss_kib()
            body = pattern(size)
            for chunked in (False, True):
                client = await Client.connect(router.port)
                if chunked:
                    await client.send(
                        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    )
                    for i in range(0, size, 1 << 20):
                        part = body[i : i + (1 << 20)]
                        await client.send(b"%x\r\n%b\r\n" % (len(part), part))
                    await client.send(b"0\r\n\r\n")
                else:
                    await client.send(build("POST", "/upload", body=body))
                answer = await client.response(timeout=60)
                assert json.loads(answer.body) == {
                    "size": size,
                    "sha": hashlib.sha256(body).hexdigest(),
                }
                client.parsed.keep_body = False
                client.parsed.body_bytes = 0
                await client.send(build("GET", f"/download?n={size}&chunked={int(chunked)}"))
                await client.response(timeout=60)
                assert client.parsed.body_bytes == size
                client.close()
            growth_mib = (router.peak_rss_kib() - baseline) / 1024
            assert growth_mib < 25, f"router peak RSS grew {growth_mib:.0f} MiB for 50 MiB bodies"

    run(scenario())


def test_slow_reader_pushes_back_to_the_upstream(tmp_path: Path) -> None:
    size = 64 * 1024 * 1024

    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port, rcvbuf=65536)
            client.parsed.keep_body = False
            await client.send(build("GET", f"/download?n={size}"))
            # The client reads nothing: the upstream must end up blocked, and the
            # router must hold only its small write buffer meanwhile.
            await eventually(up.download_blocked.is_set, "upstream never pushed back")
            router_buffered = max(
                c.transport.get_write_buffer_size() for c in list(r.router.clients)
            )
            assert router_buffered <= 1024 * 1024
            assert up.download_sent < size
            await client.response(timeout=60)
            assert client.parsed.body_bytes == size
            client.close()

    run(scenario())


def test_slow_upstream_pushes_back_to_the_uploader(tmp_path: Path) -> None:
    size = 64 * 1024 * 1024

    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            up.record_raw = False
            client = await Client.connect(r.port)
            head = b"POST /stall-upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
            client.writer.write(head)
            body = pattern(size)
            sent = 0
            # Write until the client's own socket will not take more: the
            # upstream reads nothing, so only backpressure can stop us here.
            while sent < size and client.writer.transport.get_write_buffer_size() == 0:
                client.writer.write(body[sent : sent + 65536])
                sent += 65536
                await asyncio.sleep(0)
                if sent % (1 << 20) == 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(client.writer.drain(), 0.05)
            assert sent < size, "the whole body went through a router with a stalled upstream"
            upstream_buffers = [
                u.transport.get_write_buffer_size() for u in list(r.router.upstreams)
            ]
            assert max(upstream_buffers) <= 1024 * 1024
            up.release.set()
            client.writer.write(body[sent:])
            answer = await client.response(timeout=60)
            assert json.loads(answer.body)["size"] == size
            client.close()

    run(scenario())


# ---------------------------------------------------------------------------
# Upgrade


def test_websocket_upgrade_is_spliced_both_ways(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            await client.send(
                b"GET /ws-chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                b"Upgrade: echo\r\nSec-WebSocket-Version: 13\r\n\r\nearly"
            )
            head = await client.raw_head()
            assert head.startswith(b"HTTP/1.1 101")
            assert b"Upgrade: echo" in head and b"Connection: Upgrade" in head
            received = b""
            async with asyncio.timeout(WAIT):
                while b"echo:early" not in received:
                    received += await client.reader.read(100)
                await client.send(b"ping-1")
                while b"echo:ping-1" not in received:
                    received += await client.reader.read(100)
            request = up.requests[0]
            assert request.header("upgrade") == "echo"
            assert request.header("connection") == "Upgrade"
            client.close()
            await eventually(lambda: up.open == 0, "the tunnel's upstream side was not closed")

    run(scenario())


def test_refused_upgrade_answers_and_closes_without_forwarding_extra_bytes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            client = await Client.connect(r.port)
            await client.send(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
                b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            assert (await client.response()).status == 400
            await client.closed()
            assert b"/smuggled" not in up.raw

    run(scenario())


# ---------------------------------------------------------------------------
# Headers


def test_forwarded_headers_and_hop_by_hop_removal(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up, running_router(tmp_path, single_pool(up.backend())) as r:
            answer = await get(
                r.port,
                "/headers",
                host="shop.localhost:8080",
                headers=(
                    ("X-Forwarded-For", "203.0.113.9"),
                    ("X-Forwarded-Proto", "https"),
                    ("Connection", "keep-alive, X-Secret"),
                    ("X-Secret", "hop"),
                    ("Keep-Alive", "timeout=5"),
                    ("TE", "trailers"),
                    ("Proxy-Authorization", "Basic eA=="),
                    ("Upgrade", "h2c"),
                    ("X-Kept", "yes"),
                ),
            )
            seen = {k.lower(): v for k, v in json.loads(answer.body)["headers"]}
            # Not a trusted proxy: its X-Forwarded-For is replaced, not extended
            # (test_router_forwarded.py covers trusted proxies).
            assert seen["x-forwarded-for"] == "127.0.0.1"
            assert seen["x-forwarded-proto"] == "http"
            assert seen["x-forwarded-host"] == "shop.localhost:8080"
            assert seen["host"] == "shop.localhost:8080"
            assert seen["x-kept"] == "yes"
            for hop in ("x-secret", "keep-alive", "te", "proxy-authorization", "upgrade"):
                assert hop not in seen, hop
            assert "connection" not in seen

    run(scenario())


# ---------------------------------------------------------------------------
# Errors the router answers itself


def test_503_pages_for_no_route_and_no_backend(tmp_path: Path) -> None:
    async def scenario() -> None:
        empty = Pool("test/empty", stable=())
        config = RouterConfig(
            (Route("known.localhost", "/", "test/empty"),), {empty.name: empty}, 1
        )
        async with running_router(tmp_path, config) as r:
            no_route = await get(r.port, "/", host="unknown.localhost")
            assert no_route.status == 503 and "No application is routed" in no_route.text
            assert no_route.header("content-type") == "text/html; charset=utf-8"
            no_backend = await get(r.port, "/", host="known.localhost")
            assert no_backend.status == 503 and "no instance" in no_backend.text
            client = await Client.connect(r.port)
            for _ in range(3):  # a body-less request keeps its connection after a 503
                assert (await client.request("GET", "/", host="nowhere")).status == 503
            client.close()

    run(scenario())


def test_502_when_refused_or_reset_and_504_when_silent(tmp_path: Path) -> None:
    async def scenario() -> None:
        with socket.socket() as placeholder:
            placeholder.bind(("127.0.0.1", 0))
            dead_port = placeholder.getsockname()[1]  # bound, never listening: refused
            async with Upstream("a") as up:
                config = RouterConfig(
                    (Route(None, "/", "p/live"), Route("dead.localhost", "/", "p/dead")),
                    {
                        "p/live": Pool("p/live", stable=(up.backend(),)),
                        "p/dead": Pool("p/dead", stable=(Backend("dead", "127.0.0.1", dead_port),)),
                    },
                    1,
                )
                async with running_router(tmp_path, config, upstream_timeout=0.5) as r:
                    refused = await get(r.port, "/", host="dead.localhost")
                    assert refused.status == 502 and "refused" in refused.text
                    reset = await get(r.port, "/close")
                    assert reset.status == 502
                    silent = await get(r.port, "/silent")
                    assert silent.status == 504 and "did not answer in time" in silent.text
                    stats = r.router.stats()["backends"]
                    assert isinstance(stats, dict)
                    assert stats["dead"]["errors"]["connect"] == 1
                    assert stats["a"]["errors"]["reset"] == 1
                    assert stats["a"]["errors"]["timeout"] == 1
                    assert stats["a"]["status"]["5xx"] == 2

    run(scenario())


def test_failed_connect_retries_once_on_another_backend(tmp_path: Path) -> None:
    async def scenario() -> None:
        with socket.socket() as placeholder:
            placeholder.bind(("127.0.0.1", 0))
            dead = Backend("dead", "127.0.0.1", placeholder.getsockname()[1])
            async with Upstream("a") as up:
                config = single_pool(dead, up.backend())
                async with running_router(tmp_path, config) as r:
                    answers = [await get(r.port, f"/{i}") for i in range(20)]
                    assert {a.status for a in answers} == {200}
                    stats = r.router.stats()["backends"]
                    assert isinstance(stats, dict)
                    assert stats["dead"]["errors"]["connect"] > 0
                    assert stats["a"]["requests"] == 20

    run(scenario())


# ---------------------------------------------------------------------------
# Config changes


def test_removed_backend_drains_while_new_requests_go_elsewhere(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("old") as old, Upstream("new") as new:  # noqa: SIM117
            async with running_router(tmp_path, single_pool(old.backend())) as r:
                slow_client = await Client.connect(r.port)
                await slow_client.send(build("GET", "/slow"))
                await eventually(old.slow_started.is_set, "slow request never reached old")
                r.router.apply(single_pool(new.backend(), generation=2))
                for i in range(5):
                    assert (await get(r.port, f"/n{i}")).header("x-upstream") == "new"

                def active(backend: str) -> int:
                    backends = r.router.stats()["backends"]
                    assert isinstance(backends, dict)
                    return int(backends[backend]["active"])

                assert active("old") == 1
                old.release.set()
                answer = await slow_client.response()
                assert (answer.status, answer.header("x-upstream")) == (200, "old")
                assert active("old") == 0
                assert len(old.requests) == 1
                slow_client.close()

    run(scenario())


def test_canary_cookie_sticks_and_header_match_forces_canary(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("stable") as stable, Upstream("canary") as canary:
            pool = Pool(
                "test/web",
                stable=(stable.backend(),),
                canary=(canary.backend(),),
                canary_weight=50,
                match_headers={"X-Canary": "always"},
            )
            config = RouterConfig((Route(None, "/", pool.name),), {pool.name: pool}, 1)
            async with running_router(tmp_path, config) as r:
                first = await get(r.port, "/")
                cookie = first.header("set-cookie") or ""
                assert cookie.startswith(pool.cookie_name + "=")
                assert "HttpOnly" in cookie
                assigned = first.header("x-upstream")
                value = "c" if assigned == "canary" else "s"
                for _ in range(5):
                    again = await get(
                        r.port, "/", headers=(("Cookie", f"{pool.cookie_name}={value}"),)
                    )
                    assert again.header("x-upstream") == assigned
                    assert again.header("set-cookie") is None
                forced = await get(
                    r.port,
                    "/",
                    headers=(("Cookie", f"{pool.cookie_name}=s"), ("X-Canary", "always")),
                )
                assert forced.header("x-upstream") == "canary"
                flipped = await get(
                    r.port,
                    "/",
                    headers=(("Cookie", f"{pool.cookie_name}={'s' if value == 'c' else 'c'}"),),
                )
                assert flipped.header("x-upstream") != assigned

    run(scenario())


def test_graceful_stop_of_a_router_process_finishes_in_flight(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Upstream("a") as up:
            proc = RouterProcess(tmp_path)
            try:
                await proc.ready()
                await control_call(
                    tmp_path / "router.sock",
                    {"op": "apply", "config": single_pool(up.backend()).to_json()},
                )
                client = await Client.connect(proc.port)
                await client.send(build("GET", "/slow"))
                await eventually(up.slow_started.is_set, "slow request never arrived")
                proc.proc.send_signal(signal.SIGTERM)
                await eventually(
                    lambda: not (tmp_path / "router.sock").exists(), "router kept its socket"
                )
                up.release.set()
                assert (await client.response()).status == 200
                client.close()
            finally:
                assert proc.stop() == 0

    run(scenario())


def test_router_writes_only_its_socket_and_config(tmp_path: Path) -> None:
    """The router writes only router.sock and router.json into the state dir."""

    async def scenario() -> None:
        async with running_router(tmp_path) as r:
            await control_call(
                tmp_path / "router.sock", {"op": "apply", "config": single_pool().to_json()}
            )
            names = sorted(p.name for p in tmp_path.iterdir())
            assert names == ["router.json", "router.sock"]
            assert os.stat(tmp_path / "router.sock").st_mode & 0o777 == 0o600
            assert r.port > 0

    run(scenario())
