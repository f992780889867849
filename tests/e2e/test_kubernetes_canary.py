"""A canary on Kubernetes driven by a real `ondeck up`, against a real control plane.

The cluster is tests/kubeplane.py's (real API server, controllers and scheduler;
KWOK marks scheduled pods Ready, since no kubelet can run containers here). A
canary there is a replica ratio: the stable Deployment `web` keeps the old image,
`web-canary` runs the new one, and the split is read from their replica counts.
Each test has its own app name, hence its own namespace, removed at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Ondeck, Repo, wait_for

from kubeplane import ControlPlane

pytestmark = pytest.mark.timeout(600)

SPEC = """\
app: {app}
runtime: kubernetes
services:
  web:
    image: registry.example/shop:{version}
    port: 8080
    replicas: 4
    health: {{http: /healthz, interval: 1s}}
    rollout:
      strategy: canary
      deadline: 2m
      steps: {steps}
"""
MANUAL = "[{weight: 50}, {pause: manual}]"
WAIT = 180.0


def spec(app: str, version: int, steps: str = MANUAL) -> str:
    return SPEC.format(app=app, version=version, steps=steps)


@pytest.fixture
def app(control_plane: ControlPlane) -> Iterator[str]:
    name = f"c{uuid.uuid4().hex[:6]}"
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


def deployment(plane: ControlPlane, ns: str, name: str) -> dict[str, Any] | None:
    result = subprocess.run(
        [
            *("kubectl", f"--kubeconfig={plane.kubeconfig}", "--request-timeout=30s"),
            *("-n", ns, "get", "deployment", name, "-o", "json", "--ignore-not-found"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(result.stdout) if result.stdout.strip() else None


def split(plane: ControlPlane, ns: str) -> dict[str, tuple[int, int]]:
    """Image tag -> (replicas wanted, replicas ready), over `web` and `web-canary`."""
    found: dict[str, tuple[int, int]] = {}
    for name in ("web", "web-canary"):
        obj = deployment(plane, ns, name)
        if obj is None:
            continue
        tag = obj["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[1]
        wanted, ready = found.get(tag, (0, 0))
        found[tag] = (
            wanted + obj["spec"]["replicas"],
            ready + (obj.get("status", {}).get("readyReplicas") or 0),
        )
    return found


def history(od: Ondeck) -> list[dict[str, Any]]:
    doc = json.loads(od.cli("history", "--json", "--limit", "50").stdout)
    rows: list[dict[str, Any]] = doc["syncs"]
    return rows


def sync_of(od: Ondeck, revision: str) -> list[dict[str, Any]]:
    return [r for r in history(od) if r["revision"] == revision]


def web(od: Ondeck) -> dict[str, Any]:
    found = od.service("web")
    assert found is not None
    return found


def paused_at(od: Ondeck, weight: int, stage: str = "paused") -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        svc = web(od)
        release = svc["release"] or {}
        at = (release.get("stage"), release.get("weight"))
        return svc if at == (stage, weight) and svc["health"] == "Suspended" else None

    return wait_for(check, f"the canary to be {stage} at {weight}%", WAIT, every=0.2)


def holds(check: Callable[[], bool], what: str, seconds: float) -> None:
    """`check` stays true for `seconds` (polled): what must NOT happen does not."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert check(), f"no longer true: {what}"
        time.sleep(0.5)


def up(ondeck: Callable[..., Ondeck], repo: Repo, plane: ControlPlane) -> Ondeck:
    return ondeck(repo.path, "--kubeconfig", str(plane.kubeconfig))


def first_release(
    ondeck: Callable[..., Ondeck], repo: Repo, plane: ControlPlane, app: str, steps: str = MANUAL
) -> Ondeck:
    v1 = repo.commit("v1", spec(app, 1, steps))
    od = up(ondeck, repo, plane)
    od.wait_synced(v1, timeout=WAIT)
    assert split(plane, app) == {"1": (4, 4)}  # a first deploy is no canary
    return od


