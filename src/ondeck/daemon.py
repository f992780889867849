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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ondeck import __version__
from ondeck.clock import SYSTEM_CLOCK, Clock
from ondeck.controller import Controller
from ondeck.environment import Options
from ondeck.errors import UserError
from ondeck.files import write_atomic
from ondeck.https import CertificateManager
from ondeck.permissions import secure_state_dir
from ondeck.runtime.base import ExitCallback, Runtimes
from ondeck.runtime.container import ContainerRuntime
from ondeck.runtime.process import ProcessRuntime
from ondeck.source.git import GitSource
from ondeck.store import open_store
from ondeck.traffic import RouterLink

log = logging.getLogger("ondeck")

AppFactory = Callable[[Controller, str, str | None], Any]  # (controller, token, webhook secret)


def default_runtimes(opts: Options) -> Runtimes:
    """Processes always; containers once a spec asks for them (the engine is reached then)."""

    def process(on_exit: ExitCallback) -> ProcessRuntime:
        return ProcessRuntime(opts.state_dir, on_exit)

    def container(on_exit: ExitCallback) -> ContainerRuntime:
        return ContainerRuntime(opts.state_dir, on_exit, opts.container_host)

    return Runtimes({"process": process, "container": container})


def build_controller(opts: Options, clock: Clock = SYSTEM_CLOCK) -> Controller:
    """A controller with the real collaborators of a state dir."""
    opts.state_dir.mkdir(parents=True, exist_ok=True)
    mirror = opts.state_dir / "repos" / hashlib.sha256(opts.repo.encode()).hexdigest()[:16]
    router = (
        RouterLink(opts.state_dir, opts.listen, opts.trusted_proxies, opts.listen_tls)
        if opts.listen
        else None
    )
    return Controller(
        opts,
        store=open_store(opts.state_dir / "ondeck.db", clock.time()),
        source=GitSource(opts.repo, mirror, opts.branch),
        runtimes=default_runtimes(opts),
        router=router,
        clock=clock,
        certificates=CertificateManager(opts.state_dir, router.control, clock=clock.time)
        if router is not None
        else None,
    )


def serve(opts: Options, api: str, webhook_secret: str | None, app_factory: AppFactory) -> None:
    """Run the controller and its API until SIGTERM/SIGINT; one per state dir."""
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


async def _serve(
    opts: Options, api: str, webhook_secret: str | None, app_factory: AppFactory
) -> None:
    import uvicorn

    sock = _bind(api)
    controller = build_controller(opts)
    secure_state_dir(opts.state_dir)  # 0700, files 0600: also a state dir an older ondeck made
    token = _ensure_token(opts.state_dir)
    config = uvicorn.Config(
        app_factory(controller, token, webhook_secret),
        log_level="warning",
        lifespan="off",
        access_log=False,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()

    def shutdown() -> None:
        log.info("stopping the controller; instances keep running")
        controller.stop()
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
            await controller.run()
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
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        sock = socket.create_server((host, int(port)), reuse_port=False)
    except ValueError as error:
        raise UserError(f"--api {address!r}: write HOST:PORT, e.g. 127.0.0.1:7070") from error
    except OSError as error:
        raise UserError(
            f"cannot listen on {address} ({error.strerror}): is another ondeck running? "
            "Choose another with --api 127.0.0.1:PORT"
        ) from error
    return sock


def _ensure_token(state_dir: Path) -> str:
    path = state_dir / "token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    write_atomic(path, token + "\n", 0o600)
    return token
