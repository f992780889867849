"""PostgreSQL backups against a real server loaded by `pgbench -i` while `pgbench` keeps writing."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from backups.pgcluster import Cluster
from ondeck.backup import runner
from ondeck.backup.postgres import PostgresEngine, _figures
from ondeck.backup.retention import Policy
from ondeck.backup.storage import LocalStorage
from ondeck.errors import BackupFailure


def _target(url: str, tmp_path: Path) -> runner.Target:
    return runner.Target(
        name="db",
        engine=PostgresEngine(url),
        storage=LocalStorage(tmp_path / "backups" / "db"),
        policy=Policy(last=5),
    )


def _live_figures(url: str) -> object:
    with psycopg.connect(url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        return _figures(conn)


def _children_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
            if ppid == os.getpid() and argv0.endswith(name):
                found.append(int(entry.name))
    return found


def _wait(condition: object, what: str, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def loaded(pg: Cluster, pg_db: str) -> Iterator[str]:
    pg.pgbench(pg_db, "-i", "-s", "2", "-q")
    yield pg_db


def test_a_backup_taken_while_pgbench_writes_is_proven_and_restores_exactly(
    pg: Cluster, loaded: str, tmp_path: Path
) -> None:
    target = _target(pg.url(loaded), tmp_path)
    writer = pg.pgbench_background(loaded, "-c", "2", "-T", "600", "-n")
    try:
        _wait(lambda: int(pg.psql("SELECT count(*) FROM pgbench_history", loaded)) > 50, "writes")
        manifest = runner.take(target, revision="b" * 40)
        before = int(pg.psql("SELECT count(*) FROM pgbench_history", loaded))
        _wait(
            lambda: int(pg.psql("SELECT count(*) FROM pgbench_history", loaded)) > before,
            "writes after the backup",
        )
    finally:
        pg.stop_background(writer)
    assert manifest.verified is True, manifest.verify_error
    tables = manifest.figures.tables
    assert tables["public.pgbench_accounts"] == 200_000 and tables["public.pgbench_branches"] == 2
    assert (
        0
        < tables["public.pgbench_history"]
        < int(pg.psql("SELECT count(*) FROM pgbench_history", loaded))
    )
    # the live database moved on since: the figures are those of the snapshot pg_dump dumped
    assert manifest.figures != _live_figures(pg.url(loaded))
    runner.restore(target)
    assert _live_figures(pg.url(loaded)) == manifest.figures
    leftovers = pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'ondeck_verify_%'")
    assert leftovers == "0"


def test_the_password_never_reaches_argv_or_errors(pg: Cluster, pg_db: str, tmp_path: Path) -> None:
    pg.psql("CREATE TABLE t (x int)", pg_db)
    url = pg.url(pg_db)
    holder = psycopg.connect(url)
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # pg_dump waits for this lock
    target = _target(url, tmp_path)
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _catch(errors, runner.take, target))
    thread.start()
    try:
        _wait(lambda: _children_named("pg_dump"), "pg_dump to start")
        (pid,) = _children_named("pg_dump")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode()
        assert "s3cret-pg-pw" not in argv and "PGPASSWORD" not in environ
        passfile = next(v for v in environ.split("\0") if v.startswith("PGPASSFILE="))
        assert os.stat(passfile.split("=", 1)[1]).st_mode & 0o777 == 0o600
        # pg_dump killed midway: no backup is recorded, nothing half-written stays
        os.kill(pid, signal.SIGKILL)
    finally:
        holder.rollback()  # the figures, read beside pg_dump, wait for this lock too
        holder.close()
    thread.join(timeout=60)
    (error,) = errors
    assert isinstance(error, BackupFailure) and "pg_dump failed" in str(error)
    assert "s3cret-pg-pw" not in str(error)
    assert runner.backups(target) == []
    assert [p.name for p in target.storage.index.iterdir() if not p.name.startswith(".lock")] == []
    assert runner.take(target).verified is True  # the next run works


def test_wrong_credentials_are_a_clear_failure_without_the_password(
    pg: Cluster, pg_db: str, tmp_path: Path
) -> None:
    target = _target(pg.url(pg_db).replace("s3cret-pg-pw", "wrong-pw-123"), tmp_path)
    with pytest.raises(BackupFailure, match="password authentication failed") as caught:
        runner.take(target)
    assert "wrong-pw-123" not in str(caught.value)
    assert runner.backups(target) == []


def _catch(errors: list[BaseException], fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except BaseException as err:
        errors.append(err)


def test_tables_whose_columns_cannot_be_hashed_are_checksummed_by_their_text(
    pg: Cluster, pg_db: str, tmp_path: Path
) -> None:
    pg.psql("CREATE TABLE places (id int, at point, doc json)", pg_db)
    pg.psql(
        "INSERT INTO places SELECT i, point(i, i), '{\"a\": 1}' FROM generate_series(1, 50) i",
        pg_db,
    )
    pg.psql("CREATE TABLE plain AS SELECT generate_series(1, 7) AS x", pg_db)
    target = _target(pg.url(pg_db), tmp_path)
    manifest = runner.take(target)
    assert manifest.verified is True, manifest.verify_error
    assert manifest.figures.tables == {"public.places": 50, "public.plain": 7}
    pg.psql("UPDATE places SET at = point(0, 0) WHERE id = 3", pg_db)  # same count, other content
    assert _live_figures(pg.url(pg_db)).tables == manifest.figures.tables  # type: ignore[attr-defined]
    assert _live_figures(pg.url(pg_db)) != manifest.figures
