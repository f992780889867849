"""Job runs as real processes: results, timeouts, logs, and adoption by a new controller."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from ondeck.jobs.runner import Invocation, JobRunner, Run, RunResult
from ondeck.store import Store


def how(tmp_path: Path, code: str, timeout: float = 30.0) -> Invocation:
    env = {"PATH": os.environ["PATH"], "GREETING": "hello"}
    return Invocation([sys.executable, "-c", code], tmp_path, env, timeout)


async def until(cond: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_a_run_records_its_result_and_output(tmp_path: Path) -> None:
    done: list[Run] = []

    async def go() -> None:
        with Store(tmp_path / "ondeck.db") as store:
            runner = JobRunner(store, tmp_path, "shop", "prod", lambda n, r: done.append(r))
            ok = runner.start(
                "hello", how(tmp_path, "import os; print(os.environ['GREETING'])"), "manual"
            )
            bad = runner.start("hello", how(tmp_path, "raise SystemExit(3)"), "schedule", 100.0)
            assert (await runner.wait("hello", ok.id)).result is RunResult.SUCCEEDED
            failed = await runner.wait("hello", bad.id)
            assert (failed.result, failed.exit_code) == (RunResult.FAILED, 3)
            assert failed.duration is not None and failed.duration >= 0
            assert [r.trigger for r in runner.record("hello").runs] == ["manual", "schedule"]
            runner.close()

    asyncio.run(go())
    assert sorted(r.result for r in done) == [RunResult.FAILED, RunResult.SUCCEEDED]
    text = (tmp_path / "logs" / "shop" / "prod" / "job-hello.log").read_text()
    assert "hello\n" in text and "run 1 (manual)" in text and "run 2 (schedule)" in text


def test_a_run_past_its_timeout_is_killed(tmp_path: Path) -> None:
    async def go() -> Run:
        with Store(tmp_path / "ondeck.db") as store:
            runner = JobRunner(store, tmp_path, "shop", "prod")
            run = runner.start("slow", how(tmp_path, "import time; time.sleep(60)", 0.5), "manual")
            finished = await runner.wait("slow", run.id)
            runner.close()
            return finished

    run = asyncio.run(go())
    assert run.result is RunResult.TIMED_OUT and "timed out after" in run.reason
    assert (run.pid and not Path(f"/proc/{run.pid}").exists()) or _zombie_or_gone(run.pid)


def _zombie_or_gone(pid: int) -> bool:
    try:
        return "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except OSError:
        return True


def test_a_run_survives_the_controller_and_is_adopted_not_started_twice(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code = (
        "import pathlib, time, sys; p = pathlib.Path(sys.argv[1]);"
        "p.write_text(p.read_text() + 'x' if p.exists() else 'x'); time.sleep(1.0)"
    )

    async def first() -> Run:
        with Store(tmp_path / "ondeck.db") as store:
            runner = JobRunner(store, tmp_path, "shop", "prod")
            inv = Invocation(
                [sys.executable, "-c", code, str(marker)],
                tmp_path,
                {"PATH": os.environ["PATH"]},
                30.0,
            )
            run = runner.start("nightly", inv, "schedule", 50.0)
            runner.close()  # the controller dies; the run goes on in its own session
            return run

    async def second(run: Run) -> Run:
        with Store(tmp_path / "ondeck.db") as store:
            runner = JobRunner(store, tmp_path, "shop", "prod")
            assert [r.id for r in runner.record("nightly").running()] == [run.id]
            runner.adopt(["nightly"])
            finished = await runner.wait("nightly", run.id)
            runner.close()
            return finished

    run = asyncio.run(first())
    finished = asyncio.run(second(run))
    assert finished.result is RunResult.SUCCEEDED and finished.exit_code == 0
    assert marker.read_text() == "x"  # ran once


def test_stop_kills_the_whole_run(tmp_path: Path) -> None:
    async def go() -> Run:
        with Store(tmp_path / "ondeck.db") as store:
            runner = JobRunner(store, tmp_path, "shop", "prod")
            run = runner.start("replace-me", how(tmp_path, "import time; time.sleep(60)"), "manual")
            await until(lambda: Path(f"/proc/{run.pid}").exists())
            await runner.stop("replace-me", run.id, "replaced by run 2")
            finished = runner.record("replace-me").runs[-1]
            runner.close()
            return finished

    run = asyncio.run(go())
    assert run.result is RunResult.KILLED and run.reason == "replaced by run 2"


def test_adoption_leaves_a_run_that_is_a_job_on_a_cluster(tmp_path: Path) -> None:
    # a run on Kubernetes has no process here: its end is read from the cluster
    # (kubejobs.py), never settled as lost by a restarted controller
    async def go() -> Run:
        with Store(tmp_path / "ondeck.db") as store:
            runner = JobRunner(store, tmp_path, "shop", "prod")
            record = runner.record("nightly")
            record.runs.append(Run(1, "schedule", time.time(), 0.0, kube_job="nightly-29412345"))
            runner.save("nightly", record)
            runner.adopt(["nightly"])
            (run,) = runner.record("nightly").runs
            return run

    run = asyncio.run(go())
    assert run.result is RunResult.RUNNING and run.kube_job == "nightly-29412345"
