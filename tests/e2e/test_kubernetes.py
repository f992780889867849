"""`runtime: kubernetes` through a real `ondeck up`, against a real control plane.

The cluster is tests/kubeplane.py's: real etcd, kube-apiserver, controller
manager and scheduler; KWOK stands in for the kubelet (it marks scheduled pods
Running and Ready on a simulated node, since no kubelet can run containers
here), so images are never pulled and need not exist. Each test has its own
app name, hence its own namespaces, removed at the end.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Ondeck, Repo, wait_for

from kubeplane import ControlPlane

pytestmark = pytest.mark.timeout(600)

SPEC = """\
app: {app}
services:
  web:
    command: ["python3", "web.py"]
    image: registry.example/shop:1
    version: "1.0.0"
    port: true
    replicas: {replicas}
    health: {{http: /healthz, interval: 1s}}
    rollout: {{deadline: {deadline}}}{extra}
  worker:
    command: ["python3", "worker.py"]
    image: registry.example/worker:1
environments:
  staging:
    runtime: kubernetes
    services: {{web: {{routes: [{{host: staging.shop.example}}]}}}}
  production:
    runtime: kubernetes
    services: {{web: {{replicas: 3, routes: [{{host: shop.example}}]}}}}
"""


def spec(app: str, replicas: int = 2, deadline: str = "2m", extra: str = "") -> str:
    return SPEC.format(app=app, replicas=replicas, deadline=deadline, extra=extra)


@pytest.fixture
def app(control_plane: ControlPlane) -> Iterator[str]:
    name = f"k{uuid.uuid4().hex[:6]}"
    yield name
    for env in ("staging", "production"):
        subprocess.run(
            [
                *("kubectl", f"--kubeconfig={control_plane.kubeconfig}", "delete", "namespace"),
                *(f"{name}-{env}", "--wait=false", "--ignore-not-found"),
            ],
            capture_output=True,
            check=False,
            timeout=60,
        )


def kubectl(plane: ControlPlane, *args: str) -> str:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={plane.kubeconfig}", "--request-timeout=30s", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def deployment(plane: ControlPlane, ns: str, name: str) -> dict[str, Any] | None:
    result = subprocess.run(
        [
            *("kubectl", f"--kubeconfig={plane.kubeconfig}", "-n", ns, "get", "deployment"),
            *(name, "-o", "json", "--ignore-not-found"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(result.stdout) if result.stdout.strip() else None


def replicasets(plane: ControlPlane, ns: str, service: str) -> list[str]:
    """The names of the service's ReplicaSets."""
    selector = f"ondeck.dev/service={service}"
    out = kubectl(plane, "-n", ns, "get", "replicasets", "-l", selector, "-o", "name")
    return out.split()


def image(plane: ControlPlane, ns: str, name: str = "web") -> str | None:
    found = deployment(plane, ns, name)
    if found is None:
        return None
    return str(found["spec"]["template"]["spec"]["containers"][0]["image"])


def history(od: Ondeck, env: str) -> list[dict[str, Any]]:
    doc = json.loads(od.cli("history", "--json", "--env", env, "--limit", "50").stdout)
    rows: list[dict[str, Any]] = doc["syncs"]
    return rows


def up(ondeck: Callable[..., Ondeck], repo: Repo, plane: ControlPlane, *flags: str) -> Ondeck:
    return ondeck(repo.path, "--kubeconfig", str(plane.kubeconfig), *flags)


