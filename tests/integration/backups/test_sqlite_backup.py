"""SQLite backups taken while a writer keeps writing; proven by a scratch restore; restored."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ondeck.backup import runner
from ondeck.backup.retention import Policy
from ondeck.backup.sqlite import SqliteEngine, figures
from ondeck.backup.storage import LocalStorage, sha256_file
from ondeck.errors import BackupFailure


class Writer:
    """A thread inserting rows in its own transactions until stopped (the app)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30)
        while not self._stop.is_set():
            with conn:
                conn.execute(
                    "INSERT INTO orders (item, qty) VALUES (?, ?)", ("widget", self.written)
                )
                conn.execute("UPDATE totals SET n = n + 1")
            self.written += 1
        conn.close()

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _wait_rows(writer: Writer, rows: int, deadline: float = 30.0) -> None:
    import time

    end = time.monotonic() + deadline
    while writer.written < rows:
        assert time.monotonic() < end, f"the writer wrote {writer.written} rows, not {rows}"
        time.sleep(0.01)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data" / "shop.db"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT, qty INTEGER);"
        "CREATE TABLE totals (n INTEGER);"
        "INSERT INTO totals VALUES (0);"
    )
    conn.executemany(
        "INSERT INTO orders (item, qty) VALUES (?, ?)", [(f"seed-{i}", i) for i in range(5000)]
    )
    conn.commit()
    conn.close()
    yield path


def _target(db: Path, tmp_path: Path, policy: Policy | None = None) -> runner.Target:
    return runner.Target(
        name="db",
        engine=SqliteEngine(db),
        storage=LocalStorage(tmp_path / "backups" / "db"),
        policy=policy or Policy(last=3),
    )


def test_a_backup_taken_while_the_app_writes_is_consistent_and_proven(
    db: Path, tmp_path: Path
) -> None:
    target = _target(db, tmp_path)
    with Writer(db) as writer:
        _wait_rows(writer, 200)
        manifest = runner.take(target, revision="a" * 40)
        _wait_rows(writer, writer.written + 100)  # still writing after the backup
    assert manifest.verified is True and manifest.verify_error is None
    counts = manifest.figures.tables
    # one point in time: every committed insert also committed its totals update
    copy = sqlite3.connect(target.storage.index / manifest.file)
    (total,) = copy.execute("SELECT n FROM totals").fetchone()
    copy.close()
    assert counts["orders"] == 5000 + total and counts["totals"] == 1
    assert 200 <= total < writer.written
    assert manifest.size == (target.storage.index / manifest.file).stat().st_size
    assert manifest.sha256 == sha256_file(target.storage.index / manifest.file)
    assert [m.id for m in runner.backups(target)] == [manifest.id]


def test_restore_puts_back_exactly_the_backed_up_content(db: Path, tmp_path: Path) -> None:
    target = _target(db, tmp_path)
    manifest = runner.take(target)
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM orders WHERE id % 2 = 0")
    conn.commit()
    conn.close()
    restored = runner.restore(target)
    assert restored.id == manifest.id
    conn = sqlite3.connect(db)
    assert figures(conn) == manifest.figures
    conn.close()


def test_a_corrupted_backup_file_fails_verification_and_says_so(db: Path, tmp_path: Path) -> None:
    target = _target(db, tmp_path)
    manifest = runner.take(target)
    path = target.storage.index / manifest.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BackupFailure, match="corrupted"):
        runner.verify(target, manifest.id)
    (listed,) = runner.backups(target)
    assert listed.verified is False and "corrupted" in (listed.verify_error or "")
    with pytest.raises(BackupFailure, match="no verified backup"):
        runner.restore(target)


def test_a_missing_database_is_a_clear_failure_and_nothing_is_listed(tmp_path: Path) -> None:
    target = _target(tmp_path / "nope.db", tmp_path)
    with pytest.raises(BackupFailure, match="does not exist"):
        runner.take(target)
    assert runner.backups(target) == []
    assert not (tmp_path / "nope.db").exists()


def test_retention_never_drops_the_last_verified_backup(db: Path, tmp_path: Path) -> None:
    target = _target(db, tmp_path, Policy(last=1))
    first = runner.take(target)
    unproven = runner.Target(
        target.name, target.engine, target.storage, target.policy, verify=False
    )
    runner.take(unproven)
    latest = runner.take(unproven)
    ids = [m.id for m in runner.backups(target)]
    assert ids == [first.id, latest.id]  # the middle one went; the verified one stays
    assert sorted(
        p.name for p in target.storage.index.iterdir() if not p.name.startswith(".")
    ) == sorted([f"{first.id}.json", first.file, f"{latest.id}.json", latest.file])
