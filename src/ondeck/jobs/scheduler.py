"""The jobs of one environment: due runs started on each pass, manual runs, their status.

The environment owns one `EnvJobs`, calls `configure` when its desired state
changes and `tick` on every pass (cheap: a few comparisons per job), and
sleeps until the time `tick` returns. The decision is `schedule.due` (pure);
this module carries it out through the `JobRunner`. An environment run on
Kubernetes has its jobs scheduled by the cluster: `configure` then hands them to a
`ClusterRuns` (kubejobs.py), and nothing is started on the host.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ondeck.errors import UserError
from ondeck.jobs.runner import Invocation, JobRunner, Run, RunResult
from ondeck.jobs.schedule import Decision, Trigger, due, wake_at
from ondeck.spec.model import Job

log = logging.getLogger("ondeck.jobs")

Invoke = Callable[[str, Job], Invocation]


class JobMetrics:
    """Prometheus: runs by result, their duration, the last success of each job."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "ondeck_job_runs",
            "Job runs finished (or skipped), by result.",
            ["env", "job", "result"],
            registry=registry,
        )
        self.duration = Histogram(
            "ondeck_job_duration_seconds",
            "Duration of job runs.",
            ["env", "job"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
            registry=registry,
        )
        self.last_success = Gauge(
            "ondeck_job_last_success_timestamp_seconds",
            "When each job last succeeded.",
            ["env", "job"],
            registry=registry,
        )


class ClusterRuns(Protocol):
    """The jobs of an environment on Kubernetes (kubejobs.ClusterJobs)."""

    def tick(self, now: float) -> float | None: ...

    def status(self, now: float) -> list[JobStatus]: ...

    async def start(self, name: str) -> Run: ...

    async def wait(self, name: str, run_id: int, timeout: float) -> Run: ...


@dataclass(frozen=True)
class JobStatus:
    """One line of `ondeck job list`."""

    name: str
    schedule: str
    next_run: float | None
    running: list[Run]
    last: Run | None
    last_success: Run | None


class EnvJobs:
    """Every job of one app in one environment."""

    def __init__(
        self,
        runner: JobRunner,
        metrics: JobMetrics | None = None,
        on_failed: Callable[[str, Run], None] | None = None,
    ) -> None:
        self.runner = runner
        self.metrics = metrics
        self.on_failed = on_failed
        self.jobs: dict[str, Job] = {}
        self.cluster: ClusterRuns | None = None  # runtime kubernetes: the cluster schedules
        self._invoke: Invoke | None = None
        self._adopted = False
        runner.on_done = self._done

    def configure(
        self, jobs: dict[str, Job], invoke: Invoke, cluster: ClusterRuns | None = None
    ) -> None:
        """The jobs of the current desired state; runs of removed jobs finish on their own.

        With `cluster`, the jobs run on Kubernetes: none is started on the host.
        """
        self.jobs, self._invoke, self.cluster = dict(jobs), invoke, cluster
        if not self._adopted:
            self._adopted = True
            self.runner.adopt(sorted(jobs))

    async def tick(self, now: float) -> float | None:
        """Start what is due; the earliest time a job needs looking at again."""
        if self.cluster is not None:
            return self.cluster.tick(now)
        wake: list[float] = []
        for name, job in self.jobs.items():
            record = self.runner.record(name)
            # a run that is a Job on a cluster (the environment ran there before) is not
            # a process here: it neither blocks nor is replaced by the host's runs
            here = [r for r in record.running() if not r.kube_job]
            d = due(job, record.last_slot, len(here), now)
            if d.decision is Decision.WAIT:
                if record.last_slot is None:
                    self.runner.handled(name, d.slot)  # first seen: count slots from now
            elif d.decision is Decision.SKIP:
                self.runner.handled(name, d.slot)
                log.warning(
                    "[%s] job %s: skipped the run due at %s, the last one still runs "
                    "(concurrency: forbid)",
                    self.runner.env,
                    name,
                    _when(d.slot),
                )
                self._count(name, "skipped")
            else:
                if d.decision is Decision.REPLACE:
                    for run in here:
                        await self.runner.stop(name, run.id, "replaced by a newer run")
                self._start(name, job, str(d.trigger), d.slot)
            wake.append(wake_at(job, self.runner.record(name).last_slot, now))
        return min(wake, default=None)

    def run_now(self, name: str) -> Run:
        """`ondeck job run NAME`: a manual run, whatever the schedule and concurrency say."""
        job = self.jobs.get(name)
        if job is None:
            known = ", ".join(sorted(self.jobs)) or "none"
            raise UserError(f"no job {name!r} in {self.runner.env} (jobs: {known})")
        return self._start(name, job, str(Trigger.MANUAL), None)

    async def start(self, name: str) -> Run:
        """`ondeck job run NAME` wherever the jobs run: on the host, or on the cluster."""
        if self.cluster is not None:
            return await self.cluster.start(name)
        return self.run_now(name)

    async def wait(self, name: str, run_id: int, timeout: float) -> Run:
        """The run once it has ended, or as it is after `timeout` seconds."""
        if self.cluster is not None:
            return await self.cluster.wait(name, run_id, timeout)
        try:
            return await asyncio.wait_for(self.runner.wait(name, run_id), timeout)
        except TimeoutError:
            return next(r for r in self.runner.record(name).runs if r.id == run_id)

    def status(self, now: float) -> list[JobStatus]:
        if self.cluster is not None:
            return self.cluster.status(now)
        out = []
        for name, job in sorted(self.jobs.items()):
            record = self.runner.record(name)
            when = job.schedule or f"every {job.every:g}s"
            out.append(
                JobStatus(
                    name,
                    when,
                    wake_at(job, record.last_slot, now),
                    record.running(),
                    record.last_finished(),
                    record.last_success(),
                )
            )
        return out

    def pids(self) -> set[int]:
        """The session leaders of the runs still going (drift must not take them for strays)."""
        return {r.pid for name in self.jobs for r in self.runner.record(name).running() if r.pid}

    def close(self) -> None:
        self.runner.close()

    def _start(self, name: str, job: Job, trigger: str, slot: float | None) -> Run:
        assert self._invoke is not None  # configure() comes first
        try:
            how = self._invoke(name, job)
        except UserError as err:
            return self.runner.refused(name, trigger, slot, str(err))
        return self.runner.start(name, how, trigger, slot)

    def _done(self, name: str, run: Run) -> None:
        self._count(name, run.result.value)
        if self.metrics is not None and run.duration is not None:
            self.metrics.duration.labels(self.runner.env, name).observe(run.duration)
        if run.result is RunResult.SUCCEEDED:
            if self.metrics is not None and run.finished_at is not None:
                self.metrics.last_success.labels(self.runner.env, name).set(run.finished_at)
        elif self.on_failed is not None:
            self.on_failed(name, run)

    def _count(self, name: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.runs.labels(self.runner.env, name, result).inc()


def _when(at: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
