"""Canary by replica ratio through KubernetesRuntime, on a real control plane (tests/kubeplane.py).

Real API server, Deployment and ReplicaSet controllers and scheduler; KWOK
plays the kubelet, so pods become Ready without running (no container can run
here). What is checked is how many pods of each release the Service selects at
each step, the pauses, the manual promotion, and an abort.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from kubeplane import ControlPlane
from ondeck.errors import UserError
from ondeck.kube.canary import Move
from ondeck.runtime.kubernetes import Cluster, KubernetesRuntime, SyncOutcome, connect
from ondeck.spec.load import parse, render_spec
from ondeck.state.desired import Desired, render
from ondeck.state.health import Health

pytestmark = pytest.mark.timeout(600)
T = TypeVar("T")

SPEC = """\
app: {app}
runtime: container
services:
  web:
    image: registry.example/shop:{version}
    port: 8080
    replicas: 4
    rollout:
      strategy: canary
      steps: [{{weight: 25}}, {{pause: 2s}}, {{weight: 50}}, {{pause: manual}}]
      deadline: {deadline}
"""


def _desired(app: str, version: int, deadline: str = "5m", extra: str = "") -> Desired:
    text = SPEC.format(app=app, version=version, deadline=deadline) + extra
    return render(render_spec(parse(text)), "default", "", "")


@pytest.fixture
def app() -> str:
    return f"c{uuid.uuid4().hex[:6]}"


@pytest.fixture
def runtime(control_plane: ControlPlane) -> Iterator[KubernetesRuntime]:
    api = connect(Cluster(control_plane.kubeconfig))
    yield KubernetesRuntime(api)
    api.close()  # type: ignore[no-untyped-call]


def _until(what: str, check: Callable[[], T | None], timeout: float = 120) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _served(runtime: KubernetesRuntime, ns: str) -> Counter[str]:
    """Images of the ready pods the Service `web` selects (what traffic reaches)."""
    service = runtime.get({"kind": "Service", "metadata": {"name": "web", "namespace": ns}})
    assert service is not None
    selector = ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items())
    pods = runtime._request("GET", f"/api/v1/namespaces/{ns}/pods", labelSelector=selector)
    images: Counter[str] = Counter()
    for pod in pods["items"]:
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions", [])
        )
        if ready and pod["metadata"].get("deletionTimestamp") is None:
            images[pod["spec"]["containers"][0]["image"].rsplit(":", 1)[1]] += 1
    return images


def _deployment(runtime: KubernetesRuntime, ns: str, name: str) -> dict[str, Any] | None:
    return runtime.get({"kind": "Deployment", "metadata": {"name": name, "namespace": ns}})


def _web(outcome: SyncOutcome) -> Any:
    return next(s for s in outcome.status.services if s.name == "web")


def test_a_canary_steps_through_replica_ratios_pauses_and_promotion(
    runtime: KubernetesRuntime, app: str
) -> None:
    first = runtime.sync(_desired(app, 1), "r1", timeout=120)
    ns = first.namespace
    assert first.status.health is Health.HEALTHY and not first.canaries
    assert _until("4 pods of 1", lambda: _served(runtime, ns) == Counter({"1": 4}))

    # step 1: weight 25 of 4 replicas = 1 canary pod, 3 stable ones; then a 2 s pause
    paused = runtime.sync(_desired(app, 2), "r2", timeout=120)
    (state,) = paused.canaries
    assert (state.move, state.canary, state.stable, state.step) == (Move.PAUSE, 1, 3, 1)
    assert paused.status.health is Health.SUSPENDED
    assert "canary 1 of 4 pods (~25%)" in str(_web(paused).verdict.reason)
    assert _until("1 of 2, 3 of 1", lambda: _served(runtime, ns) == Counter({"1": 3, "2": 1}))
    stable = _deployment(runtime, ns, "web")
    assert stable is not None
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1")

    # syncing again during the pause changes nothing; once it is over, weight 50, then
    # the manual pause
    def past_the_pause() -> SyncOutcome | None:
        outcome = runtime.sync(_desired(app, 2), "r2", timeout=120)
        return outcome if outcome.canaries[0].move is Move.MANUAL else None

    manual = _until("the manual pause", past_the_pause, timeout=60)
    (state,) = manual.canaries
    assert (state.canary, state.stable) == (2, 2)
    assert "ondeck rollout promote" in str(_web(manual).verdict.reason)
    assert manual.status.health is Health.SUSPENDED
    assert _until("2 and 2", lambda: _served(runtime, ns) == Counter({"1": 2, "2": 2}))
    # a sync does not pass a manual pause
    again = runtime.sync(_desired(app, 2), "r2", timeout=120)
    assert again.canaries[0].move is Move.MANUAL

    # promote: the stable Deployment takes release 2 with all 4 replicas, the canary goes
    done = runtime.promote(_desired(app, 2), "web", "r2", timeout=120)
    assert done.canaries[0].move is Move.PROMOTE
    assert done.status.health is Health.HEALTHY, done.status.reasons()
    assert f"Deployment/{ns}/web-canary" in done.result.pruned
    assert _until("4 pods of 2", lambda: _served(runtime, ns) == Counter({"2": 4}))
    stable = _deployment(runtime, ns, "web")
    assert stable is not None and stable["spec"]["replicas"] == 4
    # settled: the next sync writes nothing (the replica count is ondeck's again)
    quiet = runtime.sync(_desired(app, 2), "r2", timeout=120)
    assert quiet.result.writes == 0 and not quiet.canaries, quiet.result


def test_a_canary_that_cannot_become_ready_is_aborted(runtime: KubernetesRuntime, app: str) -> None:
    first = runtime.sync(_desired(app, 1, deadline="3s"), "r1", timeout=120)
    ns = first.namespace
    assert first.status.health is Health.HEALTHY
    # release 2 asks for 64 CPUs on a node of 32: its pod is never scheduled
    broken = _desired(app, 2, deadline="3s", extra="    cpus: 64\n")
    aborted = runtime.sync(broken, "r2", timeout=60)
    (state,) = aborted.canaries
    assert state.aborted and aborted.status.health is Health.DEGRADED
    assert "ProgressDeadlineExceeded" in str(_web(aborted).verdict.reason)
    # the stable set is whole again, and serves alone
    assert _until("4 pods of 1", lambda: _served(runtime, ns) == Counter({"1": 4}))
    canary = _deployment(runtime, ns, "web-canary")
    assert canary is not None and canary["spec"]["replicas"] == 0
    # the same release is not tried again; a new one starts afresh
    still = runtime.sync(broken, "r2", timeout=60)
    assert still.canaries[0].aborted and still.result.writes == 0
    fixed = runtime.sync(_desired(app, 3, deadline="3s"), "r3", timeout=120)
    assert fixed.canaries[0].move is Move.PAUSE and not fixed.canaries[0].aborted


def test_header_or_cookie_matching_is_refused_before_anything_changes(
    runtime: KubernetesRuntime, app: str
) -> None:
    first = runtime.sync(_desired(app, 1), "r1", timeout=120)
    ns = first.namespace
    text = SPEC.format(app=app, version=2, deadline="5m").replace(
        "      deadline:", "      match: {header: {X-Canary: always}}\n      deadline:"
    )
    matching = render(render_spec(parse(text)), "default", "", "")
    with pytest.raises(UserError, match=r"rollout\.match"):
        runtime.sync(matching, "r2", timeout=60)
    live = _deployment(runtime, ns, "web")
    assert live is not None
    assert live["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1")
    assert _deployment(runtime, ns, "web-canary") is None


def test_a_look_without_waiting_leaves_a_canary_where_it_is(
    runtime: KubernetesRuntime, app: str
) -> None:
    # the controller also syncs with no time to wait (to observe): pods not ready yet
    # are not a failure, the canary stays at its step and the next sync goes on
    first = runtime.sync(_desired(app, 1), "r1", timeout=120)
    assert first.status.health is Health.HEALTHY
    looked = runtime.sync(_desired(app, 2), "r2", timeout=0)
    (state,) = looked.canaries
    assert (state.move, state.aborted, state.step, state.canary) == (Move.WEIGHT, False, 0, 1)
    assert looked.status.health is Health.PROGRESSING
    waited = runtime.sync(_desired(app, 2), "r2", timeout=120)
    assert waited.canaries[0].move is Move.PAUSE and waited.canaries[0].step == 1


def test_a_person_promotes_past_one_pause_aborts_and_retries(
    runtime: KubernetesRuntime, app: str
) -> None:
    # as on a host: `ondeck rollout promote` goes past the current pause (timed or manual),
    # one per promotion; `abort` goes back to the stable set; promoting an aborted release
    # starts it again from its first step
    steps = "[{weight: 25}, {pause: 1h}, {weight: 50}, {pause: manual}]"
    text = SPEC.format(app=app, version=1, deadline="5m").replace(
        "[{weight: 25}, {pause: 2s}, {weight: 50}, {pause: manual}]", steps
    )
    first = runtime.sync(render(render_spec(parse(text)), "default", "", ""), "r1", timeout=120)
    ns = first.namespace
    v2 = render(render_spec(parse(text.replace("shop:1", "shop:2"))), "default", "", "")
    timed = runtime.sync(v2, "r2", timeout=120)
    assert (timed.canaries[0].move, timed.canaries[0].canary) == (Move.PAUSE, 1)

    past = runtime.promote(v2, "web", "r2", timeout=120)
    (state,) = past.canaries
    assert (state.move, state.step, state.canary, state.stable) == (Move.MANUAL, 3, 2, 2)
    assert _until("2 and 2", lambda: _served(runtime, ns) == Counter({"1": 2, "2": 2}))

    stopped = runtime.sync(v2, "r2", timeout=120, abort=frozenset({"web"}))
    (state,) = stopped.canaries
    assert state.aborted and "aborted by a person" in state.reason
    assert stopped.status.health is Health.DEGRADED
    assert _until("4 pods of 1", lambda: _served(runtime, ns) == Counter({"1": 4}))
    assert runtime.sync(v2, "r2", timeout=120).canaries[0].aborted  # not tried again

    again = runtime.promote(v2, "web", "r2", timeout=120)
    (state,) = again.canaries
    assert (state.move, state.step, state.canary, state.aborted) == (Move.PAUSE, 1, 1, False)
    canary = _deployment(runtime, ns, "web-canary")
    assert canary is not None
    assert "ondeck.dev/canary-aborted" not in canary["metadata"]["annotations"]
