"""The watch-fed cache of an environment (runtime/kube_cache.py) against a real control plane.

Real API server (tests/kubeplane.py; KWOK plays the kubelet). Checked: a
no-op reconcile read from the cache sends no request at all; a watch event
reaches the cache; a drift is reverted from the cache with only the write; a
field another manager took is left to it, and the next reconcile is quiet; a
read right after ondeck's own write never sees the object as before it; the
API server restarted mid-watch makes the cache stale (reads go to the server)
and it lists again, and a watch resumed from before the restart gets 410 Gone
and lists again; and through `ClusterEnv`, an edit by hand made while the
controller runs wakes a check that reverts it from the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from kubeplane import ControlPlane
from ondeck.cluster import ClusterEnv, ClusterLink
from ondeck.kube.render import Obj, manifests
from ondeck.runtime.kube_cache import KubeCache, Reflector
from ondeck.runtime.kubernetes import Cluster, KubernetesRuntime, cache_sources, connect
from ondeck.spec.load import parse, render_spec
from ondeck.state.desired import Desired, render
from ondeck.state.health import Health
from ondeck.state.lifecycle import SyncResult

pytestmark = pytest.mark.timeout(600)
T = TypeVar("T")

SPEC = """\
app: {app}
runtime: {runtime}
services:
  web:
    image: registry.example/shop:1
    port: 8080
    env: {{GREETING: hello}}
    routes: [{{host: shop.example}}]
  worker:
    image: registry.example/worker:1
    command: ["/bin/worker"]
