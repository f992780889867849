"""The scheduled jobs of an environment run on Kubernetes: the cluster schedules, ondeck watches.

envjobs.py hands an environment whose desired runtime is `kubernetes` to a
`ClusterJobs` (through `EnvJobs`, so the API and status see one object). The
CronJobs are applied with the rest of the environment; here, on each pass, a
read of the environment's CronJobs and Jobs is started in a worker thread at
most every few seconds, and what it found is folded into the job records of
the store (jobs/kube.py), so `ondeck job list|history`, status, the metrics
and the job-failed notice read as on a host. Once the environment's watch-fed
cache (cluster.py, runtime/kube_cache.py) is fresh, the pass reads it instead
and sends no request: a change of a Job or CronJob wakes the pass. `start` is `ondeck job run`:
a Job from the CronJob's template (runtime/kube_jobs.py), followed by `wait`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ondeck.cluster import in_thread
from ondeck.errors import OndeckError, UserError
from ondeck.jobs import kube
from ondeck.jobs.runner import JobRecord, JobRunner, Run, RunResult
from ondeck.jobs.scheduler import JobStatus
from ondeck.kube.cron import JOB_LABEL
from ondeck.kube.render import Obj
from ondeck.runtime import kube_jobs
from ondeck.runtime.kube_release import follow_job
from ondeck.runtime.kubernetes import KubernetesRuntime
from ondeck.spec.model import Job

log = logging.getLogger("ondeck.jobs")

BUSY = 2.0  # seconds between reads while a run goes on
IDLE = 10.0  # and while none does (a new scheduled run is seen within this)


@dataclass(frozen=True)
class Where:
    namespace: str
    app: str
    env: str


@dataclass(frozen=True)
class _Read:
    listing: kube_jobs.Listing
    exits: Mapping[str, int]
    listed_at: float


class ClusterJobs:
    """The jobs of one environment on its cluster: runs read from it, manual runs made on it."""

    def __init__(
        self,
        runner: JobRunner,
        runtime: Callable[[], KubernetesRuntime],
        wake: Callable[[], None],
        cached: Callable[[str], tuple[list[Obj], str] | None] = lambda kind: None,
    ) -> None:
        self.runner, self._runtime, self._wake = runner, runtime, wake
        self._cached = cached
        self._version: tuple[str, ...] = ()  # of the cached Jobs and CronJobs last folded in
        self.jobs: dict[str, Job] = {}
        self.where: Where | None = None
        self.cronjobs: Mapping[str, Obj] = {}
        self.error: str | None = None  # the last read failed (the cluster unreachable, ...)
        self._reading: asyncio.Future[_Read] | None = None
        self._next = 0.0

    def configure(self, jobs: Mapping[str, Job], where: Where) -> None:
        if where != self.where:
            self.cronjobs, self._next = {}, 0.0
        self.jobs, self.where = dict(jobs), where

    def tick(self, now: float) -> float | None:
        """Fold in a finished read, start the next when due; when to look again (None: never)."""
        if self._reading is not None and self._reading.done():
            self._collect(self._reading, now)
            self._reading = None
        if self.where is None or not self.jobs:
            return None
        if self._reading is None and self._from_cache(now):
            return None  # a change of a Job or a CronJob wakes the next pass
        if self._reading is None and now >= self._next:
            self._reading = in_thread(self._read, self.where, self._finished())
            self._reading.add_done_callback(lambda _: self._wake())
        return self._next if self._reading is None else now + BUSY

    def status(self, now: float) -> list[JobStatus]:
        out = []
        for name, job in sorted(self.jobs.items()):
            record = self.runner.record(name)
            cronjob = self.cronjobs.get(name)
            host = job.schedule or f"every {job.every:g}s"
            out.append(
                JobStatus(
                    name,
                    kube.schedule_text(cronjob, host),
                    kube.next_run(cronjob, now),
                    record.running(),
                    record.last_finished(),
                    record.last_success(),
                )
            )
        return out

    async def start(self, name: str) -> Run:
        """`ondeck job run NAME`: a Job made now from the job's CronJob, recorded as manual."""
        where = self._where(name)
        runtime = self._runtime
        created = await in_thread(lambda: kube_jobs.run_now(runtime(), where.namespace, name))
        log.info("[%s] job %s: created Job %s", where.env, name, created["metadata"]["name"])
        self._next = 0.0  # look again soon
        return self._fold(name, [kube.seen(created)], -math.inf)[1][created["metadata"]["name"]]

    async def wait(self, name: str, run_id: int, timeout: float) -> Run:
        """Follow a run's Job until it ends (or `timeout`); the run as then recorded."""
        run = next(r for r in self.runner.record(name).runs if r.id == run_id)
        if not run.kube_job or run.result is not RunResult.RUNNING:
            return run
        where = self._where(name)
        runtime = self._runtime

        def follow() -> tuple[Obj, dict[str, int]]:
            live = follow_job(runtime(), where.namespace, run.kube_job, timeout)
            failed = kube.ended(live)[0] is RunResult.FAILED if live else False
            pods = kube_jobs.pods(runtime(), where.namespace, where.app, where.env)
            return live, kube.failed_pod_exit(pods) if failed else {}

        live, exits = await in_thread(follow)
        if live:
            self._fold(name, [kube.seen(live, exits.get(run.kube_job))], -math.inf)
        return next(r for r in self.runner.record(name).runs if r.id == run_id)

    # -- reads (in a worker thread) and what they found (on the loop) ---------------------

    def _read(self, where: Where, finished: frozenset[str]) -> _Read:
        runtime = self._runtime()
        listed_at = self.runner.clock()
        listing = kube_jobs.read(runtime, where.namespace, where.app, where.env)
        failing = [
            j
            for j in listing.jobs
            if j["metadata"]["name"] not in finished and kube.ended(j)[0] is RunResult.FAILED
        ]
        exits: Mapping[str, int] = {}
        if failing:  # the pods only for a failure not yet recorded: its exit code
            pods = kube_jobs.pods(runtime, where.namespace, where.app, where.env)
            exits = kube.failed_pod_exit(pods)
        return _Read(listing, exits, listed_at)

    def _from_cache(self, now: float) -> bool:
        """Fold in the cached Jobs and CronJobs when they changed; False if not cached."""
        cronjobs, jobs = self._cached("CronJob"), self._cached("Job")
        if cronjobs is None or jobs is None:
            self._version = ()
            return False
        version = (cronjobs[1], jobs[1])
        if version == self._version:
            return True
        mine = [j for j in jobs[0] if (j["metadata"].get("labels") or {}).get(JOB_LABEL)]
        exits: Mapping[str, int] = {}
        finished = self._finished()
        if any(
            j["metadata"]["name"] not in finished and kube.ended(j)[0] is RunResult.FAILED
            for j in mine
        ):
            pods = self._cached("Pod")
            exits = kube.failed_pod_exit(pods[0]) if pods is not None else {}
        self._fold_read(_Read(kube_jobs.Listing(cronjobs[0], mine), exits, now), now)
        self._version = version
        return True

    def _finished(self) -> frozenset[str]:
        """The Jobs whose end is already recorded."""
        return frozenset(
            run.kube_job
            for name in self.jobs
            for run in self.runner.record(name).runs
            if run.kube_job and run.result is not RunResult.RUNNING
        )

    def _collect(self, reading: asyncio.Future[_Read], now: float) -> None:
        err = reading.exception()
        if isinstance(err, OndeckError):
            if self.error != str(err):
                log.warning("[%s] reading the jobs on the cluster: %s", self.runner.env, err)
            self.error, self._next = str(err), now + IDLE
            return
        if err is not None:
            raise err  # a bug: the environment contains it
        self._fold_read(reading.result(), now)

    def _fold_read(self, found: _Read, now: float) -> None:
        """What a read found (from the API server or the cache), into the records."""
        self.error = None
        cronjobs = kube.cronjobs_by_job(found.listing.cronjobs)
        if cronjobs != self.cronjobs:  # a schedule or its status changed: status shows it
            self.cronjobs = cronjobs
            self.runner.changes += 1
        by_job: dict[str, list[kube.Seen]] = {name: [] for name in self.jobs}
        for item in found.listing.jobs:
            name = (item["metadata"].get("labels") or {}).get(JOB_LABEL)
            if name in by_job:
                by_job[name].append(kube.seen(item, found.exits.get(item["metadata"]["name"])))
        busy = False
        for name, seen in by_job.items():
            record, _ = self._fold(name, seen, found.listed_at)
            busy = busy or bool(record.running())
        self._next = now + (BUSY if busy else IDLE)

    def _fold(
        self, name: str, seen: list[kube.Seen], listed_at: float
    ) -> tuple[JobRecord, dict[str, Run]]:
        """Merge what was seen into the record; store it if it changed; report runs that ended."""
        record = self.runner.record(name)
        before = record.to_json()
        ended = kube.merge(record, seen, listed_at)
        if record.to_json() != before:
            self.runner.save(name, record)
        for run in ended:
            if self.runner.on_done is not None:
                self.runner.on_done(name, run)
        return record, {r.kube_job: r for r in record.runs if r.kube_job}

    def _where(self, name: str) -> Where:
        if name not in self.jobs:
            known = ", ".join(sorted(self.jobs)) or "none"
            raise UserError(f"no job {name!r} in {self.runner.env} (jobs: {known})")
        if self.where is None:
            raise UserError(f"job {name}: the environment has no desired state yet")
        return self.where
