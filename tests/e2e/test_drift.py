"""Drift: what people change by hand on the host is noticed, shown, and (with self-heal) undone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import SIMPLE_SPEC, Ondeck, Repo, wait_for

ONE = SIMPLE_SPEC.replace("replicas: 2", "replicas: 1")


def _instance(od: Ondeck) -> dict[str, object]:
    web = od.service("web")
    assert web is not None and web["instances"]
    return dict(web["instances"][0])


def _release_dir(od: Ondeck, inst_id: str) -> Path:
    log = (od.state_dir / "logs").rglob(f"{inst_id}.log")
    assert next(log, None) is not None
    found = list((od.state_dir / "releases").glob("*/_shared/*"))
    live = [p for p in found if not p.name.count(".")]
    assert len(live) == 1, found
    return live[0]


@pytest.fixture
def hand_started() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_edited_release_file_is_reported_then_replaced(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    sha = repo.commit("one web", ONE)
    od = ondeck(repo.path)
    od.wait_synced(sha)
    first = _instance(od)
    release = _release_dir(od, str(first["id"]))
    (release / "web.py").write_text((release / "web.py").read_text() + "\n# hot fix by hand\n")

    def replaced() -> dict[str, object] | None:
        inst = _instance(od)
        ok = inst["id"] != first["id"] and inst["health"] == "Healthy"
        return inst if ok and od.env_status()["sync"] == "Synced" else None

    wait_for(replaced, "the drifted instance to be replaced", timeout=90)
    events = od.cli("history", "--json").stdout
    assert "self-heal" in events
    fresh = _release_dir(od, str(_instance(od)["id"]))
    assert "hot fix by hand" not in (fresh / "web.py").read_text()


def test_without_self_heal_drift_is_only_reported(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    sha = repo.commit("one web", ONE)
    od = ondeck(repo.path, "--no-self-heal")
    od.wait_synced(sha)
    first = _instance(od)
    release = _release_dir(od, str(first["id"]))
    (release / "web.py").write_text("# replaced by hand\n")

    def reported() -> list[str] | None:
        web = od.service("web")
        assert web is not None
        reasons = [r for r in web["reasons"] if "changed by hand" in r and "web.py modified" in r]
        return reasons if web["sync"] == "OutOfSync" and reasons else None

    wait_for(reported, "the drift to be reported", timeout=60)
    assert _instance(od)["pid"] == first["pid"]  # reported, not touched
    diff = od.cli("diff").stdout
    assert "web.py modified" in diff


def test_process_started_by_hand_in_a_release_is_stopped(
    repo: Repo, ondeck: Callable[..., Ondeck], hand_started: list[subprocess.Popen[bytes]]
) -> None:
    sha = repo.commit("one web", ONE)
    od = ondeck(repo.path)
    od.wait_synced(sha)
    release = _release_dir(od, str(_instance(od)["id"]))
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], cwd=release, start_new_session=True
    )
    hand_started.append(proc)
    wait_for(lambda: proc.poll() is not None, "the stray to be stopped", timeout=90)
    assert proc.returncode == -signal.SIGTERM
    assert os.path.isdir(release)


def test_environment_changed_by_hand_is_drift(repo: Repo, ondeck: Callable[..., Ondeck]) -> None:
    sha = repo.commit(
        "one web", ONE.replace("port: true", "port: true\n    env: {GREETING: hello}")
    )
    od = ondeck(repo.path, "--no-self-heal")
    od.wait_synced(sha)
    first = _instance(od)
    os.kill(int(str(first["pid"])), signal.SIGUSR1)  # same pid, new environment

    def reported() -> list[str] | None:
        web = od.service("web")
        assert web is not None
        found = [r for r in web["reasons"] if "environment differs from the spec: GREETING" in r]
        return found or None

    wait_for(reported, "the environment drift to be reported", timeout=60)
    assert _instance(od)["pid"] == first["pid"]


def test_a_deleted_release_directory_is_reported_then_rebuilt(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    import shutil

    sha = repo.commit("one web", ONE)
    od = ondeck(repo.path, "--no-self-heal")
    od.wait_synced(sha)
    first = _instance(od)
    release = _release_dir(od, str(first["id"]))
    shutil.rmtree(release)  # under the running instance

    def reported() -> list[str] | None:
        web = od.service("web")
        assert web is not None
        found = [r for r in web["reasons"] if "the release directory was deleted" in r]
        return found if web["sync"] == "OutOfSync" else None

    wait_for(reported, "the deleted release to be reported", timeout=60)
    assert _instance(od)["pid"] == first["pid"]  # reported, not touched
    od.stop()

    healing = ondeck(repo.path)  # the same state dir, now with self-heal

    def replaced() -> dict[str, object] | None:
        inst = _instance(healing)
        ok = inst["id"] != first["id"] and inst["health"] == "Healthy"
        return inst if ok and healing.env_status()["sync"] == "Synced" else None

    wait_for(replaced, "the instance to be replaced from a fresh release", timeout=90)
    assert (_release_dir(healing, str(_instance(healing)["id"])) / "web.py").is_file()
