"""The db lost or corrupt: running instances are adopted from what runs, never stopped first.

On 2026-12-01 a deleted ondeck.db made the next `ondeck up` stop every running
instance as a stray before its replacement was ready (503s), and a corrupt one
gave a raw traceback. Instances carry ondeck's marker, their ONDECK_* env and
their release as cwd: enough to rebuild their records.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import SIMPLE_SPEC, Ondeck, Repo

ONE = SIMPLE_SPEC.replace("replicas: 2", "replicas: 1")


def _pid(od: Ondeck) -> int:
    web = od.service("web")
    assert web is not None and len(web["instances"]) == 1, web
    return int(web["instances"][0]["pid"])


def _damage(state: Path, how: str) -> None:
    for suffix in ("-wal", "-shm"):
        (state / f"ondeck.db{suffix}").unlink(missing_ok=True)
    db = state / "ondeck.db"
    if how == "deleted":
        db.unlink()
    else:
        db.write_bytes(b"this is not a database, it was overwritten by hand\n" * 100)


@pytest.mark.parametrize("how", ["deleted", "corrupt"])
def test_instances_survive_a_lost_db(repo: Repo, ondeck: Callable[..., Ondeck], how: str) -> None:
    sha = repo.commit("one web", ONE)
    od = ondeck(repo.path)
    od.wait_synced(sha, timeout=60)
    pid = _pid(od)
    od.stop()  # instances outlive the controller
    _damage(od.state_dir, how)

    again = ondeck(repo.path)
    again.wait_synced(sha, timeout=60)
    assert _pid(again) == pid  # adopted, not stopped and replaced
    assert "runs without a record: rebuilt from the process, adopted" in again.log()
    assert "stopping stray" not in again.log()
    if how == "corrupt":
        assert "is corrupt" in again.log() and "moved aside" in again.log()
        assert list(again.state_dir.glob("ondeck.db.corrupt-*"))
