"""The router process: a listener, the control socket and a deadline sweeper.

`ondeck router` and `python -m ondeck.router` call `run`; tests start a
`RouterServer` in their own event loop. With `workers` > 1 the first process
starts the others (same port, SO_REUSEPORT; each its own private control
socket), keeps them alive and in sync. On SIGTERM/SIGINT it stops accepting,
lets in-flight requests finish (up to a grace period) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from ssl import SSLContext

from ondeck.router.accesslog import AccessLog, log_path
from ondeck.router.client import ClientConnection
from ondeck.router.control import (
    CONFIG_NAME,
    PEER_TIMEOUT,
    SOCKET_NAME,
    ControlServer,
    RouterControl,
    RouterRefused,
    RouterUnavailable,
    load_config,
)
from ondeck.router.options import HTTP, HTTPS, Listener, ProxyOptions
from ondeck.router.proxy import Router
from ondeck.router.tls import TlsState
from ondeck.units import parse_address

log = logging.getLogger("ondeck.router")
SWEEP_INTERVAL = 0.25  # seconds between deadline checks
SUPERVISE_INTERVAL = 1.0  # seconds between checks of the other workers
STOP_GRACE = 10.0


def parse_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:8080` or `[::1]:8080` -> (host, port); `:8080` is every address."""
    return parse_address(listen, default_host="0.0.0.0")


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one; return the soft limit now.

    A proxy holds two descriptors per request in flight plus every idle
    keep-alive connection: the usual soft limit of 1,024 is one client's worth.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def worker_socket(state_dir: Path, index: int) -> Path:
    """The private control socket of worker `index` (0 is the public router.sock)."""
    return state_dir / (SOCKET_NAME if index == 0 else f"router-worker-{index}.sock")


