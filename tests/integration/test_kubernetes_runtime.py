"""The Kubernetes runtime against a real control plane (tests/kubeplane.py).

Real etcd, kube-apiserver, controller manager and scheduler; KWOK plays the
kubelet (pods become Ready on a simulated node without running containers,
which no kubelet could do here), so what is checked is what the API server
and the Deployment controller do with what ondeck applies.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kubeplane import ControlPlane
from ondeck.errors import TemporaryError, UserError
from ondeck.kube.render import Obj, dump, manifests
from ondeck.runtime.kubernetes import (
    NO_CLUSTER,
    ApplyResult,
    Cluster,
    EnvStatus,
    KubernetesRuntime,
    connect,
)
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
    image: registry.example/shop:1
    port: 8080
    replicas: 2
    env: {{GREETING: hello}}
    health: {{http: /healthz}}
    routes: [{{host: shop.example}}]
  worker:
    image: registry.example/worker:1
    command: ["/bin/worker"]
environments:
  staging:
    services: {{web: {{replicas: 1}}}}
  production: {{}}
"""


def _objects(app: str, env: str, text: str | None = None) -> list[Obj]:
    spec = render_spec(parse(text or SPEC.format(app=app)), env)
    return manifests(render(spec, env, "", ""))


def _kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={plane.kubeconfig}", "--request-timeout=30s", *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _until(what: str, check: Callable[[], T | None], timeout: float = 120) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def app() -> str:
    return f"t{uuid.uuid4().hex[:6]}"


@pytest.fixture
def runtime(control_plane: ControlPlane) -> Iterator[KubernetesRuntime]:
    api = connect(Cluster(control_plane.kubeconfig))
    yield KubernetesRuntime(api)
    api.close()  # type: ignore[no-untyped-call]


def _ns(objects: list[Obj]) -> str:
    return str(objects[0]["metadata"]["name"])


def _replicasets(runtime: KubernetesRuntime, ns: str, service: str) -> list[dict[str, Any]]:
    items = runtime._request(
        "GET",
        f"/apis/apps/v1/namespaces/{ns}/replicasets",
        labelSelector=f"ondeck.dev/service={service}",
    )["items"]
    return sorted(items, key=lambda r: r["metadata"]["name"])


def _deploy(runtime: KubernetesRuntime, ns: str, name: str) -> dict[str, Any]:
    found = runtime.get({"kind": "Deployment", "metadata": {"name": name, "namespace": ns}})
    assert found is not None
    return found


def _apply_and_wait(
    runtime: KubernetesRuntime, app: str, env: str, objects: list[Obj], revision: str = "r1"
) -> tuple[ApplyResult, EnvStatus]:
    result = runtime.apply(objects, revision)
    status = runtime.wait(_ns(objects), app, env, ["web", "worker"], timeout=120)
    return result, status


RICH = """\
app: {app}
runtime: kubernetes
services:
  web:
    image: registry.example/shop:1.4.2
    command: ["/bin/app", "--port", "${{PORT}}", "--name", "$${{literal}}"]
    version: "1.4.2"
    env: {{LOG_LEVEL: info, SELF: "${{ONDECK_APP}}-${{ONDECK_ENV}}"}}
    port: 8080
    replicas: 3
    memory: 256MiB
    cpus: 0.5
    health: {{http: /healthz, start_period: 5s}}
    stop: {{grace: 45s}}
    rollout: {{strategy: blue-green}}
    routes: [{{host: shop.example, path: /api}}, {{path: /}}]
    volumes: {{uploads: /uploads}}
  worker:
    image: registry.example/shop:1.4.2
    health: {{exec: ["/bin/check"]}}
    rollout: {{strategy: recreate}}
environments:
  staging: {{}}
  production: {{}}
"""


def test_every_rendered_manifest_passes_server_side_dry_run(
    control_plane: ControlPlane, app: str
) -> None:
    # the plain spec in two environments, and one using every key the renderer maps
    cases: list[tuple[str, str, str | None]] = [(app, "staging", None), (app, "production", None)]
    cases.append((f"{app}r", "staging", RICH.format(app=f"{app}r")))
    for name, env, text in cases:
        objects = _objects(name, env, text)
        # a dry run creates nothing, and what goes in a namespace needs it to exist
        _kubectl(control_plane, "apply", "-f", "-", stdin=dump(objects[:1]))
        stream = dump(objects)
        out = _kubectl(control_plane, "apply", "--dry-run=server", "-f", "-", stdin=stream)
        assert "(server dry run)" in out
        assert "deployment.apps/web" in out and "ingress.networking.k8s.io/web" in out


