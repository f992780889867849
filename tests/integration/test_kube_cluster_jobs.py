"""A job's runs read from the environment's watch-fed cache (kubejobs.py), on a real control plane.

Real API server, controller manager (its Job controller) and KWOK (tests/kubeplane.py),
which completes a Job's pod as if its command had exited 0. Checked: once the
cache is fresh, `ClusterJobs` folds the Jobs of a CronJob into the job's record,
reports the run's end once, and asks the API server for nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from kubeplane import ControlPlane
from ondeck.jobs.runner import JobRunner, Run, RunResult
from ondeck.kube.render import manifests
from ondeck.kubejobs import ClusterJobs, Where
from ondeck.runtime import kube_jobs
from ondeck.runtime.kube_cache import KubeCache
from ondeck.runtime.kubernetes import Cluster, KubernetesRuntime, cache_sources, connect
from ondeck.spec.load import parse, render_spec
from ondeck.state.desired import render
from ondeck.store import Store

pytestmark = pytest.mark.timeout(300)

SPEC = """\
app: {app}
runtime: kubernetes
services:
  web:
    image: registry.example/shop:1
    command: ["/bin/web"]
jobs:
  nightly:
    command: ["/bin/nightly"]
    schedule: "0 4 * * *"
"""


def test_runs_come_from_the_cache_and_no_request_is_sent(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    app = f"q{uuid.uuid4().hex[:6]}"
    desired = render(render_spec(parse(SPEC.format(app=app)), None), "default", "r1", "")
    objects = manifests(desired)
    ns = str(objects[0]["metadata"]["name"])
    api = connect(Cluster(control_plane.kubeconfig))
    runtime = KubernetesRuntime(api)
    runtime.apply(objects, "r1")
    cache = KubeCache(api, cache_sources(ns, app, "default")).start()
    ended: list[Run] = []
    asked: list[str] = []

    def never() -> KubernetesRuntime:  # the reads' way to the API server: must not be taken
        asked.append("runtime")
        return runtime

    try:
        assert cache.wait_fresh(60), "the cache did not list every kind"
        with Store(tmp_path / "ondeck.db") as store:
            runner = JobRunner(store, tmp_path, app, "default", lambda _, run: ended.append(run))
            jobs = ClusterJobs(runner, never, lambda: None, cache.snapshot)
            jobs.configure({"nightly": desired.jobs[0].spec}, Where(ns, app, "default"))
            made = kube_jobs.run_now(runtime, ns, "nightly")  # as `ondeck job run` does

            async def until_succeeded() -> list[Run]:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    assert jobs.tick(time.time()) is None  # woken by the watch, no timer
                    runs = runner.record("nightly").runs
                    if runs and runs[-1].result is RunResult.SUCCEEDED:
                        return runs
                    await asyncio.sleep(0.05)
                raise AssertionError(f"no succeeded run; record: {runner.record('nightly')}")

            runs = asyncio.run(until_succeeded())
            (status,) = jobs.status(time.time())
    finally:
        cache.stop()
        runtime.delete_environment(ns)
        api.close()  # type: ignore[no-untyped-call]
    assert [(r.kube_job, r.trigger) for r in runs] == [(made["metadata"]["name"], "manual")]
    assert [r.result for r in ended] == [RunResult.SUCCEEDED]  # its end reported once
    assert asked == [], "a fresh cache is read: no request to the API server"
    assert status.schedule == "0 4 * * * (cluster time)" and status.last_success is not None
