"""The scheduler of one environment driven by a fake clock, with real processes:
concurrency policies (forbid skips, allow overlaps, replace stops the running run)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from ondeck.jobs.runner import Invocation, JobRunner, Run, RunResult
from ondeck.jobs.scheduler import EnvJobs
from ondeck.spec.model import Job
from ondeck.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def until(cond: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("policy", ["forbid", "allow", "replace"])
def test_a_run_due_while_one_runs_follows_the_policy(tmp_path: Path, policy: str) -> None:
    job = Job(command=["sleep"], every=10.0, concurrency=policy)

    def invoke(name: str, spec: Job) -> Invocation:
        argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        return Invocation(argv, tmp_path, {"PATH": os.environ["PATH"]}, 600.0)

    async def scenario() -> list[RunResult]:
        clock = Clock()
        with Store(tmp_path / "ondeck.db") as store:
            jobs = EnvJobs(JobRunner(store, tmp_path, "shop", "prod", clock=clock))
            jobs.configure({"long": job}, invoke)
            await jobs.tick(clock.now)  # first sight: slots count from now
            clock.now += 10.5
            await jobs.tick(clock.now)  # due: the first run starts
            first = jobs.runner.record("long").runs[0]
            await until(lambda: Path(f"/proc/{first.pid}").exists())
            clock.now += 10.0
            await jobs.tick(clock.now)  # due again while the first one runs
            runs = jobs.runner.record("long").runs
            for run in jobs.runner.record("long").running():
                await jobs.runner.stop("long", run.id, "test over")
            jobs.close()
            return [r.result for r in runs]

    results = asyncio.run(scenario())
    if policy == "forbid":
        assert results == [RunResult.RUNNING]  # the second slot was skipped
    elif policy == "allow":
        assert results == [RunResult.RUNNING, RunResult.RUNNING]  # two at once
    else:
        assert results == [RunResult.KILLED, RunResult.RUNNING]  # the old one was replaced


def test_a_run_left_on_a_cluster_does_not_block_the_host_schedule(tmp_path: Path) -> None:
    # the environment ran on Kubernetes, then on the host: a Job still recorded as running
    # there is not a process here, and `forbid` must not skip the host's runs for it
    job = Job(command=["true"], every=10.0, concurrency="forbid")

    def invoke(name: str, spec: Job) -> Invocation:
        return Invocation([sys.executable, "-c", "pass"], tmp_path, {}, 60.0)

    async def scenario() -> list[tuple[str, RunResult]]:
        clock = Clock()
        with Store(tmp_path / "ondeck.db") as store:
            runner = JobRunner(store, tmp_path, "shop", "prod", clock=clock)
            record = runner.record("tick")
            record.runs.append(Run(1, "schedule", clock.now, 0.0, kube_job="tick-29412345"))
            record.next_id = 2
            runner.save("tick", record)
            jobs = EnvJobs(runner)
            jobs.configure({"tick": job}, invoke)
            await jobs.tick(clock.now)
            clock.now += 10.5
            await jobs.tick(clock.now)
            await until(lambda: not [r for r in runner.record("tick").running() if r.pid])
            jobs.close()
            return [(r.kube_job, r.result) for r in runner.record("tick").runs]

    runs = asyncio.run(scenario())
    assert runs == [("tick-29412345", RunResult.RUNNING), ("", RunResult.SUCCEEDED)]
