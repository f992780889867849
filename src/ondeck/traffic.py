"""The controller's side of the router: start it, feed it, drain through it.

`ondeck up` owns no sockets users hit: the router is its own process, so it
keeps serving while the controller restarts. This module starts it when none
answers, pushes a new `RouterConfig` whenever who-serves-what changes, and
waits for in-flight requests to finish before an instance is stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from ondeck.rollout.strategies import EnvTraffic, router_config, same_routing
from ondeck.router.control import RouterControl as ControlSocket
from ondeck.router.control import RouterRefused, RouterUnavailable
from ondeck.router.table import RouterConfig, RouterConfigError
from ondeck.runtime.logs import tail
from ondeck.store import InstanceRecord

log = logging.getLogger("ondeck")

START_TIMEOUT = 10.0
RESTART_RETRY = 0.5  # a router that died while starting is started again after this,
RESTART_RETRY_MAX = 30.0  # doubling up to this
DRAIN_POLL = 0.05
REFUSED = "routing not updated, the router keeps its routes"


class RouterControl(Protocol):
    """What the controller needs of the router: `RouterLink`, or a test's stand-in."""

    @property
    def error(self) -> str | None:
        """Why the router cannot serve, shown in the status."""
        ...

    async def ensure(self) -> bool:
        """A router answers: the running one, or one started now."""
        ...

    async def push(self, envs: Iterable[EnvTraffic]) -> None:
        """Route as `envs` say (sent only when the routing changed)."""
        ...

    async def drain(self, rec: InstanceRecord, envs: Iterable[EnvTraffic]) -> None:
        """Take an instance out of the pools and let its requests finish."""
        ...

    async def stop(self) -> None:
        """`ondeck down`: the router exits."""
        ...

    async def stats(self) -> dict[str, Any]:
        """Per-backend counters (requests, errors, latency buckets) for analysis."""
        ...

    async def metrics(self) -> str:
        """The router's Prometheus text, appended to the controller's."""
        ...


