"""Release drift from the manifest taken at build time: edits and removals, not additions."""

from __future__ import annotations

import os
from pathlib import Path

from ondeck.releases import MARKER, drift, prepare


class _Tree:
    """An exporter writing a fixed tree: no git needed to test the manifest."""

    def export(self, rev: str, path: str, dest: Path) -> None:
        (dest / "pkg").mkdir(parents=True)
        (dest / "app.py").write_text("print('hi')\n")
        (dest / "pkg" / "lib.py").write_text("X = 1\n")
        (dest / "run.sh").write_text("#!/bin/sh\n")


def _release(tmp_path: Path) -> Path:
    return prepare(_Tree(), "rev", "", tmp_path / "r", None, {})


def test_a_fresh_release_has_no_drift_and_a_marker(tmp_path: Path) -> None:
    dest = _release(tmp_path)
    assert (dest / MARKER).is_file()
    assert drift(dest) == []


def test_edits_removals_and_mode_changes_are_drift(tmp_path: Path) -> None:
    dest = _release(tmp_path)
    (dest / "app.py").write_text("print('patched by hand')\n")
    (dest / "pkg" / "lib.py").unlink()
    os.chmod(dest / "run.sh", 0o755)
    assert drift(dest) == ["pkg/lib.py removed", "app.py modified", "run.sh mode changed"]


def test_a_touch_caches_and_new_files_are_not_drift(tmp_path: Path) -> None:
    dest = _release(tmp_path)
    os.utime(dest / "app.py", (1, 1))  # new mtime, same bytes
    (dest / "__pycache__").mkdir()
    (dest / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (dest / "app.log").write_text("written by the app\n")
    assert drift(dest) == []


def test_a_deleted_release_directory_is_drift_and_taint_leaves_it(tmp_path: Path) -> None:
    import shutil

    from ondeck.releases import taint

    dest = _release(tmp_path)
    shutil.rmtree(dest)
    assert drift(dest) == ["the release directory was deleted"]
    assert taint(dest) == dest  # nothing to move aside


def test_a_removed_marker_is_drift(tmp_path: Path) -> None:
    dest = _release(tmp_path)
    (dest / MARKER).unlink()
    assert drift(dest) == [f"{MARKER} removed"]
