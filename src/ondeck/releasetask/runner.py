"""Runs a release's task once, durably: the controller's prepare phase calls `ensure`.

The task runs in the release directory with the release's environment (its
secrets included), under the wrapper of `__main__.py`, in a session of its
own, its output appended to one log per release (`ondeck logs SERVICE
--release`). The record in the store is written before the spawn returns and
again when the attempt ends, so a controller killed at any point resumes with
the right decision (see `record.decide`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ondeck.errors import ReleaseTaskError
from ondeck.releasetask.record import Next, TaskRecord, TaskState, decide
from ondeck.runtime.logs import tail
from ondeck.runtime.process import read_start_ticks
from ondeck.store import Store

POLL = 0.1
KILL_GRACE = 10.0  # after a timeout: TERM, then KILL this much later
TAIL_LINES = 30
OUTPUT = "output.log"
RESULT = "result.json"


@dataclass(frozen=True)
class TaskKey:
    """Which release a task belongs to: the service's fingerprint names the release."""

    app: str
    env: str
    service: str
    fingerprint: str

    @property
    def kv(self) -> str:
        return f"release-task/{self.app}/{self.env}/{self.service}/{self.fingerprint}"

    def directory(self, state_dir: Path) -> Path:
        return state_dir / "release-tasks" / self.app / self.env / self.service / self.fingerprint


@dataclass(frozen=True)
class Task:
    argv: Sequence[str]
    cwd: Path
    environ: Mapping[str, str]
    timeout: float


def output_path(state_dir: Path, key: TaskKey) -> Path:
    """The whole output of every attempt of this release's task."""
    return key.directory(state_dir) / OUTPUT


class ReleaseTasks:
    """The release tasks of one state dir."""

    def __init__(self, store: Store, state_dir: Path, clock: Callable[[], float] = time.time):
        self.store = store
        self.state_dir = state_dir
        self.clock = clock

    def record(self, key: TaskKey) -> TaskRecord | None:
        raw = self.store.get_kv(key.kv)
        return TaskRecord.from_json(raw) if raw else None

    def _save(self, key: TaskKey, record: TaskRecord) -> None:
        self.store.set_kv(key.kv, record.to_json())

    async def ensure(self, key: TaskKey, task: Task) -> TaskRecord:
        """The task of `key` has succeeded once this returns; `ReleaseTaskError` otherwise."""
        record = self.record(key)
        result = key.directory(self.state_dir) / RESULT
        alive = record is not None and _alive(record)
        step = decide(record, alive, result.exists())
        if step is Next.SKIP:
            assert record is not None
            return record
        popen = None
        if step is Next.RUN:
            record, popen = self._spawn(key, task, record)
        assert record is not None
        return await self._finish(key, task, record, popen)

    def _spawn(
        self, key: TaskKey, task: Task, before: TaskRecord | None
    ) -> tuple[TaskRecord, subprocess.Popen[bytes]]:
        directory = key.directory(self.state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / RESULT).unlink(missing_ok=True)
        attempt = (before.attempt if before else 0) + 1
        now = self.clock()
        log = directory / OUTPUT
        with log.open("ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
            note = (
                " (the last one was interrupted)"
                if before and before.state is TaskState.STARTED
                else ""
            )
            out.write(
                f"=== ondeck: release task, attempt {attempt}{note}, {stamp} UTC: "
                f"{' '.join(task.argv)}\n".encode()
            )
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ondeck.releasetask",
                    str(directory / RESULT),
                    "--",
                    *task.argv,
                ],
                cwd=task.cwd,
                env=dict(task.environ),
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives us; its group is signalled as one
            )
        finally:
            os.close(fd)
        ticks = read_start_ticks(popen.pid) or 0
        record = TaskRecord(TaskState.STARTED, attempt, now, now + task.timeout, popen.pid, ticks)
        self._save(key, record)
        return record, popen

    async def _finish(
        self, key: TaskKey, task: Task, record: TaskRecord, popen: subprocess.Popen[bytes] | None
    ) -> TaskRecord:
        result = key.directory(self.state_dir) / RESULT
        timed_out = False
        while not result.exists() and _running(record, popen):
            if self.clock() >= record.deadline and not timed_out:
                timed_out = True
                await self._kill(record, popen)
                break
            await asyncio.sleep(POLL)
        if popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=5)
        code = _exit_code(result)
        seconds = self.clock() - record.started_at
        if timed_out:
            reason = f"timed out after {task.timeout:.0f}s (release_timeout) and was killed"
        elif code is None:
            reason = "was killed before it could report an exit code"
        elif code < 0:
            reason = f"was killed by signal {signal.Signals(-code).name}"
        else:
            reason = f"exited with code {code}"
        ok = code == 0 and not timed_out
        done = record.finished(ok, code, "" if ok else reason, self.clock())
        self._save(key, done)
        if ok:
            return done
        log = key.directory(self.state_dir) / OUTPUT
        raise ReleaseTaskError(
            f"release task of {key.service} {' '.join(task.argv)!r} {reason} after {seconds:.1f}s; "
            f"nothing was started or stopped. See `ondeck logs {key.service} --release`, fix it "
            "and push a new commit or run `ondeck sync` to retry",
            tail(log, TAIL_LINES),
            code,
        )

    async def _kill(self, record: TaskRecord, popen: subprocess.Popen[bytes] | None) -> None:
        _killpg(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE
        while _running(record, popen) and time.monotonic() < deadline:
            await asyncio.sleep(POLL)
        _killpg(record.pid, signal.SIGKILL)
        while _running(record, popen):
            await asyncio.sleep(POLL)


WRAPPER = b"ondeck.releasetask"


def task_sessions() -> set[int]:
    """The sessions of release tasks running on this host (their wrapper leads each one), so
    the stray check leaves them alone, even before a restarted controller adopts them."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 3 and argv[1] == b"-m" and argv[2] == WRAPPER:
            found.add(int(entry.name))
    return found


def _alive(record: TaskRecord) -> bool:
    return record.pid > 0 and read_start_ticks(record.pid) == record.start_ticks


def _running(record: TaskRecord, popen: subprocess.Popen[bytes] | None) -> bool:
    if popen is not None:
        return popen.poll() is None
    return _alive(record)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _exit_code(result: Path) -> int | None:
    try:
        code = json.loads(result.read_text())["exit"]
    except (OSError, ValueError, KeyError):
        return None
    return int(code)


__all__ = ["ReleaseTasks", "Task", "TaskKey", "output_path"]