class RouterLink:
    """One router, reached over its control socket in the state dir."""

    def __init__(
        self,
        state_dir: Path,
        listen: str,
        trusted_proxies: tuple[str, ...] = (),
        listen_tls: str | None = None,
    ) -> None:
        self.state_dir, self.listen, self.listen_tls = state_dir, listen, listen_tls
        self.trusted_proxies = trusted_proxies
        self.control = ControlSocket(state_dir / "router.sock")
        self.config: RouterConfig | None = None
        self.generation = 0
        self.error: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None  # the router process, watched like an instance
        self._restarting: asyncio.Task[None] | None = None
        self._lost_again = False

    async def ensure(self) -> bool:
        """A router answers on the socket: the running one, or one started now."""
        if await self.control.ping():
            await self._adopt_generation()
            self._watch()
            return True
        if self._process is not None and self._process.poll() is None:
            return False  # started, not answering yet
        self._spawn()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if await self.control.ping():
                log.info("router listening on %s", self.listen)
                await self._adopt_generation()
                self._watch()
                self.error = None
                return True
            if self._process is not None and self._process.poll() is not None:
                break
            await asyncio.sleep(DRAIN_POLL)
        log_path = self.state_dir / "logs" / "router.log"
        last = tail(log_path, 1).strip()
        self.error = f"the router did not start ({last or 'no output'}); see {log_path}"
        log.error("%s", self.error)
        return False

    def _spawn(self) -> None:
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "ondeck.router", "--state-dir", str(self.state_dir)]
        argv += ["--listen", self.listen]
        if self.listen_tls:
            argv += ["--listen-tls", self.listen_tls]
        for cidr in self.trusted_proxies:
            argv += ["--trusted-proxy", cidr]
        with (logs / "router.log").open("ab") as out:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the data plane outlives the control plane
                env=dict(os.environ),
            )
        (self.state_dir / "router.pid").write_text(f"{self._process.pid}\n")

    # -- watching the router: its exit restarts it at once --------------------------

    def _watch(self) -> None:
        """Watch the router's process by pidfd, as instances are: no wait for a housekeeping."""
        if self._pidfd is not None:
            return
        pid = self._router_pid()
        if pid is None:
            return
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:  # gone between the ping and now: the next ensure starts one
            return
        asyncio.get_running_loop().add_reader(self._pidfd, self._lost)

    def _router_pid(self) -> int | None:
        """Our child, or the router another controller started (router.pid, checked in /proc)."""
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        try:
            pid = int((self.state_dir / "router.pid").read_text())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        ours = str(self.state_dir).encode() in argv and any(b"router" in a for a in argv)
        return pid if ours else None

    def _unwatch(self) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _lost(self) -> None:
        self._unwatch()
        code = self._process.poll() if self._process is not None else None
        self.error = "the router exited" + (f" with {code}" if code is not None else "")
        log.warning("%s; restarting it", self.error)
        self._lost_again = True  # seen by a restart already under way
        if self._restarting is None or self._restarting.done():
            self._restarting = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        """A new router, given at once the routing the old one had (a new one starts empty)."""
        wanted = self.config
        delay = RESTART_RETRY
        while self._lost_again:
            self._lost_again, self.config = False, None
            if not await self.ensure():
                # it died while starting (or cannot start): the error is in the status;
                # try again soon rather than at the next housekeeping
                self._lost_again = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_RETRY_MAX)
                continue
            if wanted is None:
                return
            try:
                config = dataclasses.replace(wanted, generation=self.generation + 1)
                self.generation = await self.control.apply(config)
            except (RouterUnavailable, RouterRefused) as err:
                self.error = str(err)  # died again while being fed: `_lost_again` is set
                continue
            self.config, self.error = config, None

    async def stop(self, timeout: float = 30.0) -> None:
        """`ondeck down`: the router exits (SIGTERM: it finishes the requests in flight)."""
        self.close()
        pid = self._router_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid, self._process) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if _alive(pid, self._process):
            os.kill(pid, signal.SIGKILL)  # a router that ignores TERM must not outlive `down`
        (self.state_dir / "router.pid").unlink(missing_ok=True)
        self._process, self.config = None, None

    def close(self) -> None:
        """Stop watching (the router itself keeps serving)."""
        self._unwatch()
        if self._restarting is not None:
            self._restarting.cancel()

    async def _adopt_generation(self) -> None:
        try:
            current = await self.control.get()
        except (RouterUnavailable, RouterRefused):
            return
        self.generation = max(self.generation, current.generation)
        if self.config is None:
            self.config = current

    async def push(self, envs: Iterable[EnvTraffic]) -> None:
        """Send the routing of `envs` if it changed; a router down is reported, not fatal.

        Routing the router could not serve (a desired state an older ondeck let
        through) is reported too, and the router keeps serving what it has."""
        try:
            config = router_config(envs, self.generation + 1)
        except RouterConfigError as err:
            self.refused(err)
            return
        if self.error is not None and self.error.startswith(REFUSED):
            self.error = None  # servable again; `send` says if the router is not there
        await self.send(config)

    async def send(self, config: RouterConfig) -> None:
        """Send `config` if its routing changed (a host of many apps merges theirs first)."""
        config = dataclasses.replace(config, generation=self.generation + 1)
        if self.config is not None and same_routing(config, self.config):
            return
        try:
            self.generation = await self.control.apply(config)
        except RouterUnavailable as err:
            if self.error is None:
                log.warning("router unreachable, routing not updated: %s", err)
            self.error = str(err)
            return
        except RouterRefused as err:
            self.refused(err)
            return
        self.config, self.error = config, None

    def refused(self, err: Exception) -> None:
        """Routing that cannot be served: said in the status, the running routes kept."""
        error = f"{REFUSED}: {err}; fix the spec"
        if error != self.error:
            log.error("%s", error)
        self.error = error

    async def drain(self, rec: InstanceRecord, envs: Iterable[EnvTraffic]) -> None:
        """Take `rec` out of the pools, then wait (up to its `drain`) for its requests."""
        await self.push(envs)
        await self.drained(rec.id, rec.drain)

    async def drained(self, backend_id: str, seconds: float) -> None:
        """Wait (up to `seconds`) until the router has no request in flight to the backend."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                stats = await self.control.stats()
            except (RouterUnavailable, RouterRefused):
                return
            backend = stats.get("backends", {}).get(backend_id)
            if backend is None or int(backend.get("active", 0)) == 0:
                return
            await asyncio.sleep(DRAIN_POLL)
        log.warning("%s still had requests in flight after its drain time", backend_id)

    async def stats(self) -> dict[str, Any]:
        try:
            backends: dict[str, Any] = (await self.control.stats()).get("backends", {})
        except (RouterUnavailable, RouterRefused):
            return {}
        return backends

    async def metrics(self) -> str:
        try:
            return await self.control.metrics()
        except (RouterUnavailable, RouterRefused):
            return ""


def _alive(pid: int, child: subprocess.Popen[bytes] | None) -> bool:
    """Whether the router still runs: our child is reaped, an adopted one is looked up."""
    if child is not None and child.pid == pid:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
