"""PostgreSQL backups of an environment on Kubernetes, through a real `ondeck up`.

The cluster is tests/kubeplane.py's real control plane (KWOK stands in for the
kubelet: pods become Ready on a simulated node, no container runs); the
database is a real PostgreSQL server on loopback, reached by the controller
(pg_dump, pg_restore) as on a host. The app in the pods runs nothing, so the
test writes the rows an app would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
from conftest import Ondeck, Repo, wait_for
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from kubeplane import ControlPlane

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from backups.pgcluster import Cluster, running_cluster

pytestmark = pytest.mark.timeout(900)

SPEC = """\
app: {app}
runtime: kubernetes
services:
  web:
    image: registry.example/shop:{tag}
    port: 8080
    replicas: {replicas}
    health: {{http: /healthz, interval: 1s}}
    rollout: {{deadline: 2m}}
backups:
  db:
    postgres: {{url_env: DATABASE_URL}}
    verify: true
    before_deploy: true
  minutely:
    postgres: {{url_env: DATABASE_URL}}
    schedule: "* * * * *"
    before_deploy: false
"""


def spec(app: str, tag: int = 1, replicas: int = 2) -> str:
    return SPEC.format(app=app, tag=tag, replicas=replicas)


@pytest.fixture(scope="module")
def pg() -> Iterator[Cluster]:
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def app(control_plane: ControlPlane, pg: Cluster) -> Iterator[str]:
    name = f"b{uuid.uuid4().hex[:6]}"
    pg.psql(f"CREATE DATABASE {name}")
    pg.psql("CREATE TABLE orders AS SELECT generate_series(1, 1000) AS id", name)
    yield name
    subprocess.run(
        [
            *("kubectl", f"--kubeconfig={control_plane.kubeconfig}", "delete", "namespace"),
            *(name, "--wait=false", "--ignore-not-found"),
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )


class _Watching:
    """A watch of the test's own in a thread, recording into `seen` until the `with` ends."""

    what = "the watch to start"

    def __init__(self, plane: ControlPlane, ns: str) -> None:
        self.api = k8s_config.new_client_from_config(str(plane.kubeconfig))  # type: ignore[no-untyped-call]
        self.ns = ns
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _recorded(self) -> list[Any]:
        raise NotImplementedError

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        wait_for(self._recorded, self.what, 30)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.api.close()


class Replicas(_Watching):
    """A watch on one Deployment recording (spec.replicas, pods, available) at each event."""

    what = "the watch to see the Deployment"

    def __init__(self, plane: ControlPlane, ns: str, name: str) -> None:
        super().__init__(plane, ns)
        self.name = name
        self.seen: list[tuple[int, int, int]] = []

    def _recorded(self) -> list[Any]:
        return self.seen

    def _run(self) -> None:
        apps = k8s.AppsV1Api(self.api)
        while not self._stop.is_set():
            watcher = k8s_watch.Watch()  # type: ignore[no-untyped-call]
            for event in watcher.stream(  # type: ignore[no-untyped-call]
                apps.list_namespaced_deployment,
                self.ns,
                field_selector=f"metadata.name={self.name}",
                timeout_seconds=2,
            ):
                raw = event["raw_object"]
                status = raw.get("status", {})
                self.seen.append(
                    (
                        int(raw["spec"].get("replicas", 0)),
                        int(status.get("replicas", 0)),
                        int(status.get("availableReplicas", 0)),
                    )
                )
                if self._stop.is_set():
                    watcher.stop()  # type: ignore[no-untyped-call]


class Pods(_Watching):
    """A watch on the pods of one service, recording how many exist after each event."""

    what = "the watch to list the pods"

    def __init__(self, plane: ControlPlane, ns: str, service: str) -> None:
        super().__init__(plane, ns)
        self.selector = f"ondeck.dev/service={service}"
        self.counts: list[int] = []

    def _recorded(self) -> list[Any]:
        return self.counts

    def _run(self) -> None:
        core = k8s.CoreV1Api(self.api)
        listing = core.list_namespaced_pod(self.ns, label_selector=self.selector)
        names = {pod.metadata.name for pod in listing.items if pod.metadata is not None}
        version = listing.metadata.resource_version if listing.metadata is not None else None
        self.counts.append(len(names))
        while not self._stop.is_set():  # one watch, resumed from where it was: no gap
            watcher = k8s_watch.Watch()  # type: ignore[no-untyped-call]
            for event in watcher.stream(  # type: ignore[no-untyped-call]
                core.list_namespaced_pod,
                self.ns,
                label_selector=self.selector,
                resource_version=version,
                timeout_seconds=2,
            ):
                raw = event["raw_object"]
                version = raw["metadata"]["resourceVersion"]
                if event["type"] == "DELETED":
                    names.discard(raw["metadata"]["name"])
                elif event["type"] == "ADDED":
                    names.add(raw["metadata"]["name"])
                self.counts.append(len(names))


