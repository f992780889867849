"""The container runtime through `ondeck up`: the same spec, run as OCI images on Podman.

Images are built locally from busybox-static (tests/fixtures/images/build.sh):
no registry is needed. The controller starts its own `podman system service`
(nothing in DOCKER_HOST), as it would for a user with Podman installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Ondeck, Repo, wait_for

from ondeck.runtime.process import allocate_port, supervisor_id

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "podman-setup.sh"
BUILD = ROOT / "tests" / "fixtures" / "images" / "build.sh"
CONF = Path("/etc/containers/containers.conf")
RUN = uuid.uuid4().hex[:8]


def _podman(*args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=120
    )
    return result.stdout.strip()


@pytest.fixture(scope="module")
def images() -> Iterator[str]:
    """`REPO` with tags 1 and 2 of the busybox test app."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the container runtime needs root (Podman with runc) or CI=true")
    conf = CONF.read_text() if CONF.exists() else ""
    if shutil.which("podman") is None or '"runc"' not in conf:
        subprocess.run(["bash", str(SETUP)], check=True)
    repo = f"localhost/ondeck-e2e-{RUN}"
    subprocess.run(["bash", str(BUILD), repo], check=True, stdout=subprocess.DEVNULL)
    yield repo
    subprocess.run(["bash", str(BUILD), "--remove", repo], check=False)


@pytest.fixture
def containers_cleanup(tmp_path: Path) -> Iterator[None]:
    """Remove what the controller left: its containers, volumes and Podman service.

    Requested before `ondeck`, so it runs after the controller is gone.
    """
    yield
    label = f"label=ondeck.supervisor={supervisor_id(tmp_path / 'state')}"
    ids = _podman("ps", "-aq", "--filter", label, check=False).split()
    if ids:
        _podman("rm", "-f", "-t", "0", *ids, check=False)
    for volume in _podman(
        "volume", "ls", "-q", "--filter", f"name=ondeck-shop{RUN}", check=False
    ).split():
        _podman("volume", "rm", "-f", volume, check=False)
    subprocess.run(
        ["pkill", "-f", f"podman system service --time=0 unix://{tmp_path}"], check=False
    )


def _spec(image: str, replicas: int = 2, extra: str = "") -> str:
    return f"""\
app: shop{RUN}
runtime: container
services:
  web:
    image: {image}
    pull: never
    port: 8080
    replicas: {replicas}
    env: {{GREETING: hello}}
    health: {{http: /healthz, interval: 1s}}
    stop: {{grace: 5s}}
    rollout: {{strategy: rolling, max_surge: 1, max_unavailable: 0, drain: 2s}}
    routes: [{{path: /}}]
{extra}"""


class Load:
    """A few keep-alive clients hitting the router until stopped; every outcome counted."""

    def __init__(self, url: str) -> None:
        self.url, self.stop = url, threading.Event()
        self.ok: dict[str, int] = {}
        self.failed: list[str] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(4)]

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(100_000):  # bounded
                if self.stop.is_set():
                    return
                try:
                    answer = client.get(self.url)
                except httpx.HTTPError as err:
                    self.failed.append(repr(err))
                    continue
                if answer.status_code != 200:
                    self.failed.append(f"HTTP {answer.status_code}")
                else:
                    body = answer.text.strip()
                    self.ok[body] = self.ok.get(body, 0) + 1

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def _pids(od: Ondeck) -> set[int]:
    web = od.service("web")
    assert web is not None
    return {i["pid"] for i in web["instances"]}


def test_image_release_under_load_then_adoption_and_prune(
    images: str, containers_cleanup: None, repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    port = allocate_port()
    first = repo.commit("image 1", _spec(f"{images}:1"))
    od = ondeck(repo.path, "--listen", f"127.0.0.1:{port}")
    od.wait_synced(first, timeout=120)
    url = f"http://127.0.0.1:{port}/"
    assert httpx.get(url, timeout=10).text.strip() == "version 1"
    logs = od.cli("logs", "web").stdout
    assert "app version 1 starting, greeting=hello" in logs and "app stderr check" in logs

    with Load(url) as load:
        wait_for(lambda: sum(load.ok.values()) > 20, "traffic before the release")
        second = repo.commit("image 2", _spec(f"{images}:2"))
        od.wait_synced(second, timeout=120)
        wait_for(lambda: load.ok.get("version 2", 0) > 20, "traffic on the new image")
    assert load.failed == [], load.failed[:5]
    assert load.ok.get("version 1", 0) > 0

    # kill -9 the controller: the containers are re-adopted, none started twice
    before = _pids(od)
    od.stop(9)
    od.start()
    od.wait_synced(second, timeout=120)
    assert _pids(od) == before
    label = f"label=ondeck.supervisor={supervisor_id(od.state_dir)}"
    assert len(_podman("ps", "-q", "--filter", label).split()) == 2

    # a foreign container survives pruning; ours go
    foreign = f"foreign-{RUN}"
    _podman("run", "-d", "--name", foreign, f"{images}:1")
    try:
        third = repo.commit(
            "no more web", _spec(f"{images}:2").split("services:")[0] + "services: {}\n"
        )
        od.wait_synced(third, timeout=120)
        wait_for(lambda: not _podman("ps", "-q", "--filter", label), "our containers to be removed")
        state = json.loads(_podman("inspect", foreign))[0]["State"]
        assert state["Running"] is True
    finally:
        _podman("rm", "-f", "-t", "0", foreign, check=False)


def test_missing_image_fails_the_sync_and_touches_nothing(
    images: str, containers_cleanup: None, repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    first = repo.commit("image 1", _spec(f"{images}:1", replicas=1))
    od = ondeck(repo.path)
    od.wait_synced(first, timeout=120)
    before = _pids(od)
    bad = repo.commit("image that does not exist", _spec(f"{images}:404", replicas=1))
    env = wait_for(
        lambda: (e := od.env_status())["error_commit"] and e["error_commit"]["sha"] == bad and e,
        "the missing image to fail the sync",
        timeout=60,
    )
    assert f"{images}:404" in env["error"]
    assert env["live_revision"] == first
    assert _pids(od) == before
    started = time.monotonic()
    history = json.loads(od.cli("history", "--json").stdout)["syncs"]
    assert history[0]["result"] == "Failed" and history[0]["revision"] == bad
    assert time.monotonic() - started < 60
