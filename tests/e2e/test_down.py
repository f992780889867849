"""`ondeck down`: instances and router stop gracefully, the state is kept, `up` brings it back."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from conftest import SIMPLE_SPEC, Ondeck, Repo, wait_for

SPEC = SIMPLE_SPEC.replace("replicas: 2", "replicas: 1") + "    routes: [{path: /}]\n"
TWO_ENVS = SIMPLE_SPEC + "environments:\n  staging: {}\n  production: {}\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _served(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
            return bool(json.loads(answer.read())["version"])
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"


def test_down_stops_instances_router_and_controller_and_up_brings_them_back(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    port = _free_port()
    sha = repo.commit("one web", SPEC)
    od = ondeck(repo.path, "--listen", f"127.0.0.1:{port}")
    od.wait_synced(sha, timeout=60)
    wait_for(lambda: _served(port), "the router to serve the app")
    pids = [i["pid"] for i in od.service()["instances"]]  # type: ignore[index]
    router = int((od.state_dir / "router.pid").read_text())
    done = od.cli("down")
    assert "stopped 1 instance(s)" in done.stderr
    assert od.proc is not None
    assert od.proc.wait(timeout=30) == 0  # the controller exits on its own
    od.proc = None
    assert not any(_alive(pid) for pid in pids)
    assert not _alive(router)
    assert not _served(port)
    assert (od.state_dir / "ondeck.db").exists()  # the state is kept
    od.start()
    env = od.wait_synced(sha, timeout=60)
    assert env["live_revision"] == sha
    wait_for(lambda: _served(port), "the router to serve the app again")
    assert not set(pids) & {i["pid"] for i in od.service()["instances"]}  # type: ignore[index]


def test_down_one_environment_holds_it_down_until_synced(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    sha = repo.commit("two envs", TWO_ENVS)
    od = ondeck(repo.path, "--env", "staging", "--env", "production")
    od.wait_synced(sha, "staging")
    od.wait_synced(sha, "production")
    staging = [i["pid"] for i in od.service("web", "staging")["instances"]]  # type: ignore[index]
    od.cli("down", "--env", "staging")
    assert not any(_alive(pid) for pid in staging)
    assert od.proc is not None and od.proc.poll() is None  # the controller goes on
    assert od.service("web", "production")["replicas"]["ready"] == 2  # type: ignore[index]
    assert od.service("web", "staging")["instances"] == []  # type: ignore[index]
    assert any("held down" in c for c in od.env_status("staging")["conditions"])
    od.cli("sync", "--env", "staging", "--wait")
    od.wait_synced(sha, "staging")
    assert not any("held down" in c for c in od.env_status("staging")["conditions"])
