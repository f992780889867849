"""Deployment health and conflict field paths: API objects in, verdicts out (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from ondeck.kube.health import service_health
from ondeck.runtime.kubernetes import conflicts, is_subset, without_field
from ondeck.state.health import Health


def _deploy(generation: int = 2, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "generation": generation},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 2, **status},
    }


DONE = {"replicas": 2, "updatedReplicas": 2, "availableReplicas": 2, "readyReplicas": 2}
DEADLINE = {
    "type": "Progressing",
    "status": "False",
    "reason": "ProgressDeadlineExceeded",
    "message": 'ReplicaSet "web-1" has timed out progressing.',
}


@pytest.mark.parametrize(
    ("deploy", "health", "reason"),
    [
        (_deploy(**DONE), Health.HEALTHY, None),
        (
            _deploy(generation=3, **DONE),
            Health.PROGRESSING,
            "waiting for the Deployment controller",
        ),
        (_deploy(replicas=3, updatedReplicas=1), Health.PROGRESSING, "1 of 2 replicas updated"),
        (
            _deploy(**{**DONE, "replicas": 3}),
            Health.PROGRESSING,
            "1 old replicas pending termination",
        ),
        (
            _deploy(**{**DONE, "availableReplicas": 1}),
            Health.PROGRESSING,
            "1 of 2 updated replicas available",
        ),
        (
            _deploy(conditions=[DEADLINE], replicas=1),
            Health.DEGRADED,
            'ProgressDeadlineExceeded: ReplicaSet "web-1" has timed out progressing.',
        ),
        (None, Health.MISSING, "no Deployment"),
    ],
)
def test_deployment_health(
    deploy: dict[str, Any] | None, health: Health, reason: str | None
) -> None:
    verdict, crashed = service_health(deploy, [])
    assert (verdict.health, verdict.reason) == (health, reason)
    assert crashed == []


def test_a_crash_looping_pod_degrades_a_deployment_that_looks_fine() -> None:
    pod = {
        "metadata": {"name": "web-1-abc"},
        "status": {
            "containerStatuses": [
                {
                    "name": "web",
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                }
            ]
        },
    }
    verdict, crashed = service_health(_deploy(**DONE), [pod])
    assert verdict.health is Health.DEGRADED
    assert verdict.reason == "pod web-1-abc: CrashLoopBackOff (restarts: 4)"
    assert [(c.pod, c.restarts) for c in crashed] == [("web-1-abc", 4)]


def test_conflicts_are_read_from_the_status_of_a_409() -> None:
    body = {
        "kind": "Status",
        "details": {
            "causes": [
                {
                    "type": "FieldManagerConflict",
                    "message": 'conflict with "autoscaler" using apps/v1',
                    "field": ".spec.replicas",
                }
            ]
        },
    }
    err = ApiException(status=409, reason="Conflict")
    err.body = json.dumps(body)
    assert conflicts(err) == [(".spec.replicas", "autoscaler")]


def test_a_field_path_is_removed_even_through_keyed_lists_and_dotted_keys() -> None:
    obj: dict[str, Any] = {
        "metadata": {"labels": {"app.kubernetes.io/name": "shop", "app": "x"}},
        "spec": {
            "replicas": 2,
            "template": {"spec": {"containers": [{"name": "web", "image": "a", "args": ["x"]}]}},
        },
    }
    assert without_field(obj, ".spec.replicas") and "replicas" not in obj["spec"]
    assert without_field(obj, '.spec.template.spec.containers[name="web"].image')
    assert obj["spec"]["template"]["spec"]["containers"] == [{"name": "web", "args": ["x"]}]
    assert without_field(obj, ".metadata.labels.app.kubernetes.io/name")
    assert obj["metadata"]["labels"] == {"app": "x"}
    assert not without_field(obj, ".spec.nothing")


def test_subset_ignores_what_the_server_adds_but_not_what_it_changed() -> None:
    want = {"spec": {"replicas": 2, "ports": [{"port": 80}]}}
    assert is_subset(
        want, {"spec": {"replicas": 2, "ports": [{"port": 80, "protocol": "TCP"}], "x": 1}}
    )
    assert not is_subset(want, {"spec": {"replicas": 3, "ports": [{"port": 80}]}})
    assert not is_subset(want, {"spec": {"replicas": 2, "ports": []}})


def test_a_pod_the_scheduler_cannot_place_is_named_with_why() -> None:
    pending = {
        "metadata": {"name": "web-1-abc"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient cpu.",
                }
            ],
        },
    }
    verdict, _ = service_health(_deploy(conditions=[DEADLINE], replicas=1), [pending])
    assert verdict.health is Health.DEGRADED
    assert verdict.reason == (
        'ProgressDeadlineExceeded: ReplicaSet "web-1" has timed out progressing.; '
        "pod web-1-abc: Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."
    )
    # a settled Deployment says nothing of pods
    assert service_health(_deploy(**DONE), [pending])[0].reason is None
