"""Health probes against real loopback servers and real commands.

The HTTP server is a tiny asyncio one answering by path; "never answers" is a
server that accepts and then stays silent, so the probe's timeout is what ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from ondeck.runtime.probes import ProbeResult, probe_exec, probe_http, probe_tcp
from ondeck.runtime.process import allocate_port, read_start_ticks

pytestmark = pytest.mark.timeout(60)

PR_SET_CHILD_SUBREAPER = 36
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
STATUS_BY_PATH = {"/healthz": 200, "/moved": 302, "/sick": 503, "/missing": 404}


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    path = request.split()[1]
    has_host = "\r\nhost: 127.0.0.1:" in request.lower()
    status = STATUS_BY_PATH.get(path, 500) if has_host else 400
    writer.write(f"HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n".encode())
    await writer.drain()
    writer.close()


async def _stay_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.read()  # until the prober gives up and closes
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def http(path: str, timeout: float = 5.0) -> ProbeResult:
    async def scenario() -> ProbeResult:
        async with serving(_answer) as port:
            return await probe_http(port, path, timeout)

    return asyncio.run(scenario())


# -- HTTP ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "ok"), [("/healthz", True), ("/moved", True)])
def test_http_2xx_and_3xx_are_healthy(path: str, ok: bool) -> None:
    result = http(path)
    assert result.ok is ok
    assert result.detail == f"HTTP {200 if path == '/healthz' else 302}"
    assert result.seconds >= 0


@pytest.mark.parametrize(("path", "detail"), [("/sick", "HTTP 503"), ("/missing", "HTTP 404")])
def test_http_errors_are_unhealthy(path: str, detail: str) -> None:
    result = http(path)
    assert (result.ok, result.detail) == (False, detail)


def test_http_connection_refused() -> None:
    result = asyncio.run(probe_http(allocate_port(), "/healthz", 5.0))
    assert (result.ok, result.detail) == (False, "connection refused")


def test_http_times_out_when_the_server_never_answers() -> None:
    async def scenario() -> ProbeResult:
        async with serving(_stay_silent) as port:
            return await probe_http(port, "/healthz", 0.3)

    result = asyncio.run(scenario())
    assert (result.ok, result.detail) == (False, "timed out after 300ms")


def test_http_garbage_answer_is_a_failure_not_an_exception() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()
        writer.close()

    async def scenario() -> ProbeResult:
        async with serving(garbage) as port:
            return await probe_http(port, "/", 5.0)

    result = asyncio.run(scenario())
    assert not result.ok and "not an HTTP response" in result.detail


# -- TCP -------------------------------------------------------------------------------------


def test_tcp_connects_to_a_listener() -> None:
    async def scenario() -> ProbeResult:
        async with serving(_stay_silent) as port:
            return await probe_tcp(port, 5.0)

    result = asyncio.run(scenario())
    assert (result.ok, result.detail) == (True, "connected")


def test_tcp_refused() -> None:
    result = asyncio.run(probe_tcp(allocate_port(), 5.0))
    assert (result.ok, result.detail) == (False, "connection refused")


# -- exec ------------------------------------------------------------------------------------


@pytest.fixture
def subreaper() -> Iterator[list[int]]:
    """Orphans of a probe reparent to this test, which reaps them (pids listed by the test)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def run_exec(tmp_path: Path, code: str, timeout: float = 10.0) -> ProbeResult:
    argv = [sys.executable, "-c", textwrap.dedent(code)]
    environ = {"PATH": os.environ["PATH"], "PROBE_WORD": "ready"}
    return asyncio.run(probe_exec(argv, tmp_path, environ, timeout))


def test_exec_exit_0_is_healthy_and_gets_cwd_and_env(tmp_path: Path) -> None:
    result = run_exec(
        tmp_path,
        """
        import os
        print("noise")
        print(os.environ["PROBE_WORD"], os.getcwd())
    """,
    )
    assert result.ok
    assert result.detail == f"exit 0: ready {tmp_path}"


def test_exec_failure_reports_code_and_last_line(tmp_path: Path) -> None:
    result = run_exec(
        tmp_path,
        """
        import sys
        print("first", flush=True)
        print("database unreachable", file=sys.stderr)
        sys.exit(3)
    """,
    )
    assert (result.ok, result.detail) == (False, "exit 3: database unreachable")


def test_exec_missing_command_is_a_failed_probe(tmp_path: Path) -> None:
    result = asyncio.run(probe_exec(["no-such-probe-ondeck"], tmp_path, {"PATH": "/usr/bin"}, 5))
    assert not result.ok and "no-such-probe-ondeck" in result.detail


def test_exec_timeout_kills_the_whole_group(tmp_path: Path, subreaper: list[int]) -> None:
    pidfile = tmp_path / "child.pid"
    code = f"""
        import os, time
        child = os.fork()
        if child == 0:
            time.sleep(600)
        with open({str(pidfile)!r} + ".tmp", "w") as f:
            f.write(str(child))
        os.replace({str(pidfile)!r} + ".tmp", {str(pidfile)!r})
        print("waiting forever", flush=True)
        time.sleep(600)
    """
    # A generous timeout, so the fork surely happened even on a loaded machine.
    result = run_exec(tmp_path, code, timeout=4.0)
    assert (result.ok, result.detail) == (False, "timed out after 4s: waiting forever")
    child = int(pidfile.read_text())
    subreaper.append(child)
    _, status = os.waitpid(child, 0)  # reparented to us: its status proves the kill
    assert os.WTERMSIG(status) == signal.SIGKILL
    assert read_start_ticks(child) is None
