"""The host loop over apps: `ondeck up --host-file` runs one `Controller` per app listed.

Each app keeps its own state dir (`STATE_DIR/apps/NAME/`: store, mirror,
releases, data, secrets, history) and its own controller loop; they share one
process, one API (api/host.py) and one router (hostrouter.py). The host file is
read again whenever it changes: an app added starts, an app removed is brought
down (instances stopped, routes gone) while the others go on, an app whose
entry changed is restarted (its instances are adopted, not restarted). A bad
host file, or an app that cannot start, never touches the apps that run.
The host file may live in a git repo (`REPO#PATH`): it is fetched every
`--poll` and read at its branch head (source/hostfile.HostFileWatch).
Built by daemon.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ondeck.controller import Controller
from ondeck.environment import SPEC_FILE, Options
from ondeck.errors import OndeckError, UserError
from ondeck.hostrouter import HostRouter, route_guard
from ondeck.source.base import Source
from ondeck.source.hostfile import HostFileRead, HostFileRef, HostFileWatch
from ondeck.spec.host import HostApp, HostFile
from ondeck.spec.load import environment_names, parse
from ondeck.spec.routes import Claim
from ondeck.state.desired import DEFAULT_ENV, Desired
from ondeck.status import AppStatus, HostFileStatus, SourceStatus
from ondeck.traffic import RouterControl

log = logging.getLogger("ondeck")

HOST_FILE_POLL = 1.0  # how often the host file's mtime is looked at
RETRY = 10.0  # an app that could not start is tried again after this
DOWN_WAIT = 180.0  # an app removed: its instances stop gracefully within this

_APP: contextvars.ContextVar[str | None] = contextvars.ContextVar("ondeck_app", default=None)


class AppPrefix(logging.Filter):
    """Log lines written on an app's behalf start with `[APP]`: one log, many apps."""

    def filter(self, record: logging.LogRecord) -> bool:
        app = _APP.get()
        if app is not None and not getattr(record, "ondeck_app", None):
            record.ondeck_app = app
            record.msg = f"[{app}] {record.msg}"
        return True


AppBuilder = Callable[[Options, RouterControl | None], Controller]
SourceBuilder = Callable[[Options], Source]


@dataclass
class RunningApp:
    """One app's controller, running in its own task, and the entry it was started from."""

    entry: HostApp
    envs: tuple[str, ...]
    controller: Controller
    task: asyncio.Task[None]


@dataclass
class Waiting:
    """An app that could not start yet, why, and when it is tried again."""

    entry: HostApp
    error: str
    retry_at: float


def app_options(base: Options, name: str, entry: HostApp, host_dir: Path) -> Options:
    """How one app runs: the host's flags, its own state dir, repo, branch, path and envs.

    A repo that is a local path is read relative to the host file's directory.
    """
    candidate = host_dir / entry.repo
    local = "://" not in entry.repo and ("@" not in entry.repo or candidate.exists())
    repo = str(candidate.resolve()) if local and candidate.exists() else entry.repo
    return dataclasses.replace(
        base,
        repo=repo,
        state_dir=base.state_dir / "apps" / name,
        branch=entry.branch,
        path=entry.path,
        envs=tuple(entry.envs),
    )


def spec_environments(source: Source, rev: str, path: str) -> tuple[str, ...]:
    """The environments `ondeck.yaml` defines at `rev` (blocking: git)."""
    spec_path = f"{path.strip('/')}/{SPEC_FILE}".lstrip("/")
    text = source.read_file(rev, spec_path)
    if text is None:
        raise UserError(f"{spec_path}: not found at {rev[:12]}; add an ondeck.yaml there")
    return tuple(environment_names(parse(text, spec_path)))