def test_apply_reaches_available_and_reapply_changes_nothing(
    runtime: KubernetesRuntime, app: str
) -> None:
    objects = _objects(app, "production")
    ns = _ns(objects)
    result, status = _apply_and_wait(runtime, app, "production", objects)
    assert status.health is Health.HEALTHY, status.reasons()
    assert result.created and not result.changed
    web = next(s for s in status.services if s.name == "web")
    assert (web.desired, web.ready, web.revision) == (2, 2, "r1")
    before = [r["metadata"]["uid"] for r in _replicasets(runtime, ns, "web")]
    version = _deploy(runtime, ns, "web")["metadata"]["resourceVersion"]

    again = runtime.apply(objects, "r1")
    assert again.writes == 0 and not again.changed_anything
    assert len(again.unchanged) == len(objects)
    assert [r["metadata"]["uid"] for r in _replicasets(runtime, ns, "web")] == before
    assert _deploy(runtime, ns, "web")["metadata"]["resourceVersion"] == version


def test_an_image_update_rolls_a_new_replicaset_to_available(
    runtime: KubernetesRuntime, app: str
) -> None:
    objects = _objects(app, "staging")
    ns = _ns(objects)
    _apply_and_wait(runtime, app, "staging", objects)
    text = SPEC.format(app=app).replace("registry.example/shop:1", "registry.example/shop:2")
    updated = _objects(app, "staging", text)
    result, status = _apply_and_wait(runtime, app, "staging", updated, "r2")
    assert f"Deployment/{ns}/web" in result.changed
    assert status.health is Health.HEALTHY, status.reasons()
    web = next(s for s in status.services if s.name == "web")
    assert web.images == ("registry.example/shop:2",) and web.revision == "r2"
    sets = _replicasets(runtime, ns, "web")
    assert len(sets) == 2
    live = {r["spec"]["template"]["spec"]["containers"][0]["image"]: r for r in sets}
    assert live["registry.example/shop:2"]["status"].get("availableReplicas") == 1
    assert live["registry.example/shop:1"]["spec"]["replicas"] == 0


def test_a_deployment_that_cannot_become_ready_fails_with_the_reason(
    runtime: KubernetesRuntime, app: str
) -> None:
    # 64 CPUs on a node that has 32: the scheduler never places it.
    text = SPEC.format(app=app).replace("port: 8080", "port: 8080\n    cpus: 64")
    objects = _objects(app, "staging", text)
    for obj in objects:
        if obj["kind"] == "Deployment":
            obj["spec"]["progressDeadlineSeconds"] = 3
    runtime.apply(objects, "r1")
    status = runtime.wait(_ns(objects), app, "staging", ["web", "worker"], timeout=120)
    assert status.health is Health.DEGRADED
    web = next(s for s in status.services if s.name == "web")
    assert web.verdict.reason is not None
    assert web.verdict.reason.startswith("ProgressDeadlineExceeded"), web.verdict.reason


def test_objects_that_left_the_spec_are_pruned(
    control_plane: ControlPlane, runtime: KubernetesRuntime, app: str
) -> None:
    objects = _objects(app, "staging")
    ns = _ns(objects)
    _apply_and_wait(runtime, app, "staging", objects)
    text = SPEC.format(app=app)
    text = text[: text.index("  worker:")] + text[text.index("environments:") :]
    fewer = _objects(app, "staging", text)
    result = runtime.apply(fewer, "r2")
    assert f"Deployment/{ns}/worker" in result.pruned
    assert (
        runtime.get({"kind": "Deployment", "metadata": {"name": "worker", "namespace": ns}}) is None
    )
    assert f"Deployment/{ns}/web" not in result.pruned
    # an object ondeck does not own is never pruned
    _kubectl(control_plane, "-n", ns, "create", "configmap", "not-ours")
    again = runtime.apply(fewer, "r2")
    assert not again.pruned
    assert "not-ours" in _kubectl(control_plane, "-n", ns, "get", "configmap")