class RouterServer:
    """One router process: owns its proxy listener, control socket and sweeper."""

    def __init__(
        self,
        state_dir: Path,
        listen: str,
        options: ProxyOptions | None = None,
        *,
        worker: int = 0,
        reuse_port: bool = False,
        listen_tls: str | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.host, self.port = parse_listen(listen)
        self.tls_address = parse_listen(listen_tls) if listen_tls else None
        self.reuse_port = reuse_port
        self.worker = worker
        self.router = Router(load_config(state_dir / CONFIG_NAME), options)
        if self.tls_address is not None:
            self.router.tls = TlsState(state_dir)
            self.router.tls.load()  # served before any controller speaks: the data plane alone
        self.peers: list[Path] = []
        self.control = ControlServer(
            self.router,
            state_dir,
            self.address,
            worker_socket(state_dir, worker).name,
            lambda: self.peers,
            self.tls_listen,
        )
        self._server: asyncio.Server | None = None
        self.servers: list[asyncio.Server] = []  # every listener, the HTTP one first
        self._sweeper: asyncio.TimerHandle | None = None

    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def tls_listen(self) -> str | None:
        if self.tls_address is None:
            return None
        host, port = self.tls_address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def start(self) -> None:
        """Listen for HTTP, then open the control socket."""
        if self.router.options.access_log:
            self.router.access_log = AccessLog(log_path(self.state_dir, self.worker))
        self._server = await self.listen(self.host, self.port, HTTP)
        self.port = int(self._server.sockets[0].getsockname()[1])
        tls = self.router.tls
        if self.tls_address is not None and tls is not None:
            server = await self.listen(*self.tls_address, HTTPS, ssl=tls.server_context())
            self.tls_address = (self.tls_address[0], int(server.sockets[0].getsockname()[1]))
            self.router.tls_port = self.tls_address[1]
        await self.control.start()
        self._schedule_sweep()

    async def listen(
        self, host: str, port: int, listener: Listener, ssl: SSLContext | None = None
    ) -> asyncio.Server:
        """Accept clients on host:port; each exchange learns its scheme from `listener`.

        With `ssl` the transports terminate TLS and the proxy sees plain HTTP.
        """
        router = self.router
        server = await asyncio.get_running_loop().create_server(
            lambda: ClientConnection(router, listener),
            host,
            port,
            backlog=2048,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            ssl=ssl,
            # a client stalled mid-handshake holds a socket this long at most
            ssl_handshake_timeout=self.router.options.header_timeout if ssl else None,
        )
        self.servers.append(server)
        return server

    def _schedule_sweep(self) -> None:
        self.router.sweep()
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._schedule_sweep)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop accepting; wait for in-flight requests up to `grace`; close the rest."""
        for server in self.servers:
            server.close()
        await self.control.close()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.active for c in self.router.clients):
            await asyncio.sleep(0.05)
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.router.close_all()
        for server in self.servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self.router.access_log is not None:
            await asyncio.to_thread(self.router.access_log.close)


class Workers:
    """The first worker's view of the others: start, restart, resync, stop."""

    def __init__(self, server: RouterServer, count: int, options: ProxyOptions) -> None:
        self.server = server
        self.count = count
        self.options = options
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        for index in range(1, self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        state_dir = self.server.state_dir
        argv = [sys.executable, "-m", "ondeck.router", "--state-dir", str(state_dir)]
        argv += ["--listen", self.server.address(), "--worker-index", str(index)]
        if (tls_listen := self.server.tls_listen()) is not None:
            argv += ["--listen-tls", tls_listen]
        argv += ["--options-json", json.dumps(dataclasses.asdict(self.options))]
        self.procs[index] = subprocess.Popen(argv, stdin=subprocess.DEVNULL)

    async def supervise(self) -> None:
        """Restart a worker that died; push the served config to one that lags."""
        while True:
            await asyncio.sleep(SUPERVISE_INTERVAL)
            for index, proc in list(self.procs.items()):
                if proc.poll() is not None:
                    log.warning(
                        "router worker %d exited (%s): restarting it", index, proc.returncode
                    )
                    self._spawn(index)
                    continue
                await self._resync(index)

    async def _resync(self, index: int) -> None:
        control = RouterControl(worker_socket(self.server.state_dir, index), PEER_TIMEOUT)
        config = self.server.router.config
        with contextlib.suppress(RouterUnavailable, RouterRefused):
            if (await control.get()) != config:
                await control.apply(config)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=STOP_GRACE + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def serve(
    state_dir: Path,
    listen: str,
    options: ProxyOptions | None = None,
    workers: int = 1,
    worker_index: int = 0,
    listen_tls: str | None = None,
) -> None:
    """Run one router process until SIGTERM or SIGINT (or, for a worker, its parent's end)."""
    options = options or ProxyOptions()
    reuse_port = workers > 1 or worker_index > 0
    server = RouterServer(
        state_dir,
        listen,
        options,
        worker=worker_index,
        reuse_port=reuse_port,
        listen_tls=listen_tls,
    )
    if worker_index == 0:
        server.peers = [worker_socket(state_dir, i) for i in range(1, workers)]
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks: list[asyncio.Task[None]] = []
    pool = Workers(server, workers, options) if worker_index == 0 and workers > 1 else None
    if pool is not None:
        pool.start()
        tasks.append(asyncio.create_task(pool.supervise()))
    if worker_index > 0:
        tasks.append(asyncio.create_task(_exit_with_parent(stop)))
    else:
        log.info(
            "router serving http://%s with %d worker(s) (config generation %d, control %s,"
            " open files limit %d)",
            server.address(),
            workers,
            server.router.config.generation,
            server.control.socket_path,
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        if server.tls_listen():
            log.info("router serving https://%s", server.tls_listen())
    await stop.wait()
    for task in tasks:
        task.cancel()
    if pool is not None:
        log.info("router stopping: finishing in-flight requests")
        await asyncio.gather(asyncio.to_thread(pool.stop), server.stop())
    else:
        await server.stop()


async def _exit_with_parent(stop: asyncio.Event) -> None:
    """A worker must not outlive the first worker (it would hold the port)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(SUPERVISE_INTERVAL / 2)
    stop.set()


def run(
    state_dir: Path,
    listen: str,
    options: ProxyOptions | None = None,
    workers: int = 1,
    worker_index: int = 0,
    listen_tls: str | None = None,
) -> None:
    """Entry point of `ondeck router`: serve until a signal; uvloop when installed."""
    state_dir.mkdir(parents=True, exist_ok=True)
    raise_open_files_limit()
    main = serve(state_dir, listen, options, workers, worker_index, listen_tls)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