"""
EVIL = '{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"evil.example/x:1"}]}}}}'


def _desired(app: str, runtime: str = "container") -> Desired:
    spec = render_spec(parse(SPEC.format(app=app, runtime=runtime)), None)
    return render(spec, "default", "rev1", "")


def _kubectl(plane: ControlPlane, *args: str) -> str:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={plane.kubeconfig}", "--request-timeout=30s", *args],
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
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Counted:
    """Counts what a runtime sends through `_request` (every read and write it makes)."""

    def __init__(self, runtime: KubernetesRuntime) -> None:
        self.sent: Counter[str] = Counter()
        self.paths: list[tuple[str, str]] = []
        send = runtime._request

        def counted(method: str, path: str, body: Any = None, **query: Any) -> Any:
            self.sent[method] += 1
            self.paths.append((method, path))
            return send(method, path, body, **query)

        runtime._request = counted  # type: ignore[method-assign]


@pytest.fixture
def app() -> str:
    return f"c{uuid.uuid4().hex[:6]}"


@pytest.fixture
def runtime(control_plane: ControlPlane) -> Iterator[KubernetesRuntime]:
    api = connect(Cluster(control_plane.kubeconfig))
    yield KubernetesRuntime(api)
    api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def cached(runtime: KubernetesRuntime, app: str) -> Iterator[tuple[list[Obj], str, KubeCache]]:
    """The app applied and settled, then a fresh cache of it that the runtime reads."""
    desired = _desired(app)
    objects = manifests(desired)
    ns = str(objects[0]["metadata"]["name"])
    runtime.apply(objects, "r1")
    status = runtime.wait(ns, app, "default", ["web", "worker"], timeout=120)
    assert status.health is Health.HEALTHY, status.reasons()
    cache = KubeCache(runtime.api, cache_sources(ns, app, "default")).start()
    runtime.use_cache(ns, app, "default", cache)
    assert cache.wait_fresh(60), "the cache did not list every kind"
    yield objects, ns, cache
    cache.stop()


def _image(cache: KubeCache, name: str = "web") -> str | None:
    snapshot = cache.snapshot("Deployment")
    if snapshot is None:
        return None
    found = {d["metadata"]["name"]: d for d in snapshot[0]}
    return str(found[name]["spec"]["template"]["spec"]["containers"][0]["image"])


def test_a_no_op_from_the_cache_sends_nothing_and_a_watch_event_updates_it(
    control_plane: ControlPlane,
    runtime: KubernetesRuntime,
    app: str,
    cached: tuple[list[Obj], str, KubeCache],
) -> None:
    objects, ns, cache = cached
    counted = Counted(runtime)
    lists = cache.requests()["list"]
    result = runtime.apply(objects, "r1")
    status = runtime.status(ns, app, "default", ["web", "worker"])
    pods = runtime.pods(ns, app, "default")
    assert result.writes == 0 and len(result.unchanged) == len(objects)
    assert status.health is Health.HEALTHY and len(pods) == 2
    assert counted.sent == Counter(), "a no-op read from a fresh cache sends no request"

    _kubectl(control_plane, "-n", ns, "label", "configmap", "web-env", "extra=seen")

    def labelled() -> bool:
        snapshot = cache.snapshot("ConfigMap")
        return snapshot is not None and any(
            (c["metadata"].get("labels") or {}).get("extra") == "seen" for c in snapshot[0]
        )

    _until("the label to reach the cache through the watch", labelled, 60)
    assert cache.requests()["list"] == lists, "an event is not a list"


def test_a_drift_is_reverted_from_the_cache_with_only_the_write(
    control_plane: ControlPlane,
    runtime: KubernetesRuntime,
    cached: tuple[list[Obj], str, KubeCache],
) -> None:
    objects, ns, cache = cached
    _kubectl(control_plane, "-n", ns, "patch", "deployment", "web", "-p", EVIL)
    _until("the edit to reach the cache", lambda: _image(cache) == "evil.example/x:1", 60)
    counted = Counted(runtime)
    healed = runtime.apply(objects, "r1")
    assert f"Deployment/{ns}/web" in healed.reverted
    # no list: the requests are the revert (an apply, a 409 on kubectl's field, a read of who
    # owns it, the forced apply), all of that one object
    assert counted.sent["PATCH"] >= 1, counted.sent
    assert {path for _, path in counted.paths} == {f"/apis/apps/v1/namespaces/{ns}/deployments/web"}
    # at once, before or after the watch delivered the revert: never the old state, no write
    again = runtime.apply(objects, "r1")
    assert again.writes == 0 and f"Deployment/{ns}/web" in again.unchanged
    live = runtime.get({"kind": "Deployment", "metadata": {"name": "web", "namespace": ns}})
    assert live is not None
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/shop:1"
    _until("the revert to reach the cache", lambda: _image(cache) == "registry.example/shop:1")


def test_a_field_another_manager_took_is_left_to_it_from_the_cache(
    control_plane: ControlPlane,
    runtime: KubernetesRuntime,
    app: str,
    cached: tuple[list[Obj], str, KubeCache],
) -> None:
    _, ns, cache = cached
    # another declarative owner (an autoscaler) takes .spec.replicas of web
    other = (
        f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: {ns}}}\n"
        "spec: {replicas: 3}\n"
    )
    result = subprocess.run(
        [
            "kubectl",
            f"--kubeconfig={control_plane.kubeconfig}",
            "apply",
            "--server-side",
            "--field-manager=autoscaler",
            "--force-conflicts",
            "-f",
            "-",
        ],
        input=other,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    def replicas() -> int | None:
        snapshot = cache.snapshot("Deployment")
        found = {d["metadata"]["name"]: d for d in snapshot[0]} if snapshot else {}
        return int(found["web"]["spec"]["replicas"]) if "web" in found else None

    _until("the autoscaler's replicas to reach the cache", lambda: replicas() == 3, 60)
    text = SPEC.format(app=app, runtime="container").replace("hello", "bonjour")
    changed = manifests(render(render_spec(parse(text), None), "default", "rev2", ""))
    applied = runtime.apply(changed, "r2")
    assert any(".spec.replicas" in item and "autoscaler" in item for item in applied.left)
    live = runtime.get({"kind": "Deployment", "metadata": {"name": "web", "namespace": ns}})
    assert live is not None and live["spec"]["replicas"] == 3
    # once the watch has delivered those writes, the next reconcile reads only the cache
    assert cache.wait_fresh(60)
    counted = Counted(runtime)
    quiet = runtime.apply(changed, "r2")
    assert quiet.writes == 0 and counted.sent == Counter(), counted.sent


def test_the_cache_lists_again_after_the_api_server_restarts_mid_watch(
    control_plane: ControlPlane,
    runtime: KubernetesRuntime,
    app: str,
    cached: tuple[list[Obj], str, KubeCache],
) -> None:
    objects, ns, cache = cached
    lists = cache.requests()["list"]
    before = cache.snapshot("ConfigMap")
    assert before is not None
    stale: list[bool] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            stale.append(not cache.fresh())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        control_plane.restart("kube-apiserver")  # returns once started again, not ready
        # stale while the watches are broken (reads go to the API server), then fresh again
        _until("the cache to go stale and list again", lambda: any(stale) and cache.fresh())
    finally:
        done.set()
        sampler.join()
    assert cache.requests()["list"] > lists, "no kind was listed again"
    # an edit after the restart reaches the cache through the new watches
    _kubectl(control_plane, "-n", ns, "patch", "deployment", "web", "-p", EVIL)
    _until("the edit to reach the relisted cache", lambda: _image(cache) == "evil.example/x:1")
    counted = Counted(runtime)
    assert f"Deployment/{ns}/web" in runtime.apply(objects, "r1").reverted
    assert {path for _, path in counted.paths} == {f"/apis/apps/v1/namespaces/{ns}/deployments/web"}

    # a watch resumed from a version before the restart: the new API server's watch cache
    # starts after it, so it answers 410 Gone, and the reflector lists again
    source = next(s for s in cache_sources(ns, app, "default") if s.kind == "ConfigMap")
    reflector = Reflector(runtime.api, source, lambda kind: None)
    reflector._version, reflector._listed = before[1], True
    reflector._listed_at = time.monotonic()
    reflector.start()
    try:
        _until("a list after the 410", lambda: reflector.requests["list"] and reflector.fresh())
        assert reflector.requests["list"] == 1 and reflector.requests["watch"] >= 2
        snapshot = reflector.snapshot()
        assert snapshot is not None
        assert {c["metadata"]["name"] for c in snapshot[0]} == {"web-env"}
    finally:
        reflector.stop()


class _Reports:
    def __init__(self) -> None:
        self.synced: list[tuple[str, SyncResult, str | None]] = []
        self.healed: list[list[str]] = []

    def cluster_synced(
        self, revision: str, result: SyncResult, error: str | None, actions: list[str]
    ) -> None:
        self.synced.append((revision, result, error))

    def cluster_healed(self, actions: list[str]) -> None:
        self.healed.append(actions)

    def cluster_stepped(self, revision: str, actions: list[str]) -> None:
        raise AssertionError(f"no canary here, yet a sync of {revision} waits at a pause")

    def cluster_canary_aborted(self, service: str, reason: str) -> None:
        raise AssertionError(f"no canary here, yet {service}'s aborted: {reason}")


def test_an_edit_while_the_controller_runs_is_reverted_through_the_cache(
    control_plane: ControlPlane, app: str
) -> None:
    desired = _desired(app, "kubernetes")
    ns = str(manifests(desired)[0]["metadata"]["name"])
    link = ClusterLink(Cluster(control_plane.kubeconfig))
    reports = _Reports()

    async def run() -> tuple[Counted, list[str]]:
        woke = asyncio.Event()
        # checks only when the cache wakes one: the backstop is an hour away
        cluster = ClusterEnv(link, "default", woke.set, check_every=3600)

        async def step_until(what: str, done: Callable[[], bool], sync: bool = False) -> None:
            deadline = time.monotonic() + 180
            while not done():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                cluster.step(
                    desired, sync and not cluster.busy and not reports.synced, True, reports
                )
                woke.clear()
                due = cluster.due_in()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woke.wait(), min(1.0, 1.0 if due is None else due))

        try:
            await step_until("the first sync", lambda: bool(reports.synced), sync=True)
            assert reports.synced[0][1] is SyncResult.SUCCEEDED, reports.synced
            cache = cluster._cache
            assert cache is not None
            assert await asyncio.to_thread(cache.wait_fresh, 60)
            await step_until("no job running", lambda: not cluster.busy)
            # from here every check starts with a fresh cache
            counted = Counted(cluster.runtime(True))
            _kubectl(control_plane, "-n", ns, "patch", "deployment", "web", "-p", EVIL)
            await step_until("the edit to be reverted", lambda: bool(reports.healed))
            return counted, reports.healed[0]
        finally:
            cluster.close()

    try:
        counted, actions = asyncio.run(run())
    finally:
        link.close()
    assert f"revert Deployment/{ns}/web (changed by hand)" in actions, actions
    # the checks read the cache: their requests are the revert of that one object, and at
    # most a list of the Deployments right after it (until the watch delivers the write, the
    # cache is not used for that kind)
    web = f"/apis/apps/v1/namespaces/{ns}/deployments/web"
    assert counted.sent["PATCH"] >= 1, counted.sent
    assert {path for _, path in counted.paths} <= {web, web.rsplit("/", 1)[0]}, counted.paths
    shown = json.loads(_kubectl(control_plane, "-n", ns, "get", "deployment", "web", "-o", "json"))
    assert shown["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/shop:1"
