"""Health of a Deployment from its status and its pods: pure, from API objects as dicts.

Called by runtime/kubernetes.py on every watch event. The rules follow the
Deployment controller's own signals: generation not yet observed and replicas
not yet updated or available are Progressing; `Progressing=False` with
`ProgressDeadlineExceeded` is Degraded with the controller's message; a
crash-looping container is Degraded whatever the Deployment says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ondeck.state.health import Health, Verdict

Obj = Mapping[str, Any]
CRASH_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ErrImagePull",
        "ImagePullBackOff",
        "CreateContainerConfigError",
        "InvalidImageName",
    }
)


@dataclass(frozen=True)
class Crash:
    """A pod whose container cannot stay up: the runtime adds its last log lines."""

    pod: str
    container: str
    reason: str
    restarts: int


def condition(obj: Obj, kind: str) -> Obj | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond  # type: ignore[no-any-return]
    return None


def deployment_health(deploy: Obj) -> Verdict:
    """The health of one Deployment from its spec and status (argo gitops-engine's rules)."""
    spec, status = deploy.get("spec", {}), deploy.get("status", {})
    if spec.get("paused"):
        return Verdict(Health.SUSPENDED, "the Deployment is paused")
    if deploy["metadata"].get("generation", 0) > status.get("observedGeneration", 0):
        return Verdict(Health.PROGRESSING, "waiting for the Deployment controller")
    progressing = condition(deploy, "Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return Verdict(Health.DEGRADED, f"ProgressDeadlineExceeded: {progressing.get('message')}")
    want = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    total = status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < want:
        return Verdict(Health.PROGRESSING, f"{updated} of {want} replicas updated")
    if total > updated:
        return Verdict(Health.PROGRESSING, f"{total - updated} old replicas pending termination")
    if available < updated:
        return Verdict(Health.PROGRESSING, f"{available} of {updated} updated replicas available")
    return Verdict(Health.HEALTHY)


def crashes(pods: Iterable[Obj]) -> list[Crash]:
    """Containers waiting for a reason that will not pass on its own."""
    found: list[Crash] = []
    for pod in pods:
        for status in pod.get("status", {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in CRASH_REASONS:
                found.append(
                    Crash(
                        pod["metadata"]["name"],
                        status.get("name", ""),
                        waiting["reason"],
                        status.get("restartCount", 0),
                    )
                )
    return sorted(found, key=lambda c: (c.pod, c.container))


def unschedulable(pods: Iterable[Obj]) -> str | None:
    """Why the first pod the scheduler cannot place waits (`PodScheduled=False`), or None."""
    for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
        scheduled = condition(pod, "PodScheduled")
        if scheduled is not None and scheduled.get("status") == "False":
            why = f"{scheduled.get('reason', '')}: {scheduled.get('message', '')}".strip(": ")
            return f"pod {pod['metadata']['name']}: {why}"
    return None


def service_health(deploy: Obj | None, pods: Iterable[Obj]) -> tuple[Verdict, list[Crash]]:
    """One service's verdict: Missing without a Deployment; a crash loop makes it Degraded.

    A Deployment that is not Healthy carries, in its reason, why a pod cannot be placed.
    """
    if deploy is None:
        return Verdict(Health.MISSING, "no Deployment"), []
    pods = list(pods)
    crashed = crashes(pods)
    if crashed:
        first = crashed[0]
        text = f"pod {first.pod}: {first.reason} (restarts: {first.restarts})"
        return Verdict(Health.DEGRADED, text), crashed
    verdict = deployment_health(deploy)
    waiting = unschedulable(pods) if verdict.health is not Health.HEALTHY else None
    if waiting is not None:
        return Verdict(verdict.health, f"{verdict.reason}; {waiting}"), []
    return verdict, []
