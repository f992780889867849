"""Scheduled jobs on Kubernetes: read the CronJobs and their Jobs, run one now.

Called from worker threads by kubejobs.py (the calls block). The CronJobs are
applied with the rest of the environment (KubernetesRuntime.sync); the
cluster's CronJob controller starts the scheduled runs. `run_now` is
`kubectl create job --from=cronjob/NAME`: a Job from the CronJob's jobTemplate,
owned by the CronJob (so its history limits and pruning cover it too), which
`follow_job` (kube_release.py) watches to its end.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubernetes import client as k8s

from ondeck.errors import UserError
from ondeck.kube.cron import INSTANTIATE, JOB_LABEL
from ondeck.kube.render import MANAGER, Obj
from ondeck.runtime.kube_errors import api_errors

if TYPE_CHECKING:
    from ondeck.runtime.kubernetes import KubernetesRuntime


@dataclass(frozen=True)
class Listing:
    """An environment's CronJobs and the Jobs they own."""

    cronjobs: list[Obj]
    jobs: list[Obj]


def read(runtime: KubernetesRuntime, namespace: str, app: str, env: str) -> Listing:
    """One list of each kind, by the labels every job object carries."""
    return Listing(
        _list(runtime, f"/apis/batch/v1/namespaces/{namespace}/cronjobs", app, env),
        _list(runtime, f"/apis/batch/v1/namespaces/{namespace}/jobs", app, env),
    )


def pods(runtime: KubernetesRuntime, namespace: str, app: str, env: str) -> list[Obj]:
    """The pods of the environment's job runs (for the exit code of a failed one)."""
    return _list(runtime, f"/api/v1/namespaces/{namespace}/pods", app, env)


def _list(runtime: KubernetesRuntime, path: str, app: str, env: str) -> list[Obj]:
    selector = f"ondeck.dev/app={app},ondeck.dev/env={env},{JOB_LABEL}"
    with api_errors(f"listing {path}"):
        listing = runtime._request("GET", path, labelSelector=selector)
    return list((listing or {}).get("items", []))


def run_now(runtime: KubernetesRuntime, namespace: str, cronjob: str) -> Obj:
    """Create a Job from the CronJob's jobTemplate now, as `kubectl create job --from` does."""
    live = runtime.get({"kind": "CronJob", "metadata": {"name": cronjob, "namespace": namespace}})
    if live is None:
        raise UserError(
            f"job {cronjob}: no CronJob {namespace}/{cronjob} on the cluster yet; wait for "
            "the environment's sync to apply it (`ondeck status`)"
        )
    template = live["spec"]["jobTemplate"]
    meta = template.get("metadata") or {}
    body: Obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            # the CronJob controller names its runs NAME-<minutes>: a manual one stands apart
            "name": f"{cronjob[:45]}-manual-{secrets.token_hex(3)}",
            "namespace": namespace,
            "labels": dict(meta.get("labels") or {}),
            "annotations": {**(meta.get("annotations") or {}), INSTANTIATE: "manual"},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": cronjob,
                    "uid": live["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": template["spec"],
    }
    batch = k8s.BatchV1Api(runtime.api)
    with api_errors(f"creating a Job from CronJob {namespace}/{cronjob}"):
        # a plain dict as the body, the raw answer back: no model round trip
        response: Any = batch.create_namespaced_job(
            namespace,
            body,  # type: ignore[arg-type]
            field_manager=MANAGER,
            _preload_content=False,
        )
    created: Obj = json.loads(response.data)
    return created