def _api(od: Ondeck) -> str:
    return str(json.loads((od.state_dir / "api.json").read_text())["url"])


def _json(od: Ondeck, *args: str) -> Any:
    return json.loads(od.cli(*args, "--json").stdout)


def _kubectl(plane: ControlPlane, *args: str) -> str:
    return subprocess.run(
        ["kubectl", f"--kubeconfig={plane.kubeconfig}", "--request-timeout=30s", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def _deployment(plane: ControlPlane, ns: str, name: str = "web") -> dict[str, Any]:
    out = _kubectl(plane, "-n", ns, "get", "deployment", name, "-o", "json")
    found: dict[str, Any] = json.loads(out)
    return found


def _replicaset_created(plane: ControlPlane, ns: str, image: str) -> datetime:
    out = _kubectl(
        plane, "-n", ns, "get", "replicasets", "-l", "ondeck.dev/service=web", "-o", "json"
    )
    for rs in json.loads(out)["items"]:
        if rs["spec"]["template"]["spec"]["containers"][0]["image"] == image:
            return datetime.fromisoformat(
                rs["metadata"]["creationTimestamp"].replace("Z", "+00:00")
            )
    raise AssertionError(f"no ReplicaSet runs {image}")


def _count(pg: Cluster, db: str) -> int:
    return int(pg.psql("SELECT count(*) FROM orders", db).strip())


def test_a_postgres_backup_on_kubernetes_is_taken_gated_and_restored_with_the_pods_stopped(
    control_plane: ControlPlane,
    pg: Cluster,
    repo: Repo,
    ondeck: Callable[..., Ondeck],
    app: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg.url(app))
    ns = app  # the default environment's namespace is the app's name
    first = repo.commit("shop on kubernetes, backed up", spec(app))
    od = ondeck(repo.path, "--kubeconfig", str(control_plane.kubeconfig), "--public-read")
    od.wait_synced(first, timeout=180)

    # `ondeck backup run`: pg_dump from the controller, proven by a scratch restore, listed
    taken = _json(od, "backup", "run", "db")
    assert taken["verified"] is True and taken["tables"] == {"public.orders": 1000}
    assert [b["id"] for b in _json(od, "backup", "list", "db")] == [taken["id"]]
    proven = _json(od, "backup", "verify", "db")  # a scratch restore again, on demand
    assert proven["id"] == taken["id"] and proven["verified"] is True
    assert proven["verified_at"] > taken["verified_at"]
    assert "last verified restore:" in od.cli("status").stdout
    overview = httpx.get(_api(od) + "/", timeout=30).text  # the dashboard's backup row
    row = overview[overview.index('id="backup-default-db"') :].split("</tr>")[0]
    assert "Verified" in row and "postgres" in row, row

    # a deploy that changes the Deployment: a verified backup of what ran comes first
    second = repo.commit("shop 2", spec(app, tag=2))
    od.wait_synced(second, timeout=180)
    listed = _json(od, "backup", "list", "db")
    gate = listed[-1]
    assert len(listed) == 2 and gate["verified"] is True and gate["revision"] == first
    # the API server stamps whole seconds: compare at its precision (the same second is in order)
    created = datetime.fromisoformat(gate["created"]).replace(microsecond=0)
    assert created <= _replicaset_created(control_plane, ns, "registry.example/shop:2")

    # rows written after that backup, which the restore loses
    pg.psql("INSERT INTO orders SELECT generate_series(1001, 1500)", app)
    assert _count(pg, app) == 1500
    with Replicas(control_plane, ns, "web") as watch, Pods(control_plane, ns, "web") as pods:
        restored = _json(od, "backup", "restore", "db")
        od.wait_synced(second, timeout=180)
    assert restored["id"] == gate["id"]
    assert _count(pg, app) == 1000
    # the Deployment went to 0 and every pod was gone, then it came back Available (the
    # watches saw both, in order)
    stopped = watch.seen.index(next(s for s in watch.seen if s[0] == 0))
    assert any(s == (2, 2, 2) for s in watch.seen[stopped:]), watch.seen
    assert pods.counts[0] == 2 and pods.counts[-1] == 2, pods.counts
    assert 0 in pods.counts, pods.counts
    web = _deployment(control_plane, ns)
    assert web["spec"]["replicas"] == 2 and web["status"].get("availableReplicas") == 2
    history = _json(od, "history", "--limit", "20")["syncs"]
    restore = next(s for s in history if s["trigger"] == "restore")
    assert restore["result"] == "Succeeded"
    actions = restore["actions"]
    assert actions[0] == f"scale Deployment/{ns}/web 2 -> 0", actions
    assert "pods of web gone" in actions and f"scale Deployment/{ns}/web 0 -> 2" in actions
    assert actions[-1] == "web Available again", actions

    # a restore that fails once the pods are stopped (a corrupted dump): they come back
    index = od.state_dir / "backups" / app / "default" / "db"
    [dump] = [f for f in index.glob(f"{gate['id']}*") if f.suffix != ".json"]
    dump.write_bytes(b"not a dump")
    with Replicas(control_plane, ns, "web") as watch:
        failed = od.cli("backup", "restore", "db", "--id", gate["id"], check=False)
        od.wait_synced(second, timeout=180)
    assert failed.returncode != 0 and "corrupted" in failed.stdout + failed.stderr
    stopped = watch.seen.index(next(s for s in watch.seen if s[0] == 0))
    assert any(s == (2, 2, 2) for s in watch.seen[stopped:]), watch.seen
    assert _count(pg, app) == 1000  # nothing restored
    history = _json(od, "history", "--limit", "20")["syncs"]
    undone = next(s for s in history if s["trigger"] == "restore")
    assert undone["result"] == "Failed" and "corrupted" in undone["error"]
    assert undone["actions"][-1] == "web Available again", undone["actions"]

    # --while-running: restored with the pods up (the Deployment never leaves 2)
    pg.psql("INSERT INTO orders SELECT generate_series(1001, 1100)", app)
    with Replicas(control_plane, ns, "web") as watch:
        _json(od, "backup", "restore", "db", "--while-running")
    assert _count(pg, app) == 1000
    assert all(s[0] == 2 for s in watch.seen), watch.seen

    # replicas are ondeck's again after the restore: a change in git is applied
    third = repo.commit("three pods", spec(app, tag=2, replicas=3))
    od.wait_synced(third, timeout=180)
    assert _deployment(control_plane, ns)["spec"]["replicas"] == 3

    # a failing backup stops the deploy; `ondeck sync --skip-backup` deploys without it
    pg.psql(f"ALTER DATABASE {app} RENAME TO {app}_away")
    try:
        fourth = repo.commit("shop 3", spec(app, tag=3, replicas=3))
        refused = wait_for(
            lambda: od.env_status()["error"], "the deploy to be refused by its backup", 180
        )
        assert "the backup before this deploy failed, so the sync did not start" in refused
        assert "--skip-backup" in refused and pg.url(app) not in refused
        image = _deployment(control_plane, ns)["spec"]["template"]["spec"]["containers"][0]
        assert image["image"] == "registry.example/shop:2"
        od.cli("sync", "--skip-backup", "--wait", "--timeout", "3m")
        od.wait_synced(fourth, timeout=180)
    finally:
        pg.psql(f"ALTER DATABASE {app}_away RENAME TO {app}")
    # none taken of what ran before the skipped deploy; the skip is recorded
    assert not any(b["revision"] == third for b in _json(od, "backup", "list", "db"))
    api = _api(od)
    token = (od.state_dir / "token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    events = httpx.get(f"{api}/api/v1/events", headers=auth, timeout=10).json()["events"]
    assert any(e["kind"] == "backup-skipped" and fourth[:12] in e["message"] for e in events)
    metrics = httpx.get(f"{api}/metrics", timeout=10).text
    assert f'ondeck_backup_last_verified_timestamp_seconds{{app="{app}",backup="db"' in metrics

    # the schedule: `minutely` was taken (and proven) at a minute's turn, with no command
    scheduled = wait_for(
        lambda: _json(od, "backup", "list", "minutely"), "a scheduled backup", 90, every=1
    )
    assert scheduled[0]["verified"] is True, scheduled
