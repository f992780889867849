"""Faults: a disk that fills up, a controller killed mid-backup, a locked restic repository."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from backups.pgcluster import Cluster
from ondeck.backup import runner
from ondeck.backup.postgres import PostgresEngine
from ondeck.backup.retention import Policy
from ondeck.backup.sqlite import SqliteEngine
from ondeck.backup.storage import LocalStorage, ResticStorage
from ondeck.errors import BackupFailure


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, mounted for this test (the tests run as root in CI)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            raise AssertionError("CI runs the tests as root: mounting a tmpfs needs it")
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _sqlite(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, data BLOB)")
    conn.executemany(
        "INSERT INTO blobs (data) VALUES (?)", [(os.urandom(1000),) for _ in range(rows)]
    )
    conn.commit()
    conn.close()


def test_a_disk_that_fills_up_fails_the_backup_cleanly_and_the_next_run_works(
    tmp_path: Path, small_disk: Path
) -> None:
    db = tmp_path / "big.db"
    _sqlite(db, 2000)  # ~2 MB: does not fit in 1 MiB
    target = runner.Target("db", SqliteEngine(db), LocalStorage(small_disk / "db"), Policy(last=2))
    with pytest.raises(BackupFailure, match=r"full|space"):
        runner.take(target)
    assert runner.backups(target) == []
    assert [p.name for p in (small_disk / "db").iterdir()] == [".lock"]  # no partial left
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM blobs WHERE id > 100")
    conn.commit()
    conn.execute("VACUUM")
    conn.close()
    assert runner.take(target).verified is True


_KILLED_RUN = """
import sys
from ondeck.backup import runner
from ondeck.backup.postgres import PostgresEngine
from ondeck.backup.retention import Policy
from ondeck.backup.storage import LocalStorage
url, index = sys.stdin.readline().strip(), sys.argv[1]
runner.take(runner.Target("db", PostgresEngine(url), LocalStorage(__import__("pathlib").Path(index)), Policy(last=3)))
"""


def test_a_controller_killed_mid_backup_leaves_no_half_backup_and_the_next_run_works(
    pg: Cluster, pg_db: str, tmp_path: Path
) -> None:
    pg.pgbench(pg_db, "-i", "-s", "1", "-q")
    url = pg.url(pg_db)
    index = tmp_path / "backups" / "db"
    holder = psycopg.connect(url)
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE pgbench_tellers IN ACCESS EXCLUSIVE MODE")  # holds pg_dump midway
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, str(index)],
        stdin=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(url + "\n")  # the URL stays out of argv here too
    proc.stdin.close()
    try:
        end = time.monotonic() + 60
        while not list(index.glob(".partial-*")):
            assert time.monotonic() < end and proc.poll() is None, "pg_dump never started writing"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the controller and its pg_dump, as in a power cut
        proc.wait(timeout=30)
    finally:
        holder.rollback()
        holder.close()
    target = runner.Target("db", PostgresEngine(url), LocalStorage(index), Policy(last=3))
    assert runner.backups(target) == []
    manifest = runner.take(target)
    assert manifest.verified is True
    assert [m.id for m in runner.backups(target)] == [manifest.id]
    assert not list(index.glob(".partial-*"))  # the leftovers were swept


@pytest.fixture
def restic_target(tmp_path: Path) -> runner.Target:
    db = tmp_path / "app.db"
    _sqlite(db, 50)
    storage = ResticStorage(tmp_path / "index", str(tmp_path / "repo"), "restic-pw-42")
    storage.init()
    return runner.Target("db", SqliteEngine(db), storage, Policy(last=2))


def test_restic_storage_backs_up_proves_restores_and_prunes(
    restic_target: runner.Target, tmp_path: Path
) -> None:
    taken = [runner.take(restic_target) for _ in range(3)]
    listed = runner.backups(restic_target)
    assert [m.id for m in listed] == [m.id for m in taken[1:]]  # keep last 2: restic forget --prune
    assert all(m.verified and m.location for m in listed)
    env = {
        **os.environ,
        "RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "RESTIC_PASSWORD": "restic-pw-42",
    }
    out = subprocess.run(
        ["restic", "snapshots", "--json", "--no-lock"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(taken[0].location) not in out and all(str(m.location) in out for m in listed)
    conn = sqlite3.connect(tmp_path / "app.db")
    conn.execute("DELETE FROM blobs")
    conn.commit()
    conn.close()
    runner.restore(restic_target)
    conn = sqlite3.connect(tmp_path / "app.db")
    assert conn.execute("SELECT count(*) FROM blobs").fetchone() == (50,)
    conn.close()


def test_a_locked_restic_repository_is_a_clear_failure(
    restic_target: runner.Target, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "RESTIC_PASSWORD": "restic-pw-42",
    }
    # An exclusive lock held by another restic: `key passwd` takes one, then waits on stdin.
    holder = subprocess.Popen(
        ["restic", "key", "passwd"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        locks = ""
        end = time.monotonic() + 30
        while not locks.strip():
            assert time.monotonic() < end, "restic check never took its lock"
            locks = subprocess.run(
                ["restic", "list", "locks", "--no-lock"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout
        with pytest.raises(BackupFailure, match="locked"):
            runner.take(restic_target)
    finally:
        holder.kill()
        holder.wait(timeout=30)