def test_a_kubectl_edit_of_an_owned_field_is_reverted(
    control_plane: ControlPlane, runtime: KubernetesRuntime, app: str
) -> None:
    objects = _objects(app, "staging")
    ns = _ns(objects)
    _apply_and_wait(runtime, app, "staging", objects)
    patch = (
        '{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"evil.example/x:1"}]}}}}'
    )
    _kubectl(control_plane, "-n", ns, "patch", "deployment", "web", "-p", patch)
    assert _image(runtime, ns) == "evil.example/x:1"

    reporter = KubernetesRuntime(runtime.api, self_heal=False)
    reported = reporter.apply(objects, "r1")
    assert f"Deployment/{ns}/web" in reported.drifted and reported.writes == 0
    assert _image(runtime, ns) == "evil.example/x:1"

    healed = runtime.apply(objects, "r1")
    assert f"Deployment/{ns}/web" in healed.reverted
    assert _image(runtime, ns) == "registry.example/shop:1"


def _image(runtime: KubernetesRuntime, ns: str) -> str:
    return str(_deploy(runtime, ns, "web")["spec"]["template"]["spec"]["containers"][0]["image"])


def test_a_field_of_another_manager_is_left_alone(
    control_plane: ControlPlane, runtime: KubernetesRuntime, app: str
) -> None:
    objects = _objects(app, "staging")
    ns = _ns(objects)
    _apply_and_wait(runtime, app, "staging", objects)
    # another declarative owner (an autoscaler, another tool) takes .spec.replicas
    other = f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec: {{replicas: 3}}
"""
    _kubectl(
        control_plane,
        "apply",
        "--server-side",
        "--field-manager=autoscaler",
        "--force-conflicts",
        "-f",
        "-",
        stdin=other,
    )
    text = SPEC.format(app=app).replace("GREETING: hello", "GREETING: bonjour")
    result = runtime.apply(_objects(app, "staging", text), "r2")
    assert any(".spec.replicas" in item and "autoscaler" in item for item in result.left), result
    live = _deploy(runtime, ns, "web")
    assert live["spec"]["replicas"] == 3
    config = runtime.get({"kind": "ConfigMap", "metadata": {"name": "web-env", "namespace": ns}})
    assert config is not None and config["data"]["GREETING"] == "bonjour"
    # and the next reconcile is quiet: nothing left to write
    assert runtime.apply(_objects(app, "staging", text), "r2").writes == 0


def test_two_environments_live_in_two_namespaces(runtime: KubernetesRuntime, app: str) -> None:
    staging, production = _objects(app, "staging"), _objects(app, "production")
    assert _ns(staging) != _ns(production)
    _, s1 = _apply_and_wait(runtime, app, "staging", staging)
    _, s2 = _apply_and_wait(runtime, app, "production", production)
    assert s1.health is Health.HEALTHY and s2.health is Health.HEALTHY
    replicas = {
        s.namespace: next(x.desired for x in s.services if x.name == "web") for s in (s1, s2)
    }
    assert replicas == {_ns(staging): 1, _ns(production): 2}
    # pruning one environment never touches the other
    pruned = runtime.apply(staging[:1], "r2")
    assert all(_ns(staging) in key for key in pruned.pruned) and pruned.pruned
    assert runtime.status(_ns(production), app, "production", ["web"]).health is Health.HEALTHY


def test_the_api_server_restarted_mid_apply(
    control_plane: ControlPlane, runtime: KubernetesRuntime, app: str
) -> None:
    objects = _objects(app, "production")
    restarted = threading.Event()

    def restart() -> None:
        control_plane.restart("kube-apiserver")
        restarted.set()

    thread = threading.Thread(target=restart)
    thread.start()
    errors: list[TemporaryError] = []
    deadline = time.monotonic() + 180
    result = None
    while result is None:
        try:
            result = runtime.apply(objects, "r1")
            if not restarted.is_set():
                result = None  # applied before the restart began: apply again across it
        except TemporaryError as err:
            errors.append(err)
            assert time.monotonic() < deadline, f"the API server did not come back: {err}"
            time.sleep(0.5)
    thread.join()
    assert errors, "no apply ran while the API server was down"
    status = _until(
        "production to become healthy",
        lambda: _healthy(runtime.wait(_ns(objects), app, "production", ["web", "worker"], 30)),
    )
    assert status.health is Health.HEALTHY
    assert runtime.apply(objects, "r1").writes == 0


def _healthy(status: EnvStatus) -> EnvStatus | None:
    return status if status.health is Health.HEALTHY else None


def _degraded(status: EnvStatus) -> EnvStatus | None:
    return status if status.health is Health.DEGRADED else None


def test_no_cluster_configured_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(UserError) as caught:
        connect(Cluster())
    assert str(caught.value) == NO_CLUSTER
    assert "--kubeconfig" in NO_CLUSTER
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    with pytest.raises(UserError, match="did not load"):
        connect(Cluster(broken, "nope"))


BLUE_GREEN = """\
app: {app}
runtime: container
services:
  web:
    image: registry.example/shop:{tag}
    port: 8080
    replicas: 2
    rollout: {{strategy: blue-green, keep_old: {keep}}}
