"""The process runtime: app instances as detached local processes.

The controller calls `ProcessRuntime` to start, stop, watch and re-adopt
instances. Each instance leads its own session, so it outlives the controller
and its whole process group can be signalled; a pidfd on the asyncio loop
reports its exit as an event, and pid + start time identify it across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import signal as signals
import socket
import subprocess
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from ondeck.errors import RuntimeFailure
from ondeck.permissions import log_access
from ondeck.runtime.base import ExitCallback, ExitEvent, Handle, InstanceSpec

MARKER = "ONDECK_SUPERVISOR"
INSTANCE_VAR = "ONDECK_INSTANCE"
KILL_WAIT = 30.0  # a SIGKILLed process that is still here after this is stuck in the kernel
_DEAD_STATES = frozenset("ZX")


def supervisor_id(state_dir: Path) -> str:
    """The id this state dir stamps on its instances (so two controllers never mix)."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Stat:
    """The few fields of /proc/PID/stat we rely on."""

    state: str
    session: int
    start_ticks: int


def _read_stat(pid: int) -> _Stat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = text.rpartition(")")[2].split()
    try:
        return _Stat(state=fields[0], session=int(fields[3]), start_ticks=int(fields[19]))
    except (IndexError, ValueError):
        return None


def read_start_ticks(pid: int) -> int | None:
    """Start time of a live process in clock ticks since boot; None if gone or a zombie."""
    stat = _read_stat(pid)
    if stat is None or stat.state in _DEAD_STATES:
        return None
    return stat.start_ticks