def test_a_canary_suspends_at_its_manual_pause_and_promote_finishes_it(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    od = first_release(ondeck, repo, control_plane, app)
    v2 = repo.commit("v2", spec(app, 2))
    svc = paused_at(od, 50)
    env = od.env_status()

    # the split is on the cluster: 2 pods of each, all ready, the Service selecting both
    wait_for(lambda: split(control_plane, app) == {"1": (2, 2), "2": (2, 2)}, "2 and 2", WAIT)
    assert "ondeck rollout promote web" in svc["health_reason"]
    assert "canary 2 of 4 pods (~50%)" in svc["health_reason"]
    assert svc["release"]["canary"] == "registry.example/shop:2"
    assert svc["release"]["stable"] == "registry.example/shop:1"
    assert env["health"] == "Suspended" and env["operation"]["revision"] == v2
    (row,) = sync_of(od, v2)
    assert row["result"] is None, row  # a pause is not a failed sync: it is still open
    assert f"create Deployment/{app}/web-canary" in row["actions"]
    assert {i["health"] for i in svc["instances"]} == {"Healthy"} and len(svc["instances"]) == 4

    said = od.cli("rollout", "promote", "web").stdout
    assert "web: progressing" in said
    od.wait_synced(v2, timeout=WAIT)
    wait_for(lambda: deployment(control_plane, app, "web-canary") is None, "canary pruned", 60)
    assert split(control_plane, app) == {"2": (4, 4)}
    (row,) = sync_of(od, v2)
    assert row["result"] == "Succeeded", row
    assert f"prune Deployment/{app}/web-canary" in row["actions"]
    assert web(od)["release"] is None
    # nothing in flight any more: a promotion is refused, saying why
    again = od.cli("rollout", "promote", "web", check=False)
    assert again.returncode != 0 and "no canary release of 'web' is in progress" in again.stderr


def test_rollout_abort_returns_to_the_stable_set_and_is_not_retried_unless_promoted(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    od = first_release(ondeck, repo, control_plane, app)
    v2 = repo.commit("v2", spec(app, 2))
    paused_at(od, 50)

    said = od.cli("rollout", "abort", "web").stdout
    assert "web: aborted at 0%" in said

    def aborted() -> dict[str, Any] | None:
        rows = [r for r in sync_of(od, v2) if r["result"]]
        return rows[0] if rows else None

    row = wait_for(aborted, "the sync to be aborted", WAIT)
    assert row["result"] == "Aborted" and "aborted by a person" in row["error"], row
    wait_for(lambda: split(control_plane, app) == {"1": (4, 4), "2": (0, 0)}, "all on v1", WAIT)
    svc = web(od)
    assert svc["health"] == "Degraded" and "aborted by a person" in svc["health_reason"]
    assert svc["release"]["stage"] == "aborted"

    # the same revision is not tried again: no new sync, the canary stays at 0
    holds(
        lambda: len(sync_of(od, v2)) == 1 and split(control_plane, app)["2"] == (0, 0),
        "one aborted sync of v2, its canary at 0",
        8,
    )
    twice = od.cli("rollout", "abort", "web", check=False)
    assert twice.returncode != 0 and "aborted already" in twice.stdout + twice.stderr

    # promoting an aborted release tries it again, from its first step, as a sync of its own
    od.cli("rollout", "promote", "web")
    paused_at(od, 50)
    wait_for(lambda: split(control_plane, app) == {"1": (2, 2), "2": (2, 2)}, "2 and 2", WAIT)
    retry = sync_of(od, v2)[0]
    assert (retry["trigger"], retry["result"]) == ("cli", None), retry

    # a new commit is a new release: its canary starts afresh
    v3 = repo.commit("v3", spec(app, 3))
    paused_at(od, 50)
    wait_for(lambda: split(control_plane, app) == {"1": (2, 2), "3": (2, 2)}, "1 and 3", WAIT)
    assert sync_of(od, v3)[0]["result"] is None


def test_a_timed_pause_ends_by_itself_and_the_sync_succeeds(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    steps = "[{weight: 25}, {pause: 15s}, {weight: 75}, {pause: 5s}]"
    od = first_release(ondeck, repo, control_plane, app, steps)
    v2 = repo.commit("v2", spec(app, 2, steps))
    svc = paused_at(od, 25, stage="progressing")
    assert "paused" in svc["health_reason"] and "s left" in svc["health_reason"]
    assert split(control_plane, app) == {"1": (3, 3), "2": (1, 1)}

    # no one steps in: the pauses end, 75% (3 of 4), then every pod on v2
    seen = paused_at(od, 75, stage="progressing")
    assert "canary 3 of 4 pods (~75%)" in seen["health_reason"]
    od.wait_synced(v2, timeout=WAIT)
    assert split(control_plane, app) == {"2": (4, 4)}
    (row,) = sync_of(od, v2)
    assert row["result"] == "Succeeded" and row["trigger"] != "cli", row


def test_the_controller_killed_while_suspended_keeps_the_canary_where_it_was(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    od = first_release(ondeck, repo, control_plane, app)
    v2 = repo.commit("v2", spec(app, 2))
    paused_at(od, 50)
    wait_for(lambda: split(control_plane, app) == {"1": (2, 2), "2": (2, 2)}, "2 and 2", WAIT)
    before = {n: deployment(control_plane, app, n) for n in ("web", "web-canary")}

    assert od.proc is not None
    os.killpg(od.proc.pid, signal.SIGKILL)
    od.proc.wait(timeout=30)
    od.proc = None
    od.start()

    svc = paused_at(od, 50)
    assert svc["health"] == "Suspended"
    assert od.env_status()["operation"]["revision"] == v2
    after = {n: deployment(control_plane, app, n) for n in ("web", "web-canary")}
    for name, was in before.items():
        now = after[name]
        assert was is not None and now is not None
        # not changed by the restart: same spec generation, same step annotations
        assert now["metadata"]["generation"] == was["metadata"]["generation"], name
        assert now["metadata"].get("annotations") == was["metadata"].get("annotations"), name
    assert split(control_plane, app) == {"1": (2, 2), "2": (2, 2)}

    od.cli("rollout", "promote", "web")
    od.wait_synced(v2, timeout=WAIT)
    assert split(control_plane, app) == {"2": (4, 4)}
    rows = history(od)
    assert rows[0]["result"] == "Succeeded" and rows[0]["revision"] == v2
    assert not any(r["result"] is None for r in rows)  # nothing left open


def test_a_new_commit_supersedes_a_suspended_canary(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    od = first_release(ondeck, repo, control_plane, app)
    v2 = repo.commit("v2", spec(app, 2))
    paused_at(od, 50)
    quick = "[{weight: 50}, {pause: 2s}]"
    v3 = repo.commit("v3", spec(app, 3, quick))
    od.wait_synced(v3, timeout=WAIT)
    wait_for(lambda: split(control_plane, app) == {"3": (4, 4)}, "every pod on v3", WAIT)
    (superseded,) = sync_of(od, v2)
    assert superseded["result"] == "Aborted" and "superseded" in superseded["error"]
    (row,) = sync_of(od, v3)
    assert row["result"] == "Succeeded", row
    assert deployment(control_plane, app, "web-canary") is None
