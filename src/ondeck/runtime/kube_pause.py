"""A restore's pause on a cluster: the environment's Deployments at 0 pods, then back.

Called by `cluster.ClusterEnv.pause` and `resume` (in a worker thread) while a
backup is restored into the database the app uses, so that the app writes
nothing meanwhile. The pause scales each Deployment to 0 through its /scale
subresource (field manager `ondeck-restore`) and waits until their pods are
gone; the resume gives each the replicas it had (what ran: a canary's two
sets, an autoscaler's count) and waits until it is Available. The runtime's
next apply takes `.spec.replicas` back from `ondeck-restore` (so a controller
killed mid-restore is healed by its successor's check: replicas from the
spec). What a pause scaled is recorded as it goes, so a pause that fails
midway is undone by the same resume.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, MutableMapping

from ondeck.errors import BackupFailure
from ondeck.kube.render import Obj, namespace_of
from ondeck.runtime.kubernetes import RESTORER, KubernetesRuntime
from ondeck.state.desired import Desired
from ondeck.state.health import Health

POLL = 0.2  # how often the pods are listed while they go


def scale_down(
    runtime: KubernetesRuntime,
    desired: Desired,
    held: MutableMapping[str, int],
    timeout: float,
    log: list[str],
) -> None:
    """Scale every Deployment of the environment to 0 and wait until its pods are gone.

    `held` gets each Deployment's replicas before it is scaled (what `scale_back` undoes);
    `log` gets a line per step, for history. Raises `BackupFailure` past `timeout`.
    """
    ns = namespace_of(desired.app, desired.env)
    deployments = runtime._deployments(ns, desired.app, desired.env)[0]
    deadline = time.monotonic() + timeout
    for name, deploy in sorted(deployments.items()):
        replicas = int(deploy.get("spec", {}).get("replicas", 0))
        if replicas == 0:
            continue
        held[name] = replicas  # before the request: a scale that fails midway is undone too
        runtime.scale(ns, name, 0, RESTORER)
        log.append(f"scale Deployment/{ns}/{name} {replicas} -> 0")
    while True:
        left = serving(runtime.pods(ns, desired.app, desired.env))
        if not left:
            break
        if time.monotonic() > deadline:
            raise BackupFailure(
                f"the pods of {ns} did not stop within {timeout:.0f}s "
                f"({', '.join(left[:5])} still there), so nothing was restored"
            )
        time.sleep(POLL)
    if held:
        log.append(f"pods of {', '.join(sorted(held))} gone")


def scale_back(
    runtime: KubernetesRuntime,
    desired: Desired,
    held: MutableMapping[str, int],
    timeout: float,
    log: list[str],
) -> None:
    """Give each Deployment `scale_down` scaled back the replicas it had; wait until Available.

    What ran comes back as it was (a canary's two sets, an autoscaler's count); the
    runtime's next apply takes `.spec.replicas` back from `ondeck-restore`. Raises
    `BackupFailure` if a Deployment is not Available within `timeout`.
    """
    if not held:
        return
    ns = namespace_of(desired.app, desired.env)
    live = runtime._deployments(ns, desired.app, desired.env)[0]
    back = {name: replicas for name, replicas in held.items() if name in live}
    for name, replicas in sorted(back.items()):
        runtime.scale(ns, name, replicas, RESTORER)
        log.append(f"scale Deployment/{ns}/{name} 0 -> {replicas}")
    status = runtime.wait(ns, desired.app, desired.env, {n: n for n in back}, timeout)
    if status.health is not Health.HEALTHY:
        raise BackupFailure(
            f"the Deployments of {ns} did not become Available again within {timeout:.0f}s: "
            f"{'; '.join(status.reasons()) or status.health.value}; see `ondeck status`"
        )
    held.clear()
    log.append(f"{', '.join(sorted(back))} Available again")


def serving(pods: Iterable[Obj]) -> list[str]:
    """The names of the pods a Deployment runs (owned by a ReplicaSet), still there."""
    return [
        str(pod["metadata"]["name"])
        for pod in pods
        if any(o.get("kind") == "ReplicaSet" for o in pod["metadata"].get("ownerReferences") or [])
    ]
