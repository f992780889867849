"""Release tasks with real processes: once per release, failures, timeouts, and a
controller killed mid-task (a real process SIGKILLed while it waits on the task)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ondeck.errors import ReleaseTaskError
from ondeck.releasetask.record import TaskState
from ondeck.releasetask.runner import ReleaseTasks, Task, TaskKey, output_path
from ondeck.store import Store

KEY = TaskKey("shop", "production", "web", "abc123")

# The task: note each start in runs.txt; wait for go.txt if asked; exit with $EXIT.
TASK = textwrap.dedent(
    """
    import os, sys, time, pathlib
    here = pathlib.Path(os.environ["WORK"])
    with open(here / "runs.txt", "a") as f:
        f.write(f"{os.getpid()} {os.environ.get('DB_PASSWORD', '-')}\\n")
    print("migrating", flush=True)
    if os.environ.get("WAIT_FOR_GO"):
        while not (here / "go.txt").exists():
            time.sleep(0.05)
    print("done" if os.environ.get("EXIT", "0") == "0" else "boom: no such column", flush=True)
    sys.exit(int(os.environ.get("EXIT", "0")))
    """
)


def wait_until(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "task.py").write_text(TASK)
    return tmp_path


def _task(work: Path, timeout: float = 60.0, **env: str) -> Task:
    environ = {"PATH": os.environ["PATH"], "WORK": str(work), **env}
    return Task([sys.executable, "task.py"], work / "release", environ, timeout)


def _runs(work: Path) -> list[str]:
    path = work / "runs.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_a_task_that_succeeded_never_runs_again(work: Path) -> None:
    with Store(work / "state" / "ondeck.db") as store:
        tasks = ReleaseTasks(store, work / "state")
        first = asyncio.run(tasks.ensure(KEY, _task(work, DB_PASSWORD="pw")))
        assert first.state is TaskState.SUCCEEDED and first.exit_code == 0
        again = asyncio.run(tasks.ensure(KEY, _task(work, DB_PASSWORD="pw")))
        assert again == first
        assert len(_runs(work)) == 1
        assert _runs(work)[0].endswith(" pw")  # it ran with the release's environment
        other = TaskKey(KEY.app, KEY.env, KEY.service, "def456")  # another release
        asyncio.run(tasks.ensure(other, _task(work)))
        assert len(_runs(work)) == 2
        assert "done" in output_path(work / "state", KEY).read_text()


def test_a_failure_carries_the_exit_code_and_tail_and_a_retry_runs_again(work: Path) -> None:
    with Store(work / "state" / "ondeck.db") as store:
        tasks = ReleaseTasks(store, work / "state")
        with pytest.raises(ReleaseTaskError) as failed:
            asyncio.run(tasks.ensure(KEY, _task(work, EXIT="3")))
        assert failed.value.exit_code == 3
        assert "exited with code 3" in str(failed.value)
        assert "ondeck logs web --release" in str(failed.value)
        assert "boom: no such column" in failed.value.log_tail
        record = tasks.record(KEY)
        assert record is not None and record.state is TaskState.FAILED
        done = asyncio.run(tasks.ensure(KEY, _task(work)))
        assert done.state is TaskState.SUCCEEDED and done.attempt == 2
        assert len(_runs(work)) == 2
        log = output_path(work / "state", KEY).read_text()
        assert "attempt 1" in log and "attempt 2" in log and "boom" in log


def test_a_task_past_its_timeout_is_killed_and_fails(work: Path) -> None:
    with Store(work / "state" / "ondeck.db") as store:
        tasks = ReleaseTasks(store, work / "state")
        with pytest.raises(ReleaseTaskError, match="timed out after 1s"):
            asyncio.run(tasks.ensure(KEY, _task(work, timeout=1.0, WAIT_FOR_GO="1")))
        pid = int(_runs(work)[0].split()[0])
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), "the task to be gone")


def test_a_missing_command_fails_with_127(work: Path) -> None:
    with Store(work / "state" / "ondeck.db") as store:
        tasks = ReleaseTasks(store, work / "state")
        task = Task(["no-such-migrate-tool"], work / "release", {"PATH": "/usr/bin"}, 10.0)
        with pytest.raises(ReleaseTaskError, match="exited with code 127") as failed:
            asyncio.run(tasks.ensure(KEY, task))
        assert "cannot run release task 'no-such-migrate-tool'" in failed.value.log_tail


CONTROLLER = textwrap.dedent(
    """
    import asyncio, os, sys, pathlib
    from ondeck.releasetask.runner import ReleaseTasks, Task, TaskKey
    from ondeck.store import Store
    work = pathlib.Path(sys.argv[1])
    key = TaskKey("shop", "production", "web", "abc123")
    env = {"PATH": os.environ["PATH"], "WORK": str(work), "WAIT_FOR_GO": "1"}
    task = Task([sys.executable, "task.py"], work / "release", env, 60.0)
    asyncio.run(ReleaseTasks(Store(work / "state" / "ondeck.db"), work / "state").ensure(key, task))
    """
)


def _controller(work: Path) -> subprocess.Popen[bytes]:
    script = work / "controller.py"
    script.write_text(CONTROLLER)
    return subprocess.Popen([sys.executable, str(script), str(work)], start_new_session=True)


def test_a_controller_killed_mid_task_neither_skips_nor_repeats_it(work: Path) -> None:
    controller = _controller(work)
    wait_until(lambda: len(_runs(work)) == 1, "the task to start")
    os.kill(controller.pid, signal.SIGKILL)  # the controller dies; the task runs on
    controller.wait()
    with Store(work / "state" / "ondeck.db") as store:
        tasks = ReleaseTasks(store, work / "state")
        record = tasks.record(KEY)
        assert record is not None and record.state is TaskState.STARTED

        async def restarted() -> None:
            waiting = asyncio.ensure_future(tasks.ensure(KEY, _task(work, WAIT_FOR_GO="1")))
            await asyncio.sleep(0.5)
            assert not waiting.done()  # it waits for the running attempt
            (work / "go.txt").write_text("go")
            done = await waiting
            assert done.state is TaskState.SUCCEEDED and done.attempt == 1

        asyncio.run(restarted())
    assert len(_runs(work)) == 1  # adopted, not started twice


def test_a_task_killed_with_its_controller_runs_again(work: Path) -> None:
    controller = _controller(work)
    wait_until(lambda: len(_runs(work)) == 1, "the task to start")
    with Store(work / "state" / "ondeck.db") as store:
        wait_until(lambda: ReleaseTasks(store, work / "state").record(KEY), "the record")
        record = ReleaseTasks(store, work / "state").record(KEY)
        assert record is not None
        os.kill(controller.pid, signal.SIGKILL)
        os.killpg(record.pid, signal.SIGKILL)  # e.g. a reboot: the attempt left no result
        controller.wait()
        wait_until(lambda: not Path(f"/proc/{record.pid}/cmdline").exists(), "the wrapper gone")
        (work / "go.txt").write_text("go")
        done = asyncio.run(ReleaseTasks(store, work / "state").ensure(KEY, _task(work)))
        assert done.state is TaskState.SUCCEEDED and done.attempt == 2
    assert len(_runs(work)) == 2
    assert "interrupted" in output_path(work / "state", KEY).read_text()
