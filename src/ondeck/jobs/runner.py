"""Runs of scheduled jobs: started detached, recorded, timed out, adopted after a restart.

The environment decides when (`schedule.due`) and calls `start`; this module
spawns the run in a session of its own under the release-task wrapper (which
writes the exit code to a file, so a controller restarted mid-run still learns
how it ended), appends its output to the job's log, and keeps each job's
record in the store (kv `jobs/APP/ENV/NAME`: the last slot handled and the
last runs), written before the spawn returns and again when the run ends.
A restarted controller calls `adopt`: a run whose process still lives is
watched again, never started twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from ondeck.runtime.process import read_start_ticks
from ondeck.store import Store

log = logging.getLogger("ondeck.jobs")

POLL = 0.05
KILL_GRACE = 10.0
KEEP_RUNS = 50


class RunResult(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # non-zero exit
    TIMED_OUT = "timed-out"
    KILLED = "killed"  # by a signal, or replaced by a newer run
    LOST = "lost"  # gone without an exit code (host reboot, group killed)


@dataclass(frozen=True)
class Run:
    """One run of a job, as stored and as `ondeck job history` shows it."""

    id: int
    trigger: str
    started_at: float
    deadline: float
    pid: int = 0
    start_ticks: int = 0
    slot: float | None = None
    result: RunResult = RunResult.RUNNING
    exit_code: int | None = None
    finished_at: float | None = None
    reason: str = ""
    kube_job: str = ""  # on Kubernetes: the Job this run is (jobs/kube.py)

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "result": self.result.value, "duration": self.duration}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        data = {k: v for k, v in data.items() if k != "duration"}
        return cls(**{**data, "result": RunResult(data["result"])})


@dataclass
class JobRecord:
    """What the store keeps of one job: the last slot handled and its last runs."""

    last_slot: float | None = None
    next_id: int = 1
    runs: list[Run] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "last_slot": self.last_slot,
                "next_id": self.next_id,
                "runs": [r.to_json() for r in self.runs[-KEEP_RUNS:]],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> JobRecord:
        data = json.loads(text)
        return cls(data["last_slot"], data["next_id"], [Run.from_json(r) for r in data["runs"]])

    def running(self) -> list[Run]:
        return [r for r in self.runs if r.result is RunResult.RUNNING]

    def last_finished(self) -> Run | None:
        return next((r for r in reversed(self.runs) if r.result is not RunResult.RUNNING), None)

    def last_success(self) -> Run | None:
        return next((r for r in reversed(self.runs) if r.result is RunResult.SUCCEEDED), None)


@dataclass(frozen=True)
class Invocation:
    """How to run a job: argv in a directory with an environment, bounded in time."""

    argv: Sequence[str]
    cwd: Path
    environ: Mapping[str, str]
    timeout: float


OnDone = Callable[[str, Run], None]


class JobRunner:
    """The jobs of one app in one environment."""

    def __init__(
        self,
        store: Store,
        state_dir: Path,
        app: str,
        env: str,
        on_done: OnDone | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.state_dir, self.app, self.env = store, state_dir, app, env
        self.on_done = on_done
        self.clock = clock
        self._watchers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._popens: dict[tuple[str, int], subprocess.Popen[bytes]] = {}
        self._stopping: dict[tuple[str, int], str] = {}  # runs we stop, and why
        self.changes = 0  # bumped when a run starts or ends: the status shows them

    # -- records -----------------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"jobs/{self.app}/{self.env}/{name}"

    def record(self, name: str) -> JobRecord:
        raw = self.store.get_kv(self._key(name))
        return JobRecord.from_json(raw) if raw else JobRecord()

    def _save(self, name: str, record: JobRecord) -> None:
        self.store.set_kv(self._key(name), record.to_json())
        self.changes += 1

    def save(self, name: str, record: JobRecord) -> None:
        """Store a record changed elsewhere (runs read from a cluster: kubejobs.py)."""
        self._save(name, record)

    def handled(self, name: str, slot: float) -> None:
        """The slot is dealt with (started, skipped or first seen): never acted on again."""
        record = self.record(name)
        record.last_slot = slot
        self._save(name, record)

    def directory(self, name: str) -> Path:
        return self.state_dir / "jobs" / self.app / self.env / name

    def log_path(self, name: str) -> Path:
        """Every run's output, each behind a header line: `ondeck logs --job NAME`."""
        return self.state_dir / "logs" / self.app / self.env / f"job-{name}.log"

    # -- runs ----------------------------------------------------------------------

    def start(self, name: str, how: Invocation, trigger: str, slot: float | None = None) -> Run:
        """Spawn a run now; its record is stored before this returns."""
        record = self.record(name)
        run_id = record.next_id
        directory = self.directory(name)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        result = directory / f"{run_id}.result"
        result.unlink(missing_ok=True)
        logfile = self.log_path(name)
        logfile.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = self.clock()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
        fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(
                fd, f"=== ondeck: job {name}, run {run_id} ({trigger}), {stamp} UTC\n".encode()
            )
            popen = subprocess.Popen(
                [sys.executable, "-m", "ondeck.releasetask", str(result), "--", *how.argv],
                cwd=how.cwd,
                env=dict(how.environ),
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the controller; its group is signalled as one
            )
        except OSError as err:
            os.write(fd, f"ondeck: cannot start: {err.strerror}\n".encode())
            return self.refused(name, trigger, slot, f"cannot start: {err.strerror}")
        finally:
            os.close(fd)
        run = Run(
            run_id,
            trigger,
            now,
            now + how.timeout,
            popen.pid,
            read_start_ticks(popen.pid) or 0,
            slot,
        )
        record.runs.append(run)
        record.next_id = run_id + 1
        if slot is not None:
            record.last_slot = slot  # one write: a crash cannot leave the slot due again
        self._save(name, record)
        self._popens[(name, run_id)] = popen
        self._watch(name, run)
        log.info("[%s] job %s run %d started (%s)", self.env, name, run_id, trigger)
        return run

    def refused(self, name: str, trigger: str, slot: float | None, reason: str) -> Run:
        """A run that could not start (no release, a bad command): recorded as failed."""
        record = self.record(name)
        now = self.clock()
        run = Run(
            record.next_id,
            trigger,
            now,
            now,
            slot=slot,
            result=RunResult.FAILED,
            finished_at=now,
            reason=reason,
        )
        record.runs.append(run)
        record.next_id += 1
        if slot is not None:
            record.last_slot = slot
        self._save(name, record)
        log.warning("[%s] job %s run %d failed: %s", self.env, name, run.id, reason)
        if self.on_done:
            self.on_done(name, run)
        return run

    def adopt(self, names: Sequence[str]) -> None:
        """After a restart: watch the runs still going, settle those that ended meanwhile."""
        for name in names:
            for run in self.record(name).running():
                if run.kube_job:
                    continue  # a Job on a cluster: read from there (kubejobs.py), not a process
                if not _alive(run, None):
                    self._settle(name, run)  # ended while we were down: at once, before a tick
                elif (name, run.id) not in self._watchers:
                    self._watch(name, run)

    async def stop(self, name: str, run_id: int, why: str) -> None:
        """TERM the run's process group, KILL it after a grace; the watcher records the end."""
        run = next((r for r in self.record(name).running() if r.id == run_id), None)
        if run is None:
            return
        self._stopping[(name, run_id)] = why
        await _terminate(run, self._popens.get((name, run_id)))
        task = self._watchers.get((name, run_id))
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._finish(name, run_id, RunResult.KILLED, None, why, only_if_running=True)

    async def wait(self, name: str, run_id: int) -> Run:
        task = self._watchers.get((name, run_id))
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        return next(r for r in self.record(name).runs if r.id == run_id)

    def close(self) -> None:
        """Stop watching (the runs themselves go on: the next controller adopts them)."""
        for task in self._watchers.values():
            task.cancel()
        self._watchers.clear()

    def _watch(self, name: str, run: Run) -> None:
        task = asyncio.get_running_loop().create_task(self._follow(name, run))
        self._watchers[(name, run.id)] = task
        task.add_done_callback(lambda _: self._watchers.pop((name, run.id), None))

    async def _follow(self, name: str, run: Run) -> None:
        result = self.directory(name) / f"{run.id}.result"
        popen = self._popens.get((name, run.id))
        while not result.exists() and _alive(run, popen):
            if self.clock() >= run.deadline:
                log.warning("[%s] job %s run %d timed out: killing it", self.env, name, run.id)
                await _terminate(run, popen)
                timeout = run.deadline - run.started_at
                self._finish(
                    name,
                    run.id,
                    RunResult.TIMED_OUT,
                    _exit_code(result),
                    f"timed out after {timeout:.0f}s and was killed",
                )
                return
            await asyncio.sleep(POLL)
        if popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(popen.wait, 5)
            self._popens.pop((name, run.id), None)
        self._settle(name, run)

    def _settle(self, name: str, run: Run) -> None:
        """Record how an ended run ended, from the exit code its wrapper left."""
        result = self.directory(name) / f"{run.id}.result"
        code = _exit_code(result)
        stopped = self._stopping.pop((name, run.id), None)
        if stopped is not None:
            self._finish(name, run.id, RunResult.KILLED, code, stopped)
        elif code is None:
            self._finish(
                name,
                run.id,
                RunResult.LOST,
                None,
                "ended without an exit code (killed with its wrapper, or a reboot)",
            )
        elif code == 0:
            self._finish(name, run.id, RunResult.SUCCEEDED, 0, "")
        elif code < 0:
            self._finish(
                name,
                run.id,
                RunResult.KILLED,
                code,
                f"killed by signal {signal.Signals(-code).name}",
            )
        else:
            self._finish(name, run.id, RunResult.FAILED, code, f"exited with code {code}")

    def _finish(
        self,
        name: str,
        run_id: int,
        result: RunResult,
        code: int | None,
        reason: str,
        only_if_running: bool = False,
    ) -> None:
        record = self.record(name)
        for i, run in enumerate(record.runs):
            if run.id != run_id:
                continue
            if only_if_running and run.result is not RunResult.RUNNING:
                return
            done = replace(
                run, result=result, exit_code=code, reason=reason, finished_at=self.clock()
            )
            record.runs[i] = done
            self._save(name, record)
            (self.directory(name) / f"{run_id}.result").unlink(missing_ok=True)
            log.log(
                logging.INFO if result is RunResult.SUCCEEDED else logging.WARNING,
                "[%s] job %s run %d %s%s",
                self.env,
                name,
                run_id,
                result.value,
                f": {reason}" if reason else "",
            )
            if self.on_done:
                self.on_done(name, done)
            return


def _alive(run: Run, popen: subprocess.Popen[bytes] | None) -> bool:
    if popen is not None:
        return popen.poll() is None
    return run.pid > 0 and read_start_ticks(run.pid) == run.start_ticks


async def _terminate(run: Run, popen: subprocess.Popen[bytes] | None) -> None:
    _killpg(run.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    while _alive(run, popen) and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
    _killpg(run.pid, signal.SIGKILL)
    while _alive(run, popen):
        await asyncio.sleep(POLL)


def _killpg(pgid: int, sig: int) -> None:
    if pgid > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _exit_code(result: Path) -> int | None:
    try:
        return int(json.loads(result.read_text())["exit"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
