"""Old releases are garbage-collected: kept are the running and desired ones, plus the
few newest complete others per service (instant rollback); drifted copies and
half-built leftovers go."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from ondeck.environment import prune_shared
from ondeck.releases import MARKER, SHARED, prune


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


class _Env:
    """Stands in for an Environment: prune_shared reads only what it runs, wants, and names."""

    def __init__(self, used: set[Path] | None, services: int = 1) -> None:
        self.used = used
        self.desired = type("D", (), {"services": [object()] * services})()

    def releases_in_use(self) -> set[Path] | None:
        return self.used


def test_a_shared_release_is_kept_while_any_environment_uses_it(tmp_path: Path) -> None:
    root = tmp_path / "releases" / "shop" / SHARED
    old = [release(root.parent, SHARED, f"k{i}", at=float(i)) for i in range(1, 7)]
    staging, production = _Env({old[0]}), _Env({old[0], old[1]})  # production moves on
    removed = prune_shared(cast(Any, [staging, production]), tmp_path)
    # k1 runs in both, k2 in production; 2 services in all: 6 newest spares allowed.
    assert removed == []
    removed = prune_shared(cast(Any, [_Env({old[0]}, 0), _Env({old[1]}, 0)]), tmp_path)
    left = sorted(p.name for p in root.iterdir())
    assert left == ["k1", "k2", "k4", "k5", "k6"]  # used by either, plus 3 newest spares
    assert [p.name for p in removed] == ["k3"]


def test_nothing_shared_is_pruned_while_an_environment_may_be_building(tmp_path: Path) -> None:
    root = tmp_path / "releases" / "shop" / SHARED
    used = release(root.parent, SHARED, "k1", at=1.0)
    building = release(root.parent, SHARED, "k2", at=None)  # an export under way
    assert prune_shared(cast(Any, [_Env({used}), _Env(None)]), tmp_path) == []
    assert building.is_dir()
    assert prune_shared(cast(Any, [_Env({used})]), tmp_path) == [building]
