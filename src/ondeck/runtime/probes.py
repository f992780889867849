"""Health probes: is an instance ready to take traffic (HTTP, TCP or a command)?

The controller runs these on each instance's interval and counts failures.
A failed probe is a result, never an exception: only bugs raise from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ondeck.units import format_duration

_OUTPUT_TAIL = 4096  # bytes of a probe command's output kept to find its last line
_DETAIL_MAX = 200


@dataclass(frozen=True)
class ProbeResult:
    """One probe's verdict, a short human-readable reason and how long it took."""

    ok: bool
    detail: str
    seconds: float


async def probe_http(port: int, path: str, timeout: float, host: str = "127.0.0.1") -> ProbeResult:
    """GET `path`; any 2xx or 3xx answer within `timeout` is healthy."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            status = await _http_status(host, port, path)
    except (OSError, TimeoutError, ValueError) as exc:
        return ProbeResult(False, _failure(exc, timeout), time.monotonic() - started)
    return ProbeResult(200 <= status < 400, f"HTTP {status}", time.monotonic() - started)


async def _http_status(host: str, port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode("latin-1"))
        await writer.drain()
        return _parse_status(await reader.readline())
    finally:
        writer.close()  # no await: this also runs when the timeout cancels us


def _parse_status(line: bytes) -> int:
    """The status code of an HTTP status line (`HTTP/1.1 200 OK`)."""
    parts = line.decode("latin-1").split(maxsplit=2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        shown = line[:60].decode("latin-1").strip() or "connection closed"
        raise ValueError(f"not an HTTP response: {shown!r}")
    return int(parts[1])


async def probe_tcp(port: int, timeout: float, host: str = "127.0.0.1") -> ProbeResult:
    """Healthy when a TCP connection opens within `timeout`.

    A bare non-blocking socket, no stream objects and no extra task: a host
    probes every instance every couple of seconds, so each probe must be cheap.
    """
    started = time.monotonic()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except (OSError, TimeoutError) as exc:
        return ProbeResult(False, _failure(exc, timeout), time.monotonic() - started)
    finally:
        sock.close()
    return ProbeResult(True, "connected", time.monotonic() - started)


def _failure(exc: Exception, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {format_duration(timeout)}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


async def probe_exec(
    argv: Sequence[str], cwd: Path, environ: Mapping[str, str], timeout: float
) -> ProbeResult:
    """Run a command; exit 0 within `timeout` is healthy. Output goes to a temp file."""
    started = time.monotonic()
    # A file rather than a pipe: a backgrounded grandchild holding it cannot stall us.
    with tempfile.TemporaryFile() as output:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=dict(environ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            detail = f"cannot run {argv[0] if argv else '<empty command>'!r}: {exc.strerror or exc}"
            return ProbeResult(False, detail, time.monotonic() - started)
        code = await _wait_or_kill(proc, timeout)
        detail = _exec_detail(code, timeout, _last_line(output))
    return ProbeResult(code == 0, detail, time.monotonic() - started)


async def _wait_or_kill(proc: asyncio.subprocess.Process, timeout: float) -> int | None:
    """The exit code, or None after killing the command's whole group on timeout."""
    try:
        code: int | None = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        code = None
    finally:
        # Its own session made it a group leader: sweep it and anything it left running,
        # also when our caller cancels the probe.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
    return code


def _exec_detail(code: int | None, timeout: float, last_line: str) -> str:
    head = f"timed out after {format_duration(timeout)}" if code is None else f"exit {code}"
    return f"{head}: {last_line}" if last_line else head


def _last_line(output: BinaryIO) -> str:
    """The last non-empty line of what the command printed, shortened for display."""
    size = output.seek(0, os.SEEK_END)
    output.seek(max(0, size - _OUTPUT_TAIL))
    lines = output.read().decode(errors="replace").splitlines()
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return last if len(last) <= _DETAIL_MAX else last[: _DETAIL_MAX - 1] + "…"
