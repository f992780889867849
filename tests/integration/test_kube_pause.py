"""A restore's pause on a real control plane (tests/kubeplane.py): scaled to 0 and back.

KWOK plays the kubelet (pods become Ready, and go when deleted, on a simulated
node without running containers). The e2e (tests/e2e/test_kubernetes_backups.py)
restores through `ondeck up`; this checks what a controller killed mid-restore
leaves, and that its successor heals it from the spec.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from kubeplane import ControlPlane
from ondeck.kube.render import manifests
from ondeck.runtime.kube_pause import scale_back, scale_down, serving
from ondeck.runtime.kubernetes import RESTORER, Cluster, KubernetesRuntime, connect
from ondeck.spec.load import parse, render_spec
from ondeck.state.desired import Desired, render
from ondeck.state.health import Health

pytestmark = pytest.mark.timeout(600)

SPEC = """\
app: {app}
runtime: kubernetes
services:
  web:
    image: registry.example/shop:1
    port: 8080
    replicas: 2
    health: {{http: /healthz}}
  worker:
    image: registry.example/worker:1
"""


@pytest.fixture
def desired() -> Desired:
    app = f"p{uuid.uuid4().hex[:6]}"
    return render(render_spec(parse(SPEC.format(app=app)), None), "default", "r1", "r1")


@pytest.fixture
def api(control_plane: ControlPlane, desired: Desired) -> Iterator[Any]:
    client = connect(Cluster(control_plane.kubeconfig))
    yield client
    KubernetesRuntime(client).delete_environment(desired.app)
    client.close()  # type: ignore[no-untyped-call]


def _replicas(runtime: KubernetesRuntime, desired: Desired) -> dict[str, int]:
    live = runtime._deployments(desired.app, desired.app, desired.env)[0]
    return {name: int(d["spec"]["replicas"]) for name, d in sorted(live.items())}


def _restorer_owns_replicas(runtime: KubernetesRuntime, desired: Desired) -> list[str]:
    """Deployments whose replicas `ondeck-restore` still owns. The API server of the tests
    records no owner for a /scale write (ondeck's Apply just loses the field); one that
    records it (subresource scale) would conflict with ondeck's next apply, which the
    runtime resolves by taking the field back. Either way, none is left to the restorer."""
    live = runtime._deployments(desired.app, desired.app, desired.env)[0]
    return [
        name
        for name, d in sorted(live.items())
        for entry in d["metadata"].get("managedFields") or []
        if entry.get("manager") == RESTORER and "f:replicas" in json.dumps(entry["fieldsV1"])
    ]


def test_a_pause_and_its_resume_leave_the_deployments_as_they_were(
    api: Any, desired: Desired
) -> None:
    runtime = KubernetesRuntime(api)
    assert runtime.sync(desired, "r1", 120).status.health is Health.HEALTHY
    held: dict[str, int] = {}
    log: list[str] = []
    scale_down(runtime, desired, held, 120, log)
    assert held == {"web": 2, "worker": 1}
    assert _replicas(runtime, desired) == {"web": 0, "worker": 0}
    assert serving(runtime.pods(desired.app, desired.app, desired.env)) == []
    scale_back(runtime, desired, held, 120, log)
    assert held == {} and _replicas(runtime, desired) == {"web": 2, "worker": 1}
    assert log[-1] == "web, worker Available again", log
    # ondeck's next apply takes replicas back: a change in the spec is applied, no conflict left
    more = render(
        render_spec(parse(SPEC.format(app=desired.app).replace("replicas: 2", "replicas: 3"))),
        "default",
        "r2",
        "r2",
    )
    result = runtime.apply(manifests(more), "r2")
    assert not result.left, result.left
    assert _replicas(runtime, desired) == {"web": 3, "worker": 1}
    assert _restorer_owns_replicas(runtime, desired) == []


def test_a_controller_killed_mid_restore_is_healed_by_the_next_ones_check(
    api: Any, desired: Desired
) -> None:
    runtime = KubernetesRuntime(api)
    assert runtime.sync(desired, "r1", 120).status.health is Health.HEALTHY
    scale_down(runtime, desired, {}, 120, [])  # ... and the controller dies: nothing held
    # the next controller, self-heal off: reported as drift, left at 0
    reporter = KubernetesRuntime(api, self_heal=False)
    reported = reporter.sync(desired, "r1", 0.0)
    assert f"Deployment/{desired.app}/web" in reported.result.drifted
    assert _replicas(runtime, desired) == {"web": 0, "worker": 0}
    # self-heal on (or `ondeck sync`): replicas come back from the spec, ondeck's again
    healed = KubernetesRuntime(api).sync(desired, "r1", 120)
    assert f"Deployment/{desired.app}/web" in healed.result.reverted
    assert healed.status.health is Health.HEALTHY
    assert _replicas(runtime, desired) == {"web": 2, "worker": 1}
    assert _restorer_owns_replicas(runtime, desired) == []
