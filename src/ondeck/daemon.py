"""`ondeck up`'s wiring: the lock, the collaborators, the API server and its socket, the token.

cli.py parses the flags and calls `serve`; `build_controller` makes the
default collaborators (SQLite store, git mirror, process and container
runtimes, the router link). The API app comes in as a factory, so this module
stays below the adapters (api/, cli.py) that import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from ondeck import __version__
from ondeck.apphost import AppHost
from ondeck.clock import SYSTEM_CLOCK, Clock
from ondeck.controller import Controller
from ondeck.environment import Options
from ondeck.errors import UserError
from ondeck.files import write_atomic
from ondeck.hostrouter import HostRouter
from ondeck.https import CertificateManager
from ondeck.permissions import secure_state_dir
from ondeck.runtime.base import ExitCallback, Runtimes
from ondeck.runtime.container import ContainerRuntime
from ondeck.runtime.kubernetes import Cluster, connect
from ondeck.runtime.process import ProcessRuntime
from ondeck.source.git import GitSource
from ondeck.source.hostfile import HostFileRef
from ondeck.store import open_store
from ondeck.traffic import RouterControl, RouterLink
from ondeck.units import parse_address

log = logging.getLogger("ondeck")

AppFactory = Callable[[Controller, str, str | None], Any]  # (controller, token, webhook secret)
HostAppFactory = Callable[[AppHost, str, str | None], Any]  # the same, for a host of many apps


def default_runtimes(opts: Options) -> Runtimes:
    """Processes always; containers once a spec asks for them (the engine is reached then)."""

    def process(on_exit: ExitCallback) -> ProcessRuntime:
        return ProcessRuntime(opts.state_dir, on_exit)

    def container(on_exit: ExitCallback) -> ContainerRuntime:
        return ContainerRuntime(opts.state_dir, on_exit, opts.container_host)

    return Runtimes({"process": process, "container": container})


def default_source(opts: Options) -> GitSource:
    """The git mirror of the state dir's repo."""
    mirror = opts.state_dir / "repos" / hashlib.sha256(opts.repo.encode()).hexdigest()[:16]
    return GitSource(opts.repo, mirror, opts.branch)


def build_controller(opts: Options, clock: Clock = SYSTEM_CLOCK) -> Controller:
    """A controller with the real collaborators of a state dir."""
    opts.state_dir.mkdir(parents=True, exist_ok=True)
    router = (
        RouterLink(opts.state_dir, opts.listen, opts.trusted_proxies, opts.listen_tls)
        if opts.listen
        else None
    )
    return Controller(
        opts,
        store=open_store(opts.state_dir / "ondeck.db", clock.time()),
        source=default_source(opts),
        runtimes=default_runtimes(opts),
        router=router,
        clock=clock,
        certificates=CertificateManager(opts.state_dir, router.control, clock=clock.time)
        if router is not None
        else None,
    )


def build_app_controller(opts: Options, router: RouterControl | None) -> Controller:
    """One app of a host file: its own state dir, the host's router (HTTPS: not yet)."""
    opts.state_dir.mkdir(parents=True, exist_ok=True)
    secure_state_dir(opts.state_dir)
    return Controller(
        opts,
        store=open_store(opts.state_dir / "ondeck.db", SYSTEM_CLOCK.time()),
        source=default_source(opts),
        runtimes=default_runtimes(opts),
        router=router,
    )


def build_host(host_file: HostFileRef, opts: Options) -> AppHost:
    """`ondeck up --host-file`: every app of the file, one router in the host's state dir."""
    if opts.listen_tls:
        raise UserError(
            "--listen-tls with --host-file: not supported yet; "
            "run an app that needs HTTPS on its own (`ondeck up REPO --listen-tls ...`)"
        )
    if (opts.state_dir / "repos").exists():  # a mirror at the top: `up REPO` was here
        raise UserError(
            f"{opts.state_dir} holds the state of `ondeck up REPO` (one app): "
            "give `--host-file` a state dir of its own (--state-dir), its apps live in apps/NAME/"
        )
    link = RouterLink(opts.state_dir, opts.listen, opts.trusted_proxies) if opts.listen else None
    host = AppHost(
        host_file,
        opts,
        build_app_controller,
        default_source,
        HostRouter(link) if link is not None else None,
    )
    host.load()  # a bad host file: `ondeck up` says so and does not start
    return host