class AppHost:
    """Every app of the host file, each run by its own controller."""

    def __init__(
        self,
        host_file: HostFileRef,
        base: Options,
        build: AppBuilder,
        source: SourceBuilder,
        router: HostRouter | None,
    ) -> None:
        self.host_file, self.base, self.build, self.make_source = host_file, base, build, source
        self.router = router
        self.watch = HostFileWatch(host_file, base.state_dir, base.poll)
        self.revision: str | None = None  # the commit the host file was read at (REPO#PATH)
        self.apps: dict[str, RunningApp] = {}
        self.waiting: dict[str, Waiting] = {}
        self.file: HostFile | None = None
        self.error: str | None = None  # why the host file's last change was not applied
        self.changes = 0  # bumped whenever the set of apps changes (the API follows)
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._heads: dict[str, str | None] = {}
        self._restart_after: dict[str, float] = {}  # a restart that failed is tried again then
        self._down: asyncio.Future[list[str]] | None = None

    def load(self) -> HostFile:
        """The host file as it is now (`ondeck up` refuses to start on a bad one)."""
        try:
            return self._took(self.watch.load())
        except OSError as err:
            raise UserError(f"cannot read the host file {self.shown}: {err.strerror}") from err

    @property
    def shown(self) -> str:
        """The host file as messages name it: its path, or REPO#PATH."""
        return self.host_file.shown

    def _took(self, read: HostFileRead) -> HostFile:
        self.file, self.revision = read.host, read.revision
        return read.host

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        self._wake = asyncio.Event()
        prefix = AppPrefix()
        log.addFilter(prefix)
        if self.router is not None:
            await self.router.link.ensure()
        try:
            while not self._stopping:
                if self._down is not None:
                    await self._go_down(self._down)
                    break
                await self._reread()
                await self._converge()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), HOST_FILE_POLL)
                self._wake.clear()
        finally:
            await self._stop_all()
            log.removeFilter(prefix)

    def refresh_host_file(self) -> None:
        """A push to the host file's repo (webhook): fetch it at once, not at the next poll."""
        self.watch.expire()
        if self._wake is not None:
            self._wake.set()

    def stop(self) -> None:
        """Leave the loop; every app's instances keep running (the data plane outlives us)."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    def request_down(self) -> asyncio.Future[list[str]]:
        """`ondeck down` for the whole host: every app stopped, then the router; then exit."""
        self._down = asyncio.get_running_loop().create_future()
        if self._wake is not None:
            self._wake.set()
        return self._down

    async def _go_down(self, future: asyncio.Future[list[str]]) -> None:
        stopped: list[str] = []
        try:
            for name in list(self.apps):
                stopped += await self._bring_down(name)
            if self.router is not None:
                await self.router.link.stop()
        except OndeckError as err:
            future.set_exception(err)
        else:
            future.set_result(stopped)
        self._stopping = True

    async def _reread(self) -> None:
        """Load the host file again when it changed; a bad one leaves every app as it is."""
        try:
            read = await asyncio.to_thread(self.watch.changed)  # REPO#PATH: a git fetch
        except OSError as err:
            self._refused(f"cannot read the host file {self.shown}: {err.strerror}")
            return
        except OndeckError as err:  # a SpecError, a missing file, a fetch that failed
            self._refused(str(err))
            return
        if read is None:
            return
        self._took(read)
        if self.error is not None:
            log.info("host file %s is valid again", self.shown)
        self.error = None

    def _refused(self, message: str) -> None:
        if message != self.error:
            log.error("host file not applied, every app goes on as it was: %s", message)
        self.error = message

    async def _converge(self) -> None:
        wanted = self.file.apps if self.file is not None else {}
        for name in [n for n in self.apps if n not in wanted]:
            log.info("[%s] removed from the host file: stopping it", name)
            await self._bring_down(name)
        for name in [n for n in self.waiting if n not in wanted]:
            del self.waiting[name]
            self.changes += 1
        for name, entry in wanted.items():
            running = self.apps.get(name)
            if running is not None and running.task.done():
                await self._ended(name, running)
            elif running is not None and (entry != running.entry or self._spec_envs_changed(name)):
                await self._restart(name, entry)
            if name not in self.apps:
                await self._start(name, entry)

    async def _restart(self, name: str, entry: HostApp) -> None:
        """A changed entry: the environments it no longer runs are brought down, then its
        controller is replaced (the new one adopts the instances of the others)."""
        running = self.apps[name]
        loop = asyncio.get_running_loop()
        if loop.time() < self._restart_after.get(name, 0.0):
            return
        try:
            envs = await self._envs_of(name, entry)
        except (OndeckError, OSError) as err:
            log.error("[%s] not restarted (retrying in %.0fs), it runs as it was: %s",
                      name, RETRY, err)  # fmt: skip
            self._restart_after[name] = loop.time() + RETRY
            return
        log.info("[%s] its host file entry or environments changed: restarting it", name)
        for env in [e for e in running.controller.envs if e not in (envs or (DEFAULT_ENV,))]:
            try:
                await asyncio.wait_for(running.controller.request_down(env), DOWN_WAIT)
            except (OndeckError, TimeoutError) as err:
                log.error("[%s] [%s] not every instance stopped: %s", name, env, err)
        await self._retire(name)
        await self._start(name, entry, envs)

    async def _envs_of(self, name: str, entry: HostApp) -> tuple[str, ...]:
        """The environments `entry` runs: those it lists, else every one its spec defines."""
        if entry.envs:
            return tuple(entry.envs)
        opts = app_options(self.base, name, entry, self._host_dir)
        return await asyncio.to_thread(self._all_envs, opts)

    async def _start(self, name: str, entry: HostApp, known: tuple[str, ...] | None = None) -> None:
        waiting = self.waiting.get(name)
        loop = asyncio.get_running_loop()
        if waiting is not None and waiting.entry == entry and loop.time() < waiting.retry_at:
            return
        opts = app_options(self.base, name, entry, self._host_dir)
        try:
            envs = known if known is not None else await self._envs_of(name, entry)
        except (OndeckError, OSError) as err:
            if waiting is None or waiting.error != str(err):
                log.error("[%s] cannot start (retrying every %.0fs): %s", name, RETRY, err)
            self.waiting[name] = Waiting(entry, str(err), loop.time() + RETRY)
            self.changes += 1
            return
        opts = dataclasses.replace(opts, envs=envs)
        view = self.router.view(name) if self.router is not None else None
        controller = self.build(opts, view)
        controller.hold_on_down = True  # `ondeck down --app`: held down, not ended
        for env in controller.envs.values():  # first: a refused revision costs nothing
            guard = route_guard(name, lambda: self._desired(name), self._served)
            env.prepare_steps.insert(0, guard)
        context = contextvars.copy_context()  # its tasks and threads log as this app
        context.run(_APP.set, name)
        task = loop.create_task(controller.run(), name=f"app-{name}", context=context)
        task.add_done_callback(lambda _: self._wake.set() if self._wake else None)
        self.apps[name] = RunningApp(entry, envs, controller, task)
        self._heads[name] = None
        self.waiting.pop(name, None)
        self.changes += 1
        log.info("[%s] running %s (%s)", name, opts.repo, ", ".join(envs) or DEFAULT_ENV)

    def _all_envs(self, opts: Options) -> tuple[str, ...]:
        """Every environment the app's spec defines at its branch head (blocking: git)."""
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        source = self.make_source(opts)
        source.fetch()
        return spec_environments(source, source.resolve(), opts.path)

    def _spec_envs_changed(self, name: str) -> bool:
        """An app running every environment of its spec, whose newest fetch has other ones."""
        running = self.apps[name]
        head = running.controller.fetch.head
        if running.entry.envs or head is None or head == self._heads.get(name):
            return False
        self._heads[name] = head
        try:
            envs = spec_environments(running.controller.source, head, running.entry.path)
        except (OndeckError, OSError):
            return False  # a broken spec: its sync says so, what runs stays
        return bool(envs) and envs != running.envs

    def _served(self) -> list[Claim]:
        return self.router.served() if self.router is not None else []

    def _desired(self, me: str) -> list[Desired]:
        """What the other apps are set to serve (their routes are theirs)."""
        return [
            env.desired
            for name, app in self.apps.items()
            if name != me
            for env in app.controller.envs.values()
            if env.desired is not None
        ]

    async def _ended(self, name: str, running: RunningApp) -> None:
        """An app's loop ended by itself: a bug in it (contained to it) or its `down`."""
        del self.apps[name]
        self.changes += 1
        err = running.task.exception() if not running.task.cancelled() else None
        if err is not None:
            log.error("[%s] its controller stopped on a bug, restarting it: %r", name, err)
            retry = asyncio.get_running_loop().time() + RETRY
            self.waiting[name] = Waiting(running.entry, f"controller crashed: {err!r}", retry)

    async def _retire(self, name: str) -> None:
        """Stop an app's controller, leaving its instances running (to be adopted again)."""
        running = self.apps.pop(name)
        running.controller.stop()
        await asyncio.wait([running.task])
        self.changes += 1

    async def _bring_down(self, name: str) -> list[str]:
        """Stop an app's instances, take its routes off the router, end its controller."""
        running = self.apps.pop(name)
        self.changes += 1
        stopped: list[str] = []
        if not running.task.done():
            try:
                stopped = await asyncio.wait_for(running.controller.request_down(None), DOWN_WAIT)
            except (OndeckError, TimeoutError) as err:
                log.error("[%s] not every instance stopped: %s", name, err)
            running.controller.stop()  # held down, now ended
            await asyncio.wait([running.task])
        if self.router is not None:
            await self.router.forget(name)
        return stopped

    async def _stop_all(self) -> None:
        for running in self.apps.values():
            running.controller.stop()
        tasks = [r.task for r in self.apps.values()]
        if tasks:
            await asyncio.wait(tasks)
        if self.router is not None:
            self.router.link.close()

    # -- people --------------------------------------------------------------------

    def app(self, name: str) -> Controller:
        if name not in self.apps:
            known = ", ".join(self.apps) or "none"
            raise UserError(f"unknown app {name!r}; this host runs: {known}")
        return self.apps[name].controller

    def status(self) -> tuple[list[AppStatus], HostFileStatus]:
        """Every app listed (running or why not) and the host file's state."""
        rows = []
        for name, running in self.apps.items():
            ctl = running.controller
            source = SourceStatus(
                repo=ctl.opts.repo,
                branch=ctl.opts.branch,
                path=ctl.opts.path,
                head=ctl.fetch.head,
                error=ctl.fetch.error,
                last_fetch=ctl.fetch.last_ok,
            )
            rows.append(AppStatus(name=name, source=source, envs=list(running.envs)))
        for name, waiting in self.waiting.items():
            entry = waiting.entry
            source = SourceStatus(repo=entry.repo, branch=entry.branch, path=entry.path)
            rows.append(AppStatus(name=name, source=source, envs=entry.envs, error=waiting.error))
        return rows, HostFileStatus(path=self.shown, error=self.error, revision=self.revision)

    @property
    def _host_dir(self) -> Path:
        """Where an app's relative repo path is read from: the host file's directory, or
        (the host file in a repo) the directory `ondeck up` runs in."""
        return Path(self.host_file.path).parent if self.host_file.repo is None else Path.cwd()
