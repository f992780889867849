"""An environment that leaves Kubernetes leaves nothing running there; canary aborts recorded once.

Real `ondeck up` processes against tests/kubeplane.py's control plane (real API
server, controllers and scheduler; KWOK marks scheduled pods Ready, since no
kubelet can run containers here). When a commit moves an environment from
`runtime: kubernetes` back to this host, its instances start and become healthy
first, then every object ondeck applied on the cluster is deleted but the
PersistentVolumeClaim holding the data dir, which is kept and reported with the
command that deletes it. Each test has its own app, hence its own namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import Ondeck, Repo, wait_for

from kubeplane import ControlPlane

pytestmark = pytest.mark.timeout(600)
WAIT = 180.0

SPEC = """\
app: {app}
services:
  web:
    command: ["python3", "web.py"]
    image: registry.example/shop:1
    version: "1.0.0"
    env: {{GREETING: hello}}
    port: true
    replicas: 2
    health: {{http: /healthz, interval: 1s}}
    stop: {{grace: 5s}}
environments:
  staging:
{overlay}"""
ON_CLUSTER = """\
    runtime: kubernetes
    services: {web: {port: 8080, routes: [{host: staging.shop.example}]}}
"""
ON_HOST = "    services: {web: {replicas: 1}}\n"


def spec(app: str, overlay: str) -> str:
    return SPEC.format(app=app, overlay=overlay)


@pytest.fixture
def app(control_plane: ControlPlane) -> Iterator[str]:
    name = f"l{uuid.uuid4().hex[:6]}"
    yield name
    kubectl(control_plane, "delete", "namespace", f"{name}-staging", "--wait=false", check=False)
    kubectl(control_plane, "delete", "namespace", name, "--wait=false", check=False)


def kubectl(plane: ControlPlane, *args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={plane.kubeconfig}", "--request-timeout=30s", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0 or not check, result.stderr
    return result.stdout


def owned(plane: ControlPlane, ns: str, kinds: str) -> list[str]:
    """`kind/name` of the objects of `kinds` that ondeck applied in `ns`."""
    out = kubectl(
        plane,
        *("-n", ns, "get", kinds, "-l", "app.kubernetes.io/managed-by=ondeck", "-o", "name"),
    )
    return sorted(out.split())


def history(od: Ondeck, env: str = "staging") -> list[dict[str, Any]]:
    doc = json.loads(od.cli("history", "--json", "--env", env, "--limit", "50").stdout)
    rows: list[dict[str, Any]] = doc["syncs"]
    return rows


def events(od: Ondeck, kind: str) -> list[dict[str, Any]]:
    api = json.loads((od.state_dir / "api.json").read_text())["url"]
    token = (od.state_dir / "token").read_text().strip()
    answer = httpx.get(
        f"{api}/api/v1/events", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    return [e for e in answer.json()["events"] if e["kind"] == kind]


def marks(od: Ondeck) -> list[str]:
    """The store's record of environments with objects on a cluster (kv keys)."""
    with sqlite3.connect(od.state_dir / "ondeck.db") as db:
        rows = db.execute("SELECT key FROM kv WHERE key LIKE 'on-cluster/%'").fetchall()
    return [str(r[0]) for r in rows]


def kill9(od: Ondeck) -> None:
    assert od.proc is not None
    os.killpg(od.proc.pid, signal.SIGKILL)
    od.proc.wait(timeout=30)
    od.proc = None


def on_the_cluster(
    ondeck: Callable[..., Ondeck], repo: Repo, plane: ControlPlane, app: str
) -> tuple[Ondeck, str]:
    first = repo.commit("staging on kubernetes", spec(app, ON_CLUSTER))
    od = ondeck(repo.path, "--env", "staging", "--kubeconfig", str(plane.kubeconfig))
    od.wait_synced(first, "staging", timeout=WAIT)
    ns = f"{app}-staging"
    assert owned(plane, ns, "deployments,services,ingresses,configmaps") == [
        "configmap/web-env",
        "deployment.apps/web",
        "ingress.networking.k8s.io/web",
        "service/web",
    ]
    assert owned(plane, ns, "persistentvolumeclaims") == ["persistentvolumeclaim/ondeck-data"]
    assert marks(od) == ["on-cluster/staging"]
    return od, ns


