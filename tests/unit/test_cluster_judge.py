"""How a sync on Kubernetes ends, from how the environment settled (pure: data in, result out)."""

from __future__ import annotations

from ondeck.cluster import actions, judge
from ondeck.kube.health import Crash
from ondeck.runtime.kubernetes import ApplyResult, EnvStatus, ServiceStatus, SyncOutcome
from ondeck.state.health import Health, Verdict
from ondeck.state.lifecycle import SyncResult


def _outcome(*services: ServiceStatus) -> SyncOutcome:
    return SyncOutcome("shop", ApplyResult(), EnvStatus("shop", services), ())


def _svc(
    health: Health, reason: str | None = None, crashes: tuple[tuple[Crash, str], ...] = ()
) -> ServiceStatus:
    return ServiceStatus("web", Verdict(health, reason), 2, 0, 0, "r1", ("shop:1",), crashes)


def test_healthy_succeeds() -> None:
    assert judge(_outcome(_svc(Health.HEALTHY))) == (SyncResult.SUCCEEDED, None)


def test_degraded_fails_with_the_reason_and_a_crash_loops_last_lines() -> None:
    crash = (Crash("web-1", "web", "CrashLoopBackOff", 3), "boom\nTraceback: no db\n")
    result, error = judge(_outcome(_svc(Health.DEGRADED, "pod web-1: CrashLoopBackOff", (crash,))))
    assert result is SyncResult.FAILED
    assert error == (
        "web: pod web-1: CrashLoopBackOff; "
        "--- web-1 (CrashLoopBackOff), last log lines ---\nboom\nTraceback: no db"
    )


def test_still_progressing_at_the_deadline_fails_saying_so() -> None:
    result, error = judge(_outcome(_svc(Health.PROGRESSING, "0 of 2 updated replicas available")))
    assert result is SyncResult.FAILED
    assert error == "not ready before the rollout deadline: web: 0 of 2 updated replicas available"


def test_actions_name_each_object_by_what_was_done() -> None:
    done = ApplyResult(
        created=["Deployment/shop/web"],
        changed=["ConfigMap/shop/web-env"],
        reverted=["Service/shop/web"],
        pruned=["Deployment/shop/worker"],
    )
    assert actions(done) == [
        "create Deployment/shop/web",
        "apply ConfigMap/shop/web-env",
        "revert Service/shop/web (changed by hand)",
        "prune Deployment/shop/worker",
    ]
