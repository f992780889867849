"""How a sync on Kubernetes ends, from how the environment settled (pure: data in, result out).

A canary at a pause leaves it open, an aborted one aborts it."""

from __future__ import annotations

from ondeck.cluster import actions, judge, wake_at
from ondeck.kube.canary import Move
from ondeck.kube.health import Crash
from ondeck.runtime.kube_canary import CanaryState, progress_of
from ondeck.runtime.kubernetes import ApplyResult, EnvStatus, ServiceStatus, SyncOutcome
from ondeck.state.health import Health, Verdict
from ondeck.state.lifecycle import SyncResult
from ondeck.state.rollout import Stage


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


def _canary(move: Move, aborted: bool = False, wake_at: float | None = None) -> CanaryState:
    reason = "canary 1 of 4 pods (~25%), paused" if not aborted else "canary aborted: by a person"
    return CanaryState(
        "web", 1, 2, 1, 3, move, reason, aborted, 1000.0, wake_at, ("shop:1", "shop:2")
    )


def _with(status: Health, *canaries: CanaryState, reason: str | None = None) -> SyncOutcome:
    outcome = _outcome(_svc(status, reason))
    return SyncOutcome("shop", ApplyResult(), outcome.status, (), canaries)


def test_a_canary_at_a_pause_leaves_the_sync_open() -> None:
    for move in (Move.PAUSE, Move.MANUAL):
        assert judge(_with(Health.SUSPENDED, _canary(move))) == (None, None)


def test_a_canary_at_a_pause_beside_a_broken_service_fails() -> None:
    other = ServiceStatus("worker", Verdict(Health.DEGRADED, "crash"), 1, 0, 0, "r1", ("w:1",))
    web = _svc(Health.SUSPENDED, "paused")
    outcome = SyncOutcome(
        "shop", ApplyResult(), EnvStatus("shop", (web, other)), (), (_canary(Move.MANUAL),)
    )
    assert judge(outcome) == (SyncResult.FAILED, "web: paused; worker: crash")


def test_an_aborted_canary_aborts_the_sync_with_its_reason() -> None:
    outcome = _with(Health.DEGRADED, _canary(Move.WEIGHT, aborted=True), reason="aborted")
    assert judge(outcome) == (SyncResult.ABORTED, "web: canary aborted: by a person")


def test_the_sync_wakes_when_the_first_timed_pause_ends() -> None:
    late, soon = _canary(Move.PAUSE, wake_at=1060.0), _canary(Move.PAUSE, wake_at=1030.0)
    assert wake_at(_with(Health.SUSPENDED, late, soon, _canary(Move.MANUAL))) == 1030.0
    assert wake_at(_with(Health.SUSPENDED, _canary(Move.MANUAL))) is None


def test_a_canary_reads_as_the_hosts_release_progress() -> None:
    paused = progress_of(_canary(Move.MANUAL))
    assert (paused.stage, paused.weight, paused.step) == (Stage.PAUSED, 25, 1)
    assert (paused.stable, paused.canary) == ("shop:1", "shop:2")
    assert progress_of(_canary(Move.PAUSE)).stage is Stage.PROGRESSING
    stopped = progress_of(_canary(Move.WEIGHT, aborted=True))
    assert stopped.stage is Stage.ABORTED and stopped.reason == "canary aborted: by a person"