def test_a_commit_is_applied_rolled_out_pruned_and_kept_as_git_says(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    first = repo.commit("shop on kubernetes", spec(app))
    od = up(ondeck, repo, control_plane, "--env", "staging", "--public-read")
    ns = f"{app}-staging"

    env = od.wait_synced(first, "staging", timeout=180)
    assert env["namespace"] == ns
    web = next(s for s in env["services"] if s["name"] == "web")
    assert web["replicas"] == {"desired": 2, "ready": 2}
    assert len(web["instances"]) == 2
    assert all(i["id"].startswith("web-") and i["health"] == "Healthy" for i in web["instances"])
    applied = deployment(control_plane, ns, "web")
    assert (
        applied is not None and applied["metadata"]["annotations"]["ondeck.dev/revision"] == first
    )
    synced = history(od, "staging")[0]
    assert synced["result"] == "Succeeded" and synced["duration"] is not None
    assert f"create Deployment/{ns}/web" in synced["actions"]
    text = od.cli("status").stdout
    assert "Synced" in text and "Healthy" in text

    # an image changed by `ondeck set-image`: a commit, rolled out as a new ReplicaSet
    od.cli("set-image", "web=registry.example/shop:2", "--env", "staging", "--repo", str(repo.path))
    second = git_head(repo)
    assert second != first
    od.wait_synced(second, "staging", timeout=180)
    assert image(control_plane, ns) == "registry.example/shop:2"
    assert len(replicasets(control_plane, ns, "web")) == 2

    # a service removed from the spec: its objects are pruned
    third = repo.commit(
        "no worker",
        spec(app)
        .replace(
            '  worker:\n    command: ["python3", "worker.py"]\n'
            "    image: registry.example/worker:1\n",
            "",
        )
        .replace("registry.example/shop:1", "registry.example/shop:2"),
    )
    od.wait_synced(third, "staging", timeout=180)
    wait_for(lambda: deployment(control_plane, ns, "worker") is None, "worker pruned", 60)
    pruned = history(od, "staging")[0]
    assert f"prune Deployment/{ns}/worker" in pruned["actions"]
    assert image(control_plane, ns) == "registry.example/shop:2"
    assert len(replicasets(control_plane, ns, "web")) == 2  # nothing rolled again

    # replicas changed by hand (kubectl): reverted, and history says so
    kubectl(control_plane, "-n", ns, "patch", "deployment", "web", "-p", '{"spec":{"replicas":5}}')
    wait_for(
        lambda: (deployment(control_plane, ns, "web") or {}).get("spec", {}).get("replicas") == 2,
        "replicas reverted to 2",
        120,
    )
    healed = wait_for(
        lambda: next((r for r in history(od, "staging") if r["trigger"] == "self-heal"), None),
        "a self-heal entry in history",
        60,
    )
    assert f"revert Deployment/{ns}/web (changed by hand)" in healed["actions"]
    od.wait_synced(third, "staging", timeout=120)

    # the dashboard shows the environment, and the pods as the service's instances
    url = json.loads((od.state_dir / "api.json").read_text())["url"]
    overview = httpx.get(url + "/", timeout=30)  # --public-read: no login needed
    assert overview.status_code == 200 and "staging" in overview.text and "Synced" in overview.text
    page = httpx.get(url + "/env/staging/service/web", timeout=30)
    assert page.status_code == 200
    pods = next(s for s in od.env_status("staging")["services"] if s["name"] == "web")
    assert len(pods["instances"]) == 2
    assert all(i["id"] in page.text for i in pods["instances"])


def git_head(repo: Repo) -> str:
    from conftest import git

    return git(repo.path, "rev-parse", "HEAD")


def test_a_deployment_that_cannot_become_ready_fails_the_sync_with_the_reason(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    # 64 CPUs on a node that has 32: the scheduler never places it.
    rev = repo.commit("too big", spec(app, deadline="3s", extra="\n    cpus: 64"))
    od = up(ondeck, repo, control_plane, "--env", "staging")
    failed = wait_for(
        lambda: next((r for r in history(od, "staging") if r["result"] == "Failed"), None),
        "the sync to fail",
        180,
    )
    assert failed["revision"] == rev
    assert "ProgressDeadlineExceeded" in failed["error"], failed["error"]
    assert "Insufficient cpu" in failed["error"], failed["error"]
    web = od.service("web", "staging")
    assert web is not None and web["health"] == "Degraded"
    assert web["replicas"]["ready"] == 0


def test_two_environments_in_two_namespaces(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    rev = repo.commit("two envs", spec(app))
    od = up(ondeck, repo, control_plane, "--env", "staging", "--env", "production")
    od.wait_synced(rev, "staging", timeout=180)
    prod = od.wait_synced(rev, "production", timeout=180)
    assert prod["namespace"] == f"{app}-production"
    assert (deployment(control_plane, f"{app}-staging", "web") or {})["spec"]["replicas"] == 2
    assert (deployment(control_plane, f"{app}-production", "web") or {})["spec"]["replicas"] == 3
    web = next(s for s in prod["services"] if s["name"] == "web")
    assert web["replicas"] == {"desired": 3, "ready": 3}
    # What works on this host's instances only says so, and where to go instead.
    logs = od.cli("logs", "web", "--env", "production", check=False)
    said = logs.stdout + logs.stderr
    assert logs.returncode != 0 and f"kubectl logs -n {app}-production deployment/web" in said
    for argv in (["down", "--env", "staging"], ["rollout", "abort", "web", "--env", "staging"]):
        refused = od.cli(*argv, check=False)
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0 and f"runs on Kubernetes (namespace {app}-staging)" in said
    assert (deployment(control_plane, f"{app}-staging", "web") or {})["spec"]["replicas"] == 2
    assert od.env_status("staging")["sync"] == "Synced"
    # `ondeck down` stops this host's part; it says the cluster's pods keep running, and where
    said = od.cli("down").stderr
    for env in ("staging", "production"):
        assert f"{env} runs on Kubernetes (namespace {app}-{env}): its pods keep running" in said
    assert (deployment(control_plane, f"{app}-production", "web") or {})["spec"]["replicas"] == 3


def test_self_heal_off_reports_an_edit_by_hand(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    rev = repo.commit("shop", spec(app))
    od = up(ondeck, repo, control_plane, "--env", "staging", "--no-self-heal")
    ns = f"{app}-staging"
    od.wait_synced(rev, "staging", timeout=180)
    kubectl(control_plane, "-n", ns, "patch", "deployment", "web", "-p", '{"spec":{"replicas":4}}')

    def reported() -> dict[str, Any] | None:
        web = od.service("web", "staging")
        return web if web is not None and web["sync"] == "OutOfSync" else None

    web = wait_for(reported, "web OutOfSync", 120)
    assert any("changed by hand" in r for r in web["reasons"]), web["reasons"]
    assert (deployment(control_plane, ns, "web") or {})["spec"]["replicas"] == 4
    assert not any(r["trigger"] == "self-heal" for r in history(od, "staging"))


def test_the_controller_killed_mid_rollout_finishes_it_without_duplicates(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    first = repo.commit("many", spec(app, replicas=20))
    od = up(ondeck, repo, control_plane, "--env", "staging")
    ns = f"{app}-staging"
    od.wait_synced(first, "staging", timeout=240)
    second = repo.commit("v2", spec(app, replicas=20).replace("shop:1", "shop:2"))
    wait_for(lambda: image(control_plane, ns) == "registry.example/shop:2", "v2 applied", 120)
    assert od.proc is not None
    os.killpg(od.proc.pid, signal.SIGKILL)
    od.proc.wait(timeout=30)
    od.proc = None

    od.start()
    od.wait_synced(second, "staging", timeout=240)
    assert len(replicasets(control_plane, ns, "web")) == 2
    names = kubectl(control_plane, "-n", ns, "get", "deployments", "-o", "name").split()
    assert sorted(names) == ["deployment.apps/web", "deployment.apps/worker"]
    web = od.service("web", "staging")
    assert web is not None and web["replicas"] == {"desired": 20, "ready": 20}
    rows = history(od, "staging")
    assert rows[0]["result"] == "Succeeded" and rows[0]["revision"] == second
    assert not any(r["result"] is None for r in rows)  # nothing left open


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_no_cluster_configured_is_a_clear_error(
    tmp_path: Path, repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    repo.commit("shop", spec("nocluster"))
    home = tmp_path / "home"
    home.mkdir()
    clean = {
        k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")
    }

    # a kubeconfig named that does not load: `up` stops before anything runs
    listen = f"127.0.0.1:{_free_port()}"
    state = tmp_path / "bad-state"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "ondeck", "up", str(repo.path), "--env", "staging"),
            *("--kubeconfig", str(tmp_path / "missing"), "--listen", listen),
            *("--api", "127.0.0.1:0", "--state-dir", str(state)),
        ],
        env={**clean, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "needs a cluster" in result.stderr and "--kubeconfig" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (state / "router.pid").exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(listen.rsplit(":", 1)[1])), timeout=2)

    # none configured at all: the sync is refused with how to configure one
    od = Ondeck(repo.path, tmp_path / "state", "--env", "staging")
    od.env = {**clean, "HOME": str(home), "ONDECK_STATE_DIR": str(tmp_path / "state")}
    try:
        od.start()
        env = wait_for(lambda: (e := od.env_status("staging"))["error"] and e, "the refusal", 120)
        assert "needs a cluster" in env["error"] and "KUBECONFIG" in env["error"]
        assert history(od, "staging")[0]["result"] == "Failed"
        assert "Traceback" not in od.log()
    finally:
        od.cleanup()


def test_a_secret_becomes_a_secret_object_and_is_never_shown(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    value = "s3cr3t-" + uuid.uuid4().hex
    text = spec(app).replace(
        '    version: "1.0.0"\n',
        '    version: "1.0.0"\n    env: {DATABASE_URL: "postgres://shop:${DB_PASSWORD}@db/shop"}\n',
    )
    rev = repo.commit("needs a secret", text)
    od = up(ondeck, repo, control_plane, "--env", "staging")
    ns = f"{app}-staging"
    refused = wait_for(lambda: od.env_status("staging")["error"], "the sync to be refused", 120)
    assert "ondeck secret set DB_PASSWORD" in refused
    assert deployment(control_plane, ns, "web") is None  # nothing applied without it

    set_secret = subprocess.run(
        [sys.executable, "-m", "ondeck", "secret", "set", "DB_PASSWORD", "--env", "staging"],
        input=value,
        env=od.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert set_secret.returncode == 0, set_secret.stderr
    od.wait_synced(rev, "staging", timeout=180)
    stored = json.loads(kubectl(control_plane, "-n", ns, "get", "secret", "-o", "json"))["items"]
    data = next(s["data"] for s in stored if "DB_PASSWORD" in (s.get("data") or {}))
    assert base64.b64decode(data["DB_PASSWORD"]).decode() == value
    web = deployment(control_plane, ns, "web")
    assert web is not None and value not in json.dumps(web)  # a reference, not the value
    shown = od.cli("status", "--json").stdout + od.cli("history", "--json").stdout
    shown += od.cli("diff", "--env", "staging").stdout + od.log()
    assert value not in shown


def test_a_release_task_runs_as_a_job_before_the_deployment_changes(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    release = '\n    release: ["/bin/migrate"]\n    release_timeout: 2m'
    first = repo.commit("with a migration", spec(app, extra=release))
    od = up(ondeck, repo, control_plane, "--env", "staging")
    ns = f"{app}-staging"
    od.wait_synced(first, "staging", timeout=180)
    synced = history(od, "staging")[0]
    jobs = [a for a in synced["actions"] if a.startswith(f"create Job/{ns}/web-release-")]
    assert len(jobs) == 1, synced["actions"]
    assert synced["actions"].index(jobs[0]) < synced["actions"].index(f"create Deployment/{ns}/web")

    # a task that cannot succeed (its pod fits no node; 3 s deadline): the sync fails with
    # the reason, and the running Deployment is left as it was
    failing = (
        spec(app, extra=release)
        .replace("shop:1", "shop:2")
        .replace("release_timeout: 2m", "release_timeout: 3s\n    memory: 512GiB")
    )
    second = repo.commit("a migration that fails", failing)
    failed = wait_for(
        lambda: next(
            (r for r in history(od, "staging") if r["revision"] == second and r["result"]), None
        ),
        "the second sync to end",
        180,
    )
    assert failed["result"] == "Failed"
    assert "release task of web failed" in failed["error"], failed["error"]
    assert image(control_plane, ns) == "registry.example/shop:1"
    web = od.service("web", "staging")
    assert web is not None and web["health"] == "Healthy"
