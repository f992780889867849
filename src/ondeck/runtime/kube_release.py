"""Release tasks on Kubernetes: a Job per release that must succeed before a Deployment changes.

Called by `KubernetesRuntime.sync` (runtime/kubernetes.py) after it has rendered
an environment and before it applies the Deployments. What precedes them
(namespace, claims, the Secret, the release Jobs: `render.pre_deploy`) is applied
first; each Job is then watched until Complete, or Failed (ReleaseTaskError with
the reason and the pod's last lines). A Job is named by its release, so a
release whose task succeeded never runs it again, and one whose task failed
fails again without running twice (delete the Job to run it again).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from ondeck.errors import ReleaseTaskError, TemporaryError
from ondeck.kube.health import Crash
from ondeck.kube.render import Obj, pre_deploy
from ondeck.runtime.kube_errors import api_errors

if TYPE_CHECKING:
    from ondeck.runtime.kubernetes import ApplyResult, KubernetesRuntime

_WATCH = 30  # seconds a single watch request lasts


def run_release_tasks(
    runtime: KubernetesRuntime, objects: list[Obj], revision: str, timeout: float
) -> ApplyResult:
    """Apply what goes before the Deployments; return once each release Job has succeeded.

    A sync waits as long as the task may run (its deadline); a look with no time to wait
    (`timeout` 0) does not block on a task still running: TemporaryError, try again later.
    """
    first = pre_deploy(objects)
    result = runtime.apply(first, revision, prune=False)
    for job in first:
        if job["kind"] == "Job":
            deadline = float(job["spec"].get("activeDeadlineSeconds", 0))
            wait_job(runtime, job, max(timeout, deadline + 30) if timeout > 0 else 0.0)
    return result


def wait_job(runtime: KubernetesRuntime, job: Obj, timeout: float) -> None:
    """Watch one Job until Complete; ReleaseTaskError when Failed, TemporaryError at timeout."""
    meta = job["metadata"]
    ns, name = meta["namespace"], meta["name"]
    service = meta["labels"].get("ondeck.dev/release", name)
    live = follow_job(runtime, ns, name, timeout)
    done = outcome(live)
    if done is True:
        return
    if done is False:
        raise ReleaseTaskError(
            f"release task of {service} failed (Job {name}): {reason(live)}",
            log_tail=_logs(runtime, ns, name),
        )
    raise TemporaryError(
        f"release task of {service} (Job {name}) still running after {timeout:.0f} s"
    )


def follow_job(runtime: KubernetesRuntime, namespace: str, name: str, timeout: float) -> Obj:
    """The Job as last seen: once Complete or Failed, or as it is after `timeout` seconds.

    One read, then a watch from its resourceVersion (the release tasks above and
    `ondeck job run` on Kubernetes, jobs/cluster.py). An empty dict: no such Job.
    """
    deadline = time.monotonic() + timeout
    batch = k8s.BatchV1Api(runtime.api)
    probe: Obj = {"kind": "Job", "metadata": {"name": name, "namespace": namespace}}
    while True:
        live = runtime.get(probe) or {}
        left = deadline - time.monotonic()
        if not live or outcome(live) is not None or left <= 0:
            return live
        watcher = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        try:
            with api_errors(f"watching Job {namespace}/{name}"):
                for event in watcher.stream(  # type: ignore[no-untyped-call]
                    batch.list_namespaced_job,
                    namespace,
                    field_selector=f"metadata.name={name}",
                    resource_version=live.get("metadata", {}).get("resourceVersion"),
                    timeout_seconds=max(1, int(min(left, _WATCH))),
                    _request_timeout=min(left, _WATCH) + 5,
                ):
                    raw = event["raw_object"]
                    if event["type"] == "DELETED" or outcome(raw) is not None:
                        break  # read once more above, from the API
        except ApiException as err:
            if err.status != 410:  # resourceVersion too old: read it again
                raise
        finally:
            watcher.stop()  # type: ignore[no-untyped-call]


def outcome(job: Obj) -> bool | None:
    """True once a Job is Complete, False once Failed, None while it runs."""
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return bool(cond["type"] == "Complete")
    return None


def reason(job: Obj) -> str:
    """The Job controller's reason and message for a Failed Job."""
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".rstrip(": ")
    return "Failed"


def _logs(runtime: KubernetesRuntime, namespace: str, job: str) -> str:
    """The last lines of the Job's pod, if it had one."""
    with api_errors(f"listing pods of Job {job}"):
        pods = runtime._request(
            "GET", f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"job-name={job}"
        ).get("items", [])
    for pod in pods:
        return runtime._last_lines(namespace, Crash(pod["metadata"]["name"], "release", "", 0))
    return ""
