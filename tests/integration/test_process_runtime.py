"""The process runtime against real processes: start, exit events, stop, adoption, scan.

Every test app is a tiny Python script; every process a test starts is killed and
reaped in a finalizer. Waits are on events or conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ondeck.errors import RuntimeFailure
from ondeck.runtime.base import ExitEvent, Handle, InstanceSpec
from ondeck.runtime.process import (
    MARKER,
    ProcessRuntime,
    allocate_port,
    read_start_ticks,
    supervisor_id,
)

pytestmark = pytest.mark.timeout(60)

DEADLINE = 15.0
PR_SET_CHILD_SUBREAPER = 36

APP = textwrap.dedent(
    """
    import json, os, signal, sys, time
    mode, report = sys.argv[1], sys.argv[2]
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "graceful":
        signal.signal(signal.SIGTERM, lambda *_: os._exit(7))
    child = 0
    if mode == "fork":
        child = os.fork()
        if child == 0:
            while True:
                time.sleep(60)
    print("to stdout", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    facts = {"pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
             "cwd": os.getcwd(), "env": dict(os.environ), "child": child}
    with open(report + ".tmp", "w") as f:
        json.dump(facts, f)
    os.replace(report + ".tmp", report)
    while True:
        time.sleep(60)
    """
)

# An "earlier controller": spawns a detached instance, prints its pid, and exits.
OLD_CONTROLLER = textwrap.dedent(
    """
    import json, os, subprocess, sys
    env = json.loads(sys.argv[1])
    proc = subprocess.Popen(sys.argv[2:], env=env, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    print(proc.pid)
    """
)


@dataclass
class World:
    """The test's directory, the app script, and every pid to kill and reap afterwards."""

    tmp: Path
    app: Path
    pgids: list[int] = field(default_factory=list)
    reap: list[int] = field(default_factory=list)

    def spec(self, instance: str, mode: str = "run", **extra: Any) -> InstanceSpec:
        return InstanceSpec(
            id=instance,
            app="shop",
            env="test",
            service="web",
            argv=(sys.executable, str(self.app), mode, str(self.report(instance))),
            environ={"ONDECK_INSTANCE": instance, "PATH": os.environ["PATH"], "GREETING": "hi"},
            cwd=self.tmp,
            log_path=self.tmp / "logs" / f"{instance}.log",
            **extra,
        )

    def report(self, instance: str) -> Path:
        return self.tmp / f"{instance}.json"

    def track(self, handle: Handle) -> Handle:
        self.pgids.append(handle.pid)
        return handle


def _set_subreaper(on: bool) -> None:
    """Orphans of our tests reparent to us (not to an init that may never reap them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    app = tmp_path / "app.py"
    app.write_text(APP)
    w = World(tmp=tmp_path, app=app)
    _set_subreaper(True)
    try:
        yield w
    finally:
        for pgid in w.pgids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        _reap(w.reap)
        _set_subreaper(False)


def _reap(pids: list[int]) -> None:
    """Collect the zombies of orphans that were reparented to this test process."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


class Exits:
    """Collects on_exit events; tests await them instead of sleeping."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ExitEvent] = asyncio.Queue()
        self.seen: list[ExitEvent] = []

    def __call__(self, event: ExitEvent) -> None:
        self.seen.append(event)
        self.queue.put_nowait(event)

    async def next(self) -> ExitEvent:
        return await asyncio.wait_for(self.queue.get(), DEADLINE)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def ready(world: World, instance: str) -> dict[str, Any]:
    report = world.report(instance)
    await wait_until(report.exists, f"{instance} to report")
    facts: dict[str, Any] = json.loads(report.read_text())
    return facts


def run(scenario: Callable[[], Any]) -> Any:
    return asyncio.run(scenario())


# -- helpers ---------------------------------------------------------------------------------


def test_supervisor_id_is_stable_per_resolved_state_dir(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    same = supervisor_id(tmp_path / "state" / ".." / "state")
    assert supervisor_id(tmp_path / "state") == same
    assert len(same) == 16 and int(same, 16) >= 0
    assert supervisor_id(tmp_path / "other") != same


def test_read_start_ticks_of_self_and_of_a_gone_process() -> None:
    ticks = read_start_ticks(os.getpid())
    assert ticks is not None and ticks > 0
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert read_start_ticks(proc.pid) is None


def test_read_start_ticks_of_a_zombie_is_none() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        pidfd = os.pidfd_open(proc.pid)
        select.select([pidfd], [], [], DEADLINE)  # exited, not yet reaped: a zombie
        os.close(pidfd)
        assert read_start_ticks(proc.pid) is None
    finally:
        proc.wait()


def test_allocate_port_gives_a_bindable_port_outside_exclude() -> None:
    first = allocate_port()
    second = allocate_port(exclude={first})
    assert second != first
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", second))
        sock.listen()


# -- start -----------------------------------------------------------------------------------


def test_start_runs_in_own_session_with_exact_env_and_logs_both_streams(world: World) -> None:
    async def scenario() -> None:
        exits = Exits()
        runtime = ProcessRuntime(world.tmp / "state", exits)
        spec = world.spec("web-1")
        handle = world.track(await runtime.start(spec))
        facts = await ready(world, "web-1")
        assert handle.pid == facts["pid"] == facts["sid"] == facts["pgid"]
        assert handle.start_ticks == read_start_ticks(handle.pid)
        assert runtime.is_alive(handle)
        # Python itself may add LC_CTYPE under a C locale; nothing else is added.
        env = {k: v for k, v in facts["env"].items() if k != "LC_CTYPE"}
        assert env == {**spec.environ, MARKER: supervisor_id(world.tmp / "state")}
        assert Path(facts["cwd"]) == world.tmp
        await wait_until(lambda: "to stderr" in spec.log_path.read_text(), "both streams logged")
        assert spec.log_path.read_text().splitlines() == ["to stdout", "to stderr"]
        await runtime.stop(handle, "TERM", 5)
        runtime.close()

    run(scenario)


def test_start_appends_to_an_existing_log(world: World) -> None:
    async def scenario() -> None:
        runtime = ProcessRuntime(world.tmp / "state", Exits())
        spec = world.spec("web-1")
        spec.log_path.parent.mkdir(parents=True)
        spec.log_path.write_text("earlier run\n")
        handle = world.track(await runtime.start(spec))
        await wait_until(lambda: "to stderr" in spec.log_path.read_text(), "log written")
        assert spec.log_path.read_text().startswith("earlier run\nto stdout\n")
        await runtime.stop(handle, "TERM", 5)
        runtime.close()

    run(scenario)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"argv": ("no-such-command-ondeck",)}, "not found"),
        ({"argv": ("./not-executable.sh",)}, "not executable"),
        ({"cwd": Path("/nonexistent/ondeck/release")}, "working directory"),
    ],
)
def test_exec_failure_raises_runtime_failure_and_leaves_nothing(
    world: World, change: dict[str, Any], expected: str
) -> None:
    (world.tmp / "not-executable.sh").write_text("#!/bin/sh\necho hi\n")

    async def scenario() -> None:
        exits = Exits()
        runtime = ProcessRuntime(world.tmp / "state", exits)
        spec = world.spec("web-1")
        spec = InstanceSpec(**{**spec.__dict__, **change})
        with pytest.raises(RuntimeFailure) as failure:
            await runtime.start(spec)
        message = str(failure.value)
        assert expected in message and "web-1" in message
        if "argv" in change:
            assert change["argv"][0] in message
        assert runtime.scan() == {}
        assert not spec.log_path.exists()
        await asyncio.sleep(0)
        assert exits.seen == []
        runtime.close()

    run(scenario)


# -- exit events and stop --------------------------------------------------------------------


def test_kill_9_fires_on_exit_with_minus_9(world: World) -> None:
    async def scenario() -> None:
        exits = Exits()
        runtime = ProcessRuntime(world.tmp / "state", exits)
        handle = world.track(await runtime.start(world.spec("web-1")))
        await ready(world, "web-1")
        os.kill(handle.pid, signal.SIGKILL)
        event = await exits.next()
        assert event == ExitEvent(id="web-1", pid=handle.pid, exit_code=-9)
        assert not runtime.is_alive(handle)
        # Stopping what is already gone returns at once and reports nothing twice.
        assert await runtime.stop(handle, "TERM", 30) is None
        assert exits.seen == [event]
        runtime.close()

    run(scenario)


def test_a_normal_exit_reports_its_code(world: World) -> None:
    async def scenario() -> None:
        exits = Exits()
        runtime = ProcessRuntime(world.tmp / "state", exits)
        spec = InstanceSpec(
            **{
                **world.spec("job-1").__dict__,
                "argv": (sys.executable, "-c", "raise SystemExit(3)"),
            }
        )
        handle = world.track(await runtime.start(spec))
        assert await exits.next() == ExitEvent(id="job-1", pid=handle.pid, exit_code=3)
        runtime.close()

    run(scenario)


def test_stop_with_term_is_honoured_and_fires_on_exit_once(world: World) -> None:
    async def scenario() -> None:
        exits = Exits()
        runtime = ProcessRuntime(world.tmp / "state", exits)
        handle = world.track(await runtime.start(world.spec("web-1", "graceful")))
        await ready(world, "web-1")
        assert await runtime.stop(handle, "TERM", 30) == 7
        await asyncio.sleep(0)
        assert exits.seen == [ExitEvent(id="web-1", pid=handle.pid, exit_code=7)]
        assert not runtime.is_alive(handle)
        runtime.close()

    run(scenario)


def test_stop_escalates_to_kill_when_term_is_ignored(world: World) -> None:
    async def scenario() -> None:
        exits = Exits()
        runtime = ProcessRuntime(world.tmp / "state", exits)
        handle = world.track(await runtime.start(world.spec("web-1", "ignore-term")))
        await ready(world, "web-1")
        assert await runtime.stop(handle, "SIGTERM", 0.3) == -9
        assert [e.exit_code for e in exits.seen] == [-9]
        runtime.close()

    run(scenario)


def test_stop_kills_a_child_the_instance_forked(world: World) -> None:
    async def scenario() -> None:
        runtime = ProcessRuntime(world.tmp / "state", Exits())
        handle = world.track(await runtime.start(world.spec("web-1", "fork")))
        child = (await ready(world, "web-1"))["child"]
        world.reap.append(child)
        assert os.getpgid(child) == handle.pid
        assert await runtime.stop(handle, "TERM", 5) == -15
        # The orphaned child was reparented to us (subreaper): its status proves the kill.
        _, status = os.waitpid(child, 0)
        assert os.WIFSIGNALED(status)
        runtime.close()

    run(scenario)


def test_a_crashed_leader_takes_its_group_with_it(world: World) -> None:
    async def scenario() -> None:
        exits = Exits()
        runtime = ProcessRuntime(world.tmp / "state", exits)
        handle = world.track(await runtime.start(world.spec("web-1", "fork")))
        child = (await ready(world, "web-1"))["child"]
        world.reap.append(child)
        os.kill(handle.pid, signal.SIGKILL)
        assert (await exits.next()).exit_code == -9
        _, status = os.waitpid(child, 0)
        assert os.WTERMSIG(status) == signal.SIGKILL
        runtime.close()

    run(scenario)


def test_stop_rejects_an_unknown_signal_name(world: World) -> None:
    async def scenario() -> None:
        runtime = ProcessRuntime(world.tmp / "state", Exits())
        handle = world.track(await runtime.start(world.spec("web-1")))
        with pytest.raises(RuntimeFailure, match="NOPE"):
            await runtime.stop(handle, "NOPE", 1)
        await runtime.stop(handle, "KILL", 1)
        runtime.close()

    run(scenario)


# -- adoption and scan -----------------------------------------------------------------------


def _spawn_as_old_controller(world: World, spec: InstanceSpec) -> Handle:
    """Start `spec` detached from a separate, short-lived controller process."""
    env = {**spec.environ, MARKER: supervisor_id(world.tmp / "state")}
    out = subprocess.run(
        [sys.executable, "-c", OLD_CONTROLLER, json.dumps(env), *spec.argv],
        cwd=spec.cwd,
        check=True,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    pid = int(out.stdout)
    world.pgids.append(pid)
    world.reap.append(pid)
    ticks = read_start_ticks(pid)
    assert ticks is not None
    return Handle(id=spec.id, pid=pid, start_ticks=ticks)


def test_adopt_watches_a_process_of_an_earlier_controller(world: World) -> None:
    async def scenario() -> None:
        handle = _spawn_as_old_controller(world, world.spec("web-1"))
        await ready(world, "web-1")
        assert os.getppid() != handle.pid  # sanity: not a child of our runtime
        exits = Exits()
        runtime = ProcessRuntime(world.tmp / "state", exits)
        assert runtime.scan() == {"web-1": handle}
        assert runtime.adopt(handle)
        assert runtime.adopt(handle)  # idempotent: still one watch
        os.kill(handle.pid, signal.SIGKILL)
        assert await exits.next() == ExitEvent(id="web-1", pid=handle.pid, exit_code=None)
        await asyncio.sleep(0)
        assert len(exits.seen) == 1
        runtime.close()

    run(scenario)


def test_stop_of_an_adopted_process_escalates_and_returns_none(world: World) -> None:
    async def scenario() -> None:
        handle = _spawn_as_old_controller(world, world.spec("web-1", "ignore-term"))
        await ready(world, "web-1")
        exits = Exits()
        runtime = ProcessRuntime(world.tmp / "state", exits)
        assert runtime.adopt(handle)
        assert await runtime.stop(handle, "TERM", 0.3) is None
        assert not runtime.is_alive(handle)
        assert exits.seen == [ExitEvent(id="web-1", pid=handle.pid, exit_code=None)]
        runtime.close()

    run(scenario)


def test_adopt_refuses_a_wrong_start_time_or_a_gone_process(world: World) -> None:
    async def scenario() -> None:
        handle = _spawn_as_old_controller(world, world.spec("web-1"))
        exits = Exits()
        runtime = ProcessRuntime(world.tmp / "state", exits)
        reused = Handle(id="web-1", pid=handle.pid, start_ticks=handle.start_ticks + 1)
        assert not runtime.adopt(reused)
        assert not runtime.is_alive(reused)
        os.kill(handle.pid, signal.SIGKILL)
        await wait_until(lambda: not runtime.is_alive(handle), "the process to die")
        assert not runtime.adopt(handle)  # a zombie is not adopted
        os.waitpid(handle.pid, 0)
        assert not runtime.adopt(handle)  # nor a reaped process
        assert await runtime.stop(handle, "TERM", 30) is None
        await asyncio.sleep(0)
        assert exits.seen == []
        runtime.close()

    run(scenario)


def test_scan_finds_only_our_marked_session_leaders(world: World) -> None:
    async def scenario() -> None:
        ours = ProcessRuntime(world.tmp / "state", Exits())
        theirs = ProcessRuntime(world.tmp / "other-state", Exits())
        a = world.track(await ours.start(world.spec("web-1", "fork")))
        b = world.track(await ours.start(world.spec("web-2")))
        other = world.track(await theirs.start(world.spec("web-3")))
        unmarked = subprocess.Popen(
            [sys.executable, str(world.app), "run", str(world.report("web-4"))],
            env={"ONDECK_INSTANCE": "web-4", "PATH": os.environ["PATH"]},
            start_new_session=True,
            stdout=subprocess.DEVNULL,
        )
        world.pgids.append(unmarked.pid)
        child = (await ready(world, "web-1"))["child"]
        world.reap.append(child)
        for instance in ("web-2", "web-3", "web-4"):
            await ready(world, instance)
        assert ours.scan() == {"web-1": a, "web-2": b}
        assert theirs.scan() == {"web-3": other}
        for runtime, handle in ((ours, a), (ours, b), (theirs, other)):
            assert await runtime.stop(handle, "KILL", 5) == -9
        ours.close()
        theirs.close()
        unmarked.kill()
        unmarked.wait()

    run(scenario)


# Python warns when the first runtime's Popen is collected: this process abandons its child.
@pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning")
def test_close_leaves_instances_running(world: World) -> None:
    async def scenario() -> None:
        exits = Exits()
        runtime = ProcessRuntime(world.tmp / "state", exits)
        handle = world.track(await runtime.start(world.spec("web-1")))
        await ready(world, "web-1")
        runtime.close()
        assert runtime.is_alive(handle)
        successor = ProcessRuntime(world.tmp / "state", exits)
        assert successor.scan() == {"web-1": handle}
        assert successor.adopt(handle)
        assert await successor.stop(handle, "TERM", 5) is None
        assert [e.exit_code for e in exits.seen] == [None]
        successor.close()

    run(scenario)
