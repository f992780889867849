"""SQLite: an online, consistent copy through SQLite's backup API while the app keeps writing.

The copy is taken in one step inside a read transaction (WAL lets writers go
on), so it is one point in time; its figures are read from the copy itself.
Proving a copy opens a scratch copy and runs `PRAGMA integrity_check`.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ondeck.backup.manifest import EngineKind, Figures
from ondeck.errors import BackupFailure

BUSY_TIMEOUT_S = 30.0


class SqliteEngine:
    """The database file at `path` (already resolved against the data dir)."""

    kind = EngineKind.SQLITE
    suffix = ".sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def dump(self, dest: Path) -> Figures:
        if not self.path.is_file():
            raise BackupFailure(f"sqlite database {self.path} does not exist")
        with _connect(self.path, readonly=True) as src, _connect(dest) as dst:
            try:
                src.backup(dst)  # pages=-1: one step, one read transaction, one point in time
            except sqlite3.Error as err:
                raise BackupFailure(f"sqlite backup of {self.path} failed: {err}") from err
            return figures(dst)

    def prove(self, dump: Path, scratch: Path) -> Figures:
        copy = scratch / "restore.sqlite"
        shutil.copyfile(dump, copy)
        try:
            with _connect(copy) as conn:
                check = [row[0] for row in conn.execute("PRAGMA integrity_check")]
                if check != ["ok"]:
                    raise BackupFailure(f"integrity_check failed: {'; '.join(check[:5])}")
                return figures(conn)
        except sqlite3.DatabaseError as err:
            raise BackupFailure(f"the backup does not open as SQLite: {err}") from err

    def restore(self, dump: Path) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _connect(dump, readonly=True) as src, _connect(self.path) as dst:
            try:
                src.backup(dst)
            except sqlite3.Error as err:
                raise BackupFailure(f"sqlite restore into {self.path} failed: {err}") from err


@contextlib.contextmanager
def _connect(path: Path, *, readonly: bool = False) -> Iterator[sqlite3.Connection]:
    uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as err:
        raise BackupFailure(f"cannot open sqlite database {path}: {err}") from err
    try:
        yield conn
    finally:
        conn.close()


def figures(conn: sqlite3.Connection) -> Figures:
    """Row counts and a sha256 over every row of every table, in a stable order."""
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    digest = hashlib.sha256()
    tables: dict[str, int] = {}
    for name in names:
        quoted = '"' + name.replace('"', '""') + '"'
        columns = len(conn.execute(f"SELECT * FROM {quoted} LIMIT 0").description)
        order = ", ".join(str(i) for i in range(1, columns + 1))
        count = 0
        digest.update(f"\0table {name}\0".encode())
        for row in conn.execute(f"SELECT * FROM {quoted} ORDER BY {order}"):
            digest.update(repr(row).encode())
            count += 1
        tables[name] = count
    return Figures(tables=tables, checksum=digest.hexdigest())