"""


def _desired(app: str, tag: str, keep: str = "1h") -> Desired:
    spec = render_spec(parse(BLUE_GREEN.format(app=app, tag=tag, keep=keep)), None)
    return render(spec, "default", "", "")


def _selected(runtime: KubernetesRuntime, ns: str) -> str:
    service = runtime.get({"kind": "Service", "metadata": {"name": "web", "namespace": ns}})
    assert service is not None
    return str(service["spec"]["selector"]["ondeck.dev/color"])


def test_blue_green_switches_the_service_only_once_the_new_set_is_available(
    runtime: KubernetesRuntime, app: str
) -> None:
    first = runtime.sync(_desired(app, "1"), "r1", timeout=120)
    ns = first.namespace
    assert first.status.health is Health.HEALTHY and first.switched == ()
    assert _selected(runtime, ns) == "blue"

    second = runtime.sync(_desired(app, "2"), "r2", timeout=120)
    assert second.status.health is Health.HEALTHY and second.switched == ("web",)
    assert _selected(runtime, ns) == "green"
    green = _deploy(runtime, ns, "web-green")
    assert green["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/shop:2"
    # the old set is kept (keep_old) for an instant switch back, and a re-sync writes nothing
    assert _deploy(runtime, ns, "web-blue")["spec"]["replicas"] == 2
    quiet = runtime.sync(_desired(app, "2"), "r2", timeout=60)
    assert quiet.result.writes == 0 and quiet.switched == ()

    # a new set that cannot become ready never receives the traffic
    text = BLUE_GREEN.format(app=app, tag="3", keep="1h").replace(
        "port: 8080", "port: 8080\n    cpus: 64"
    )
    broken = render(render_spec(parse(text), None), "default", "", "")
    failed = runtime.sync(broken, "r3", timeout=8)
    assert failed.status.health is not Health.HEALTHY and failed.switched == ()
    assert _selected(runtime, ns) == "green"

    # keep_old passed: the next sync removes the idle set
    done = runtime.sync(_desired(app, "2", keep="0s"), "r4", timeout=60)
    assert f"Deployment/{ns}/web-blue" in done.result.pruned
    assert _selected(runtime, ns) == "green"


def test_a_crash_looping_pod_makes_the_service_degraded_with_its_logs(
    control_plane: ControlPlane, runtime: KubernetesRuntime, app: str
) -> None:
    objects = _objects(app, "staging")
    ns = _ns(objects)
    _apply_and_wait(runtime, app, "staging", objects)
    pods = runtime._request(
        "GET", f"/api/v1/namespaces/{ns}/pods", labelSelector="ondeck.dev/service=web"
    )["items"]
    pod = pods[0]["metadata"]["name"]
    # No kubelet runs containers here (KWOK only marks pods Ready), so the crash loop is
    # written to the pod's status the way a kubelet reports one: not ready, waiting.
    conditions = [
        {"type": kind, "status": "True" if kind in ("PodScheduled", "Initialized") else "False"}
        for kind in ("PodScheduled", "Initialized", "Ready", "ContainersReady")
    ]
    crashed = {
        "status": {
            "conditions": conditions,
            "containerStatuses": [
                {
                    "name": "web",
                    "image": "registry.example/shop:1",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 5,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                }
            ],
        }
    }
    _kubectl(
        control_plane,
        "-n",
        ns,
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(crashed),
    )
    # the ReplicaSet and Deployment controllers see the pod unready; the runtime then
    # looks at the pods and finds why
    status = _until(
        "web to be Degraded",
        lambda: _degraded(runtime.status(ns, app, "staging", ["web", "worker"])),
    )
    web = next(s for s in status.services if s.name == "web")
    assert web.verdict.health is Health.DEGRADED
    assert web.verdict.reason == f"pod {pod}: CrashLoopBackOff (restarts: 5)"
    ((crash, lines),) = web.crashes
    assert crash.pod == pod and crash.container == "web"
    # the log request is made; without a kubelet the API server cannot serve it, and says so
    assert lines.startswith("(no logs:")