def check_left(od: Ondeck, plane: ControlPlane, ns: str, revision: str) -> None:
    """On this host and serving; nothing of the app left on the cluster but its data claim."""
    env = od.wait_synced(revision, "staging", timeout=WAIT)
    web = next(s for s in env["services"] if s["name"] == "web")
    (instance,) = web["instances"]
    assert instance["pid"] and instance["health"] == "Healthy"
    answer = httpx.get(f"http://127.0.0.1:{instance['port']}/", timeout=10)
    assert answer.status_code == 200 and answer.json()["version"] == "1.0.0"

    wait_for(
        lambda: owned(plane, ns, "deployments,services,ingresses,configmaps,secrets") == [],
        "the environment's objects deleted from the cluster",
        WAIT,
    )
    wait_for(lambda: not marks(od), "the store's cluster mark cleared", 60)
    assert owned(plane, ns, "persistentvolumeclaims") == ["persistentvolumeclaim/ondeck-data"]
    assert kubectl(plane, "get", "namespace", ns, "-o", "name").strip() == f"namespace/{ns}"

    (row,) = [r for r in history(od) if r["revision"] == revision]
    actions = row["actions"]
    deleted = f"delete Deployment/{ns}/web (the environment left the cluster)"
    assert deleted in actions, actions
    for key in (f"Service/{ns}/web", f"Ingress/{ns}/web", f"ConfigMap/{ns}/web-env"):
        assert f"delete {key} (the environment left the cluster)" in actions, actions
    # the host's instance started (and, the sync closed, was healthy) before the deletions
    started = next(i for i, a in enumerate(actions) if a.startswith("start web-"))
    assert started < actions.index(deleted)
    kept = next(a for a in actions if a.startswith(f"keep PersistentVolumeClaim/{ns}/ondeck-data"))
    assert f"kubectl -n {ns} delete persistentvolumeclaim ondeck-data" in kept, kept
    assert any(a.startswith(f"keep Namespace/{ns}") for a in actions), actions
    (left,) = events(od, "cluster-left")
    assert f"kubectl -n {ns} delete persistentvolumeclaim ondeck-data" in left["message"]
    assert od.env_status("staging")["conditions"] == []