def allocate_port(exclude: Collection[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and is not in `exclude`."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in exclude:
            return port
    raise RuntimeFailure("could not find a free TCP port on 127.0.0.1 after 100 tries")


def _signal_number(name: str) -> signals.Signals:
    upper = name.upper()
    try:
        return signals.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"]
    except KeyError:
        raise RuntimeFailure(
            f"unknown stop signal {name!r}: use a name like TERM, INT or QUIT"
        ) from None


def _killpg(pgid: int, sig: int) -> None:
    """Signal a process group; a group that is already gone is fine."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise RuntimeFailure(
            f"not allowed to signal process group {pgid}: it belongs to another user;"
            " run ondeck as the user that started the instance"
        ) from exc


@dataclass
class _Watch:
    """One instance we watch: its pidfd on the loop and the future its exit resolves."""

    handle: Handle
    popen: subprocess.Popen[bytes] | None  # None when adopted: not our child, no exit code
    pidfd: int
    loop: asyncio.AbstractEventLoop
    exited: asyncio.Future[int | None]


class ProcessRuntime:
    """Starts, stops, watches and re-adopts instances as local process sessions."""

    def __init__(self, state_dir: Path, on_exit: ExitCallback) -> None:
        self._supervisor = supervisor_id(state_dir)
        self._on_exit = on_exit
        self._logs = log_access()
        self._watches: dict[str, _Watch] = {}

    async def start(self, spec: InstanceSpec) -> Handle:
        """Spawn the instance detached, logging to `spec.log_path`, and watch its exit."""
        popen = self._spawn(spec)
        stat = _read_stat(popen.pid)
        # Our unreaped child cannot vanish from /proc, even if it already exited.
        start_ticks = stat.start_ticks if stat else 0
        handle = Handle(id=spec.id, pid=popen.pid, start_ticks=start_ticks)
        self._watch(handle, popen, os.pidfd_open(popen.pid))
        return handle

    def _spawn(self, spec: InstanceSpec) -> subprocess.Popen[bytes]:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        created = not spec.log_path.exists()
        # O_APPEND: every write lands at the current end, so `rotate` may truncate under us.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        log_fd = os.open(spec.log_path, flags, 0o600)  # apps log what they should not
        try:
            if created and self._logs.gid is not None:
                os.fchown(log_fd, -1, self._logs.gid)
                os.fchmod(log_fd, self._logs.file_mode)
            return subprocess.Popen(
                spec.argv,
                cwd=spec.cwd,
                env={**spec.environ, MARKER: self._supervisor},
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                close_fds=True,
                # Its own session: it survives the controller and owns a process group.
                start_new_session=True,
            )
        except OSError as exc:
            if created:
                spec.log_path.unlink(missing_ok=True)  # a failed start leaves nothing behind
            raise RuntimeFailure(_spawn_failure(spec, exc)) from exc
        finally:
            os.close(log_fd)

    def _watch(self, handle: Handle, popen: subprocess.Popen[bytes] | None, pidfd: int) -> None:
        loop = asyncio.get_running_loop()
        watch = _Watch(handle, popen, pidfd, loop, loop.create_future())
        self._watches[handle.id] = watch
        loop.add_reader(pidfd, self._exited, watch)

    def _exited(self, watch: _Watch) -> None:
        """The pidfd became readable: the instance's leader is gone."""
        # Before reaping, the zombie leader still pins its pid, so the group id cannot have
        # been reused: kill what the instance left in its group so nothing is orphaned.
        # Members we may not signal are not ours to sweep; the exit must be reported anyway.
        with contextlib.suppress(RuntimeFailure):
            _killpg(watch.handle.pid, signals.SIGKILL)
        if watch.popen is None:
            _reap_if_ours(watch.pidfd)
        code = watch.popen.poll() if watch.popen else None
        self._unwatch(watch)
        if not watch.exited.done():
            watch.exited.set_result(code)
        self._on_exit(ExitEvent(id=watch.handle.id, pid=watch.handle.pid, exit_code=code))

    def _unwatch(self, watch: _Watch) -> None:
        if self._watches.get(watch.handle.id) is watch:
            del self._watches[watch.handle.id]
        watch.loop.remove_reader(watch.pidfd)
        os.close(watch.pidfd)

    async def stop(self, handle: Handle, signal: str, grace: float) -> int | None:
        """Signal the instance's group, SIGKILL it after `grace`; the exit code if known."""
        sig = _signal_number(signal)
        watch = self._watched(handle)
        if watch is None:
            return None  # already gone: its exit was (or, if never ours, cannot be) reported
        _killpg(handle.pid, sig)
        try:
            return await asyncio.wait_for(asyncio.shield(watch.exited), grace)
        except TimeoutError:
            pass
        # Grace is over: the leader and its group go now; `_exited` sweeps any stragglers.
        _killpg(handle.pid, signals.SIGKILL)
        try:
            return await asyncio.wait_for(asyncio.shield(watch.exited), KILL_WAIT)
        except TimeoutError:
            raise RuntimeFailure(
                f"instance {handle.id} (pid {handle.pid}) survived SIGKILL for {KILL_WAIT:.0f}s;"
                " it is probably stuck in the kernel (state D): check `ps -o stat,wchan -p PID`"
            ) from None

    def _watched(self, handle: Handle) -> _Watch | None:
        watch = self._watches.get(handle.id)
        if watch is not None and watch.handle == handle:
            return watch
        # Not watched by us (e.g. started by an earlier controller): watch it now, if it lives.
        return self._watches.get(handle.id) if self.adopt(handle) else None

    def adopt(self, handle: Handle) -> bool:
        """Watch a live instance an earlier controller started; False if it is gone."""
        current = self._watches.get(handle.id)
        if current is not None:
            return current.handle == handle
        try:
            pidfd = os.pidfd_open(handle.pid)
        except ProcessLookupError:
            return False
        # Checked after opening the pidfd: from now on the pid cannot be recycled under us.
        if read_start_ticks(handle.pid) != handle.start_ticks:
            os.close(pidfd)
            return False
        self._watch(handle, None, pidfd)
        return True

    def scan(self) -> dict[str, Handle]:
        """Every live instance of this state dir on the host, by instance id."""
        marker = f"{MARKER}={self._supervisor}".encode()
        found: dict[str, Handle] = {}
        for pid in _pids():
            handle = _marked_leader(pid, marker)
            if handle is not None:
                found[handle.id] = handle
        return found

    def is_alive(self, handle: Handle) -> bool:
        """True while the very process of `handle` runs (not a zombie, not a reused pid)."""
        return read_start_ticks(handle.pid) == handle.start_ticks

    def close(self) -> None:
        """Stop watching; the instances keep running for the next controller to adopt."""
        for watch in list(self._watches.values()):
            self._unwatch(watch)
            watch.exited.cancel()


def _reap_if_ours(pidfd: int) -> None:
    """Collect an adopted zombie when it is our child after all (the controller that
    started it was an earlier runtime in this process): nobody else would. Its code is
    still reported as unknown, like for every adopted process."""
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)


def _spawn_failure(spec: InstanceSpec, exc: OSError) -> str:
    command = spec.argv[0] if spec.argv else "<empty command>"
    head = f"cannot start instance {spec.id}: "
    if exc.filename is not None and str(exc.filename) == str(spec.cwd):
        return head + f"working directory {spec.cwd} does not exist or is not a directory"
    if exc.errno == errno.ENOENT:
        where = f"relative to {spec.cwd}" if "/" in command else "on the instance's PATH"
        return head + (
            f"command {command!r} not found {where};"
            " check `command` in ondeck.yaml or install it on this host"
        )
    if exc.errno == errno.EACCES:
        return (
            head
            + f"command {command!r} is not executable; chmod +x it or run it via its interpreter"
        )
    return head + f"command {command!r} failed to execute: {exc.strerror or exc}"


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def _marked_leader(pid: int, marker: bytes) -> Handle | None:
    """The handle of `pid` if it is a live session leader carrying our marker."""
    before = _read_stat(pid)
    if before is None or before.state in _DEAD_STATES or before.session != pid:
        return None
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None  # vanished mid-scan, or not ours to read
    if marker not in environ:
        return None
    # Re-read: the environ must belong to the same process we looked at first.
    if read_start_ticks(pid) != before.start_ticks:
        return None
    prefix = f"{INSTANCE_VAR}=".encode()
    for item in environ:
        if item.startswith(prefix):
            instance = item[len(prefix) :].decode(errors="replace")
            return Handle(id=instance, pid=pid, start_ticks=before.start_ticks)
    return None
