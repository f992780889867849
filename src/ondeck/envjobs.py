"""Scheduled jobs and notifications wired into an `Environment` through its hooks.

The controller calls `attach` once per environment. A pass hook keeps the
environment's `EnvJobs` and its notification targets in step with the desired
state, starts due runs and asks for a wake-up at the next slot; a finish hook
turns each sync result into a notice. A job runs in its service's current
release (default: the first service) with that service's environment, its
own `env` on top, and the secrets either refers to. An environment whose desired
runtime is `kubernetes` runs its jobs as CronJobs on the cluster: none starts on
the host, and its runs are read from the cluster (kubejobs.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ondeck.alerts import job_event, sync_event
from ondeck.environment import Environment, Operation
from ondeck.errors import UserError
from ondeck.jobs.runner import Invocation, JobRunner, Run
from ondeck.jobs.scheduler import EnvJobs, JobMetrics
from ondeck.kube.render import Obj, namespace_of
from ondeck.kubejobs import ClusterJobs, Where
from ondeck.notify import Notifier
from ondeck.releases import data_dir, is_complete, release_dir
from ondeck.runtime.kubernetes import KubernetesRuntime
from ondeck.spec.model import Job
from ondeck.spec.template import expand, instance_env
from ondeck.state.desired import Desired
from ondeck.state.lifecycle import SyncResult

WAKE_KEY = "jobs"


def attach(env: Environment, notifier: Notifier, metrics: JobMetrics) -> EnvJobs:
    """Give `env` its jobs and notifications; returns its `EnvJobs` (for the API)."""
    host = env.host
    app = [env.desired.app if env.desired else ""]

    def failed(name: str, run: Run) -> None:
        notifier.emit(job_event(app[0], env.name, name, run))

    runner = JobRunner(host.store, host.opts.state_dir, "", env.name, clock=host.clock.time)
    jobs = EnvJobs(runner, metrics, failed)
    runtime: list[KubernetesRuntime] = []

    def cluster_runtime() -> KubernetesRuntime:  # in a worker thread: connecting blocks
        if not runtime:
            runtime.append(KubernetesRuntime(env.ensure_cluster().link.api()))
        return runtime[0]

    def cached(kind: str) -> tuple[list[Obj], str] | None:
        return env.cluster.cached(kind) if env.cluster is not None else None

    on_cluster = ClusterJobs(runner, cluster_runtime, host.wake, cached)
    seen: list[Desired | None] = [None]

    async def each_pass(environment: Environment, now: float) -> None:
        desired = environment.desired
        if desired is None:
            return
        if desired is not seen[0]:
            seen[0] = desired
            app[0] = runner.app = desired.app
            notifier.configure(
                desired.app, env.name, list(desired.notify), dict(desired.notify_secrets.values)
            )
            specs = {j.name: j.spec for j in desired.jobs}
            cluster = None
            if desired.runtime == "kubernetes":  # the cluster's CronJobs run them, not the host
                where = Where(namespace_of(desired.app, desired.env), desired.app, desired.env)
                on_cluster.configure(specs, where)
                cluster = on_cluster
            jobs.configure(specs, invoker(environment), cluster)
        environment.wake_hints[WAKE_KEY] = await jobs.tick(now)

    def finished(
        environment: Environment, op: Operation, result: SyncResult, error: str | None
    ) -> None:
        notice = sync_event(app[0], environment.name, result, op.revision, error)
        if notice is not None and app[0]:
            notifier.emit(notice)

    env.pass_hooks.append(each_pass)
    env.finish_hooks.append(finished)
    env.closers.append(jobs.close)
    env.owned_pids.append(jobs.pids)
    return jobs


def invoker(env: Environment) -> Callable[[str, Job], Invocation]:
    """How to run a job of `env`'s current desired state (raises UserError when it cannot)."""

    def invoke(name: str, job: Job) -> Invocation:
        desired = env.desired
        if desired is None or not desired.services:
            raise UserError(f"job {name}: no service to run in (a job runs in a service's release)")
        svc = desired.service(job.service) if job.service else desired.services[0]
        if svc is None:
            raise UserError(f"job {name}: service {job.service!r} is not in the spec")
        opts = env.host.opts
        where = release_dir(opts.state_dir, desired.app, svc.release)
        if not is_complete(where):
            raise UserError(
                f"job {name}: the release of {svc.name} is not ready yet (being built or failed)"
            )
        job_secrets = next((j.secrets for j in desired.jobs if j.name == name), None)
        secrets = {**svc.secrets.values, **(job_secrets.values if job_secrets else {})}
        builtins = {
            "ONDECK_APP": desired.app,
            "ONDECK_SERVICE": svc.name,
            "ONDECK_ENV": env.name,
            "ONDECK_REVISION": desired.revision,
            "ONDECK_CODE_REVISION": desired.code_revision(svc),
            "ONDECK_VERSION": svc.spec.version or "",
            "ONDECK_DATA_DIR": str(data_dir(opts.state_dir, desired.app, env.name)),
            "ONDECK_JOB": name,
        }
        environ = instance_env({**svc.spec.env, **job.env}, builtins, os.environ, secrets)
        argv = [expand(arg, environ) for arg in job.command or ()]
        return Invocation(argv, where, environ, job.timeout)

    return invoke