def test_an_environment_moved_back_to_the_host_leaves_only_its_data_on_the_cluster(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    od, ns = on_the_cluster(ondeck, repo, control_plane, app)
    back = repo.commit("staging back on the host", spec(app, ON_HOST))
    check_left(od, control_plane, ns, back)


def test_a_controller_restarted_between_the_commits_still_leaves_the_cluster(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    od, ns = on_the_cluster(ondeck, repo, control_plane, app)
    kill9(od)
    back = repo.commit("staging back on the host", spec(app, ON_HOST))
    od.start()  # what it had on the cluster: read from the store
    check_left(od, control_plane, ns, back)


class Gate:
    """A TCP relay between ondeck and the API server that can be shut (connections refused
    and cut) and opened again on the same port: the API server unreachable, for real."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self.port, self._server = server.getsockname()[1], server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def shut(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            conns, self._conns = self._conns, []
        if server is not None:
            with contextlib.suppress(OSError):  # wakes the accept() blocked in its thread
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # shut
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_an_unreachable_api_server_does_not_hold_the_host_back_and_the_removal_is_retried(
    control_plane: ControlPlane,
    repo: Repo,
    ondeck: Callable[..., Ondeck],
    app: str,
    tmp_path: Path,
) -> None:
    text = control_plane.kubeconfig.read_text()
    (url,) = re.findall(r"server: *(https://\S+)", text)
    server = urlsplit(url)
    gate = Gate((server.hostname or "127.0.0.1", server.port or 443))
    gate.open()
    kubeconfig = tmp_path / "through-the-gate"
    kubeconfig.write_text(text.replace(url, f"https://127.0.0.1:{gate.port}"))
    try:
        first = repo.commit("staging on kubernetes", spec(app, ON_CLUSTER))
        od = ondeck(repo.path, "--env", "staging", "--kubeconfig", str(kubeconfig))
        od.wait_synced(first, "staging", timeout=WAIT)
        ns = f"{app}-staging"
        gate.shut()  # the API server can no longer be reached
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", gate.port), timeout=5)

        back = repo.commit("staging back on the host", spec(app, ON_HOST))
        env = od.wait_synced(back, "staging", timeout=WAIT)  # the host side does not wait
        (instance,) = next(s for s in env["services"] if s["name"] == "web")["instances"]
        assert httpx.get(f"http://127.0.0.1:{instance['port']}/healthz", timeout=10).is_success

        def condition() -> str | None:
            found = od.env_status("staging")["conditions"]
            return next((c for c in found if "not removed yet, retrying" in c), None)

        said = wait_for(condition, "a status condition saying the removal failed", WAIT)
        assert ns in said, said
        assert events(od, "cluster-left-failed")
        assert owned(control_plane, ns, "deployments") == ["deployment.apps/web"]
        assert marks(od) == ["on-cluster/staging"]  # kept until the removal works

        gate.open()  # the same address again: the next attempt goes through
        wait_for(
            lambda: owned(control_plane, ns, "deployments,services,ingresses,configmaps") == [],
            "the environment's objects deleted once the API server is back",
            WAIT,
        )
        wait_for(lambda: not marks(od), "the store's cluster mark cleared", 60)
        wait_for(lambda: not condition(), "the condition gone", 60)
        assert owned(control_plane, ns, "persistentvolumeclaims") == [
            "persistentvolumeclaim/ondeck-data"
        ]
        (row,) = [r for r in history(od) if r["revision"] == back]
        assert f"delete Deployment/{ns}/web (the environment left the cluster)" in row["actions"]
    finally:
        gate.shut()


# --- canaries on the cluster: an abort on its own is an event; a restart does not repeat it


CANARY = """\
app: {app}
runtime: kubernetes
services:
  web:
    image: registry.example/shop:{version}
    port: 8080
    replicas: 2
    health: {{http: /healthz, interval: 1s}}{extra}
    rollout:
      strategy: canary
      deadline: {deadline}
      steps: [{{weight: 50}}, {{pause: manual}}]
"""


def test_a_canary_aborted_on_its_own_is_an_event_and_a_restart_does_not_abort_it_again(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    first = repo.commit("v1", CANARY.format(app=app, version=1, extra="", deadline="2m"))
    od = ondeck(repo.path, "--kubeconfig", str(control_plane.kubeconfig))
    od.wait_synced(first, timeout=WAIT)
    # 64 CPUs on a node of 32: the canary's pods are never scheduled, its deadline passes
    broken = CANARY.format(app=app, version=2, extra="\n    cpus: 64", deadline="3s")
    second = repo.commit("v2 cannot run", broken)

    def ended() -> dict[str, Any] | None:
        return next((r for r in history(od, "default") if r["revision"] == second), None)

    row = wait_for(lambda: (r := ended()) and r["result"] and r, "the canary's sync to end", WAIT)
    assert row["result"] == "Aborted", row
    (event,) = wait_for(lambda: events(od, "abort"), "the abort event", 30)
    assert event["service"] == "web" and "canary aborted" in event["message"], event
    assert "ProgressDeadlineExceeded" in event["message"], event

    kill9(od)
    od.start()

    def seen_aborted() -> bool:
        web = od.service("web")
        return bool(
            web and web["health"] == "Degraded" and "canary aborted" in web["health_reason"]
        )

    wait_for(seen_aborted, "the restarted controller to see the aborted canary", WAIT)
    end = time.monotonic() + 8
    while time.monotonic() < end:  # what must not happen: a sync of v2 reopened, aborted again
        rows = [r for r in history(od, "default") if r["revision"] == second]
        assert [r["result"] for r in rows] == ["Aborted"], rows
        time.sleep(0.5)
    assert len(events(od, "abort")) == 1