def serve(opts: Options, api: str, webhook_secret: str | None, app_factory: AppFactory) -> None:
    """Run the controller and its API until SIGTERM/SIGINT; one per state dir."""
    if opts.kubeconfig is not None or opts.kube_context is not None:
        # asked for a cluster by name: one that does not load stops `up` before anything runs
        connect(Cluster(opts.kubeconfig, opts.kube_context)).close()  # type: ignore[no-untyped-call]
    with _lock(opts.state_dir):
        asyncio.run(_serve(opts, api, webhook_secret, app_factory))


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    """One controller per state dir: a second one would start every instance twice."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise UserError(
                f"another `ondeck up` is already running with state dir {directory}"
            ) from error
        yield


def serve_host(
    host_file: HostFileRef,
    opts: Options,
    api: str,
    webhook_secret: str | None,
    app_factory: HostAppFactory,
) -> None:
    """`ondeck up --host-file`: every app of the file in one process, API and router."""
    with _lock(opts.state_dir):
        asyncio.run(_serve_host(host_file, opts, api, webhook_secret, app_factory))


async def _serve_host(
    host_file: HostFileRef,
    opts: Options,
    api: str,
    webhook_secret: str | None,
    app_factory: HostAppFactory,
) -> None:
    sock = _bind(api)
    host = build_host(host_file, opts)
    secure_state_dir(opts.state_dir)
    token = _ensure_token(opts.state_dir)
    await _run(opts, sock, app_factory(host, token, webhook_secret), host.run, host.stop)


async def _serve(
    opts: Options, api: str, webhook_secret: str | None, app_factory: AppFactory
) -> None:
    if (opts.state_dir / "apps").is_dir():
        raise UserError(
            f"{opts.state_dir} holds the apps of `ondeck up --host-file`: run that again, "
            "or give `ondeck up REPO` a state dir of its own (--state-dir)"
        )
    sock = _bind(api)
    controller = build_controller(opts)
    secure_state_dir(opts.state_dir)  # 0700, files 0600: also a state dir an older ondeck made
    token = _ensure_token(opts.state_dir)
    asgi = app_factory(controller, token, webhook_secret)
    await _run(opts, sock, asgi, controller.run, controller.stop)


async def _run(
    opts: Options,
    sock: socket.socket,
    asgi: Any,
    run: Callable[[], Awaitable[None]],
    stop: Callable[[], None],
) -> None:
    """Serve the API on `sock` while `run` (the controller loop) runs; both end together."""
    import uvicorn

    config = uvicorn.Config(asgi, log_level="warning", lifespan="off", access_log=False)
    server = _Server(config)
    loop = asyncio.get_running_loop()

    def shutdown() -> None:
        log.info("stopping the controller; instances keep running")
        stop()
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown)
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    try:
        write_atomic(opts.state_dir / "api.json", json.dumps({"url": url, "pid": os.getpid()}))
    except OSError as err:  # a full disk: supervise anyway, clients need --api
        log.error("cannot write %s/api.json (%s): clients need --api %s", opts.state_dir, err, url)
    log.info(
        "ondeck %s: API on %s, state in %s, watching %s",
        __version__,
        url,
        opts.state_dir,
        opts.repo,
    )

    async def control() -> None:
        try:
            await run()
        finally:  # `ondeck down` (or a crash) ends the loop: the API goes with it
            server.should_exit = True

    await asyncio.gather(control(), server.serve(sockets=[sock]))


class _Server:
    """uvicorn without its own signal handling: `ondeck up` owns SIGTERM/SIGINT."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self._server = Quiet(config)

    @property
    def should_exit(self) -> bool:
        return bool(self._server.should_exit)

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._server.should_exit = value

    async def serve(self, sockets: list[socket.socket]) -> None:
        await self._server.serve(sockets=sockets)


def _bind(address: str) -> socket.socket:
    host, port = parse_address(address, "--api", "127.0.0.1:7070", default_host="127.0.0.1")
    try:
        sock = listening_socket(host, port)
    except OSError as error:
        raise UserError(
            f"cannot listen on {address} ({error.strerror}): is another ondeck running? "
            "Choose another with --api 127.0.0.1:PORT"
        ) from error
    return sock


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP listening socket whose accepted connections asyncio serves without Nagle.

    asyncio turns TCP_NODELAY on only for sockets whose protocol number says TCP;
    `socket.create_server` leaves it 0, and then every keep-alive answer the API
    writes as headers + body waited for the client's delayed ACK: 40 ms a request.
    """
    family, kind, proto, _, where = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _ensure_token(state_dir: Path) -> str:
    path = state_dir / "token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    write_atomic(path, token + "\n", 0o600)
    return token
