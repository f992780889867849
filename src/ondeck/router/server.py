"""The router process: a listener, the control socket and a deadline sweeper.

`ondeck router` and `python -m ondeck.router` call `run`; tests start a
`RouterServer` in their own event loop. On SIGTERM/SIGINT it stops accepting,
lets in-flight requests finish (up to a grace period) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from pathlib import Path

from ondeck.router.control import CONFIG_NAME, ControlServer, load_config
from ondeck.router.proxy import ClientConnection, ProxyOptions, Router

log = logging.getLogger("ondeck.router")
SWEEP_INTERVAL = 0.25  # seconds between deadline checks
STOP_GRACE = 10.0


def parse_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:8080` or `[::1]:8080` -> (host, port); raises ValueError."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
    return host, int(port)


class RouterServer:
    """One router: owns the proxy listener, the control socket and the sweeper."""

    def __init__(self, state_dir: Path, listen: str, options: ProxyOptions | None = None) -> None:
        self.state_dir = state_dir
        self.host, self.port = parse_listen(listen)
        self.router = Router(load_config(state_dir / CONFIG_NAME), options)
        self.control = ControlServer(self.router, state_dir, self.address)
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Listen for HTTP, then open the control socket."""
        loop = asyncio.get_running_loop()
        router = self.router
        self._server = await loop.create_server(
            lambda: ClientConnection(router), self.host, self.port, backlog=2048, reuse_address=True
        )
        sock = self._server.sockets[0]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = int(sock.getsockname()[1])
        await self.control.start()
        self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        self.router.sweep()
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._schedule_sweep)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop accepting; wait for in-flight requests up to `grace`; close the rest."""
        if self._server is not None:
            self._server.close()
        await self.control.close()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.active for c in self.router.clients):
            await asyncio.sleep(0.05)
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.router.close_all()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


async def serve(state_dir: Path, listen: str, options: ProxyOptions | None = None) -> None:
    """Run a router until SIGTERM or SIGINT."""
    server = RouterServer(state_dir, listen, options)
    await server.start()
    log.info(
        "router serving http://%s (config generation %d, control %s)",
        server.address(),
        server.router.config.generation,
        server.control.socket_path,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("router stopping: finishing in-flight requests")
    await server.stop()


def run(state_dir: Path, listen: str, options: ProxyOptions | None = None) -> None:
    """Entry point of `ondeck router`: serve until a signal; uvloop when installed."""
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(state_dir, listen, options))
        return
    uvloop.run(serve(state_dir, listen, options))
