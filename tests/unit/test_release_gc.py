"""Old releases are garbage-collected: kept are the running and desired ones, plus the
few newest complete others per service (instant rollback); drifted copies and
half-built leftovers go."""

from __future__ import annotations

import json
from pathlib import Path

from ondeck.releases import MARKER, prune


def release(root: Path, service: str, name: str, at: float | None) -> Path:
    path = root / service / name
    path.mkdir(parents=True)
    (path / "app.py").write_text("print('hi')\n")
    if at is not None:  # None: an export or build that never finished
        (path / MARKER).write_text(json.dumps({"revision": name, "at": at, "manifest": {}}))
    return path


def test_keeps_running_desired_and_the_three_newest_others(tmp_path: Path) -> None:
    root = tmp_path / "releases" / "shop" / "production"
    old = [release(root, "web", f"f{i}", at=float(i)) for i in range(1, 8)]
    running, desired = old[0], old[6]
    removed = prune(root, {running, desired})
    left = sorted(p.name for p in (root / "web").iterdir())
    assert left == ["f1", "f4", "f5", "f6", "f7"]  # f1 runs, f7 is desired, f4-f6 the newest others
    assert sorted(p.name for p in removed) == ["f2", "f3"]


def test_drifted_and_unfinished_releases_go(tmp_path: Path) -> None:
    root = tmp_path / "releases" / "shop" / "production"
    current = release(root, "web", "f2", at=20.0)
    release(root, "web", "f2.drifted-1700000000", at=10.0)
    release(root, "web", "f9", at=None)
    release(root, "worker", "w1", at=5.0)
    prune(root, {current})
    assert sorted(p.name for p in (root / "web").iterdir()) == ["f2"]
    assert [p.name for p in (root / "worker").iterdir()] == ["w1"]  # an older spare: kept


def test_recent_zero_keeps_only_what_is_needed(tmp_path: Path) -> None:
    root = tmp_path / "releases" / "shop" / "staging"
    needed = release(root, "web", "f3", at=3.0)
    release(root, "web", "f2", at=2.0)
    prune(root, {needed}, recent=0)
    assert [p.name for p in (root / "web").iterdir()] == ["f3"]
