"""PostgreSQL: `pg_dump -Fc` inside an exported snapshot, proven by `pg_restore` into a scratch database.

The URL never reaches argv (where `ps` shows it) nor any output: pg_dump and
pg_restore get libpq's environment (PGHOST, PGPORT, PGUSER, PGDATABASE) and a
0600 password file that lives only for the call. The figures (row counts and a
content checksum per table) are read in the same snapshot pg_dump dumps, while
it runs, so they describe exactly the dump.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ondeck.backup.manifest import EngineKind, Figures
from ondeck.errors import BackupFailure

_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2
"""
JOBS = min(4, os.cpu_count() or 1)  # a scratch restore loads tables and builds indexes in parallel
_LIBPQ_ENV = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE"}
_LIBPQ_EXTRA = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "connect_timeout": "PGCONNECT_TIMEOUT",
}


def pg_bin(name: str) -> str:
    """A PostgreSQL client binary: on PATH, else the newest Debian keeps in /usr/lib/postgresql."""
    found = shutil.which(name)
    if found:
        return found
    bindirs = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for bindir in reversed(bindirs):
        if (bindir / name).exists():
            return str(bindir / name)
    raise BackupFailure(f"{name} is not installed: install the Debian package postgresql-client")


class PostgresEngine:
    """The database at `url` (from a secret or the environment; never shown)."""

    kind = EngineKind.POSTGRES
    suffix = ".dump"

    def __init__(self, url: str) -> None:
        try:
            self._params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as err:
            raise BackupFailure(
                "the database URL cannot be parsed (its value is not shown)"
            ) from err
        self._url = url

    def dump(self, dest: Path) -> Figures:
        with self._connect() as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True  # the first statement begins this transaction
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None  # a SELECT of one value always returns a row
            with self._libpq_env() as env:
                proc = subprocess.Popen(
                    [
                        pg_bin("pg_dump"),
                        "-Fc",
                        f"--snapshot={row[0]}",
                        "--no-sync",
                        "-f",
                        str(dest),
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                try:
                    result = _figures(conn)  # same snapshot, while pg_dump runs
                finally:
                    _, err = proc.communicate()
            conn.rollback()
        if proc.returncode != 0:
            raise BackupFailure(f"pg_dump failed (exit {proc.returncode}): {_tail(err)}")
        return result

    def prove(self, dump: Path, scratch: Path) -> Figures:
        name = f"ondeck_verify_{secrets.token_hex(4)}"
        with self._connect(autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            self._pg_restore(
                dump, name, "--no-owner", "--no-privileges", "--exit-on-error", f"--jobs={JOBS}"
            )
            with self._connect(dbname=name) as conn:
                return _figures(conn)
        finally:
            with self._connect(autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

    def restore(self, dump: Path) -> None:
        self._pg_restore(
            dump, str(self._params.get("dbname") or ""), "--clean", "--if-exists", "--no-owner",
            "--single-transaction", "--exit-on-error",
        )  # fmt: skip

    def _pg_restore(self, dump: Path, dbname: str | None, *flags: str) -> None:
        with self._libpq_env(dbname) as env:
            result = subprocess.run(
                [pg_bin("pg_restore"), *flags, "-d", dbname or "", str(dump)],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
        if result.returncode != 0:
            raise BackupFailure(
                f"pg_restore failed (exit {result.returncode}): {_tail(result.stderr)}"
            )

    @contextlib.contextmanager
    def _connect(
        self, *, autocommit: bool = False, dbname: str | None = None
    ) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        params = dict(self._params)
        if dbname is not None:
            params["dbname"] = dbname
        try:
            conn = psycopg.connect(**params, autocommit=autocommit)  # type: ignore[arg-type]
        except psycopg.Error as err:
            raise BackupFailure(f"cannot connect to PostgreSQL: {_tail(str(err))}") from err
        try:
            yield conn
        except psycopg.Error as err:
            raise BackupFailure(f"PostgreSQL: {_tail(str(err))}") from err
        finally:
            conn.close()

    @contextlib.contextmanager
    def _libpq_env(self, dbname: str | None = None) -> Iterator[dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        for key, var in {**_LIBPQ_ENV, **_LIBPQ_EXTRA}.items():
            if self._params.get(key):
                env[var] = str(self._params[key])
        if dbname is not None:
            env["PGDATABASE"] = dbname
        with tempfile.TemporaryDirectory(prefix="ondeck-pgpass-") as tmp:
            password = self._params.get("password")
            if password:
                passfile = Path(tmp) / "pgpass"
                fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write("*:*:*:*:" + _pgpass_escape(str(password)) + "\n")
                env["PGPASSFILE"] = str(passfile)
            else:
                env.pop("PGPASSFILE", None)
            yield env


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _figures(conn: psycopg.Connection[tuple[object, ...]]) -> Figures:
    """Per table: rows and an order-independent sum of row hashes; one sha256 over them all.

    `hash_record_extended` hashes each row through its columns' own hash functions
    (half the cost of hashing its text form); a table with a column type that has no
    hash function (point, json, ...) falls back to hashing the row's text."""
    tables: dict[str, int] = {}
    digest = hashlib.sha256()
    for schema, table in conn.execute(_TABLES).fetchall():
        relation = sql.SQL("{}.{}").format(sql.Identifier(str(schema)), sql.Identifier(str(table)))
        row = _row_hashes(conn, relation)
        name = f"{schema}.{table}"
        tables[name] = int(str(row[0]))
        digest.update(f"{name}\0{row[0]}\0{row[1]}\n".encode())
    return Figures(tables=tables, checksum=digest.hexdigest())


def _row_hashes(
    conn: psycopg.Connection[tuple[object, ...]], relation: sql.Composable
) -> tuple[object, ...]:
    fast = "SELECT count(*), coalesce(sum(hash_record_extended(t, 0)::numeric), 0) FROM {} AS t"
    slow = "SELECT count(*), coalesce(sum(hashtext(t::text)::bigint), 0) FROM {} AS t"
    try:
        with conn.transaction():  # a savepoint: the snapshot's transaction survives a failure
            row = conn.execute(sql.SQL(fast).format(relation)).fetchone()
    except psycopg.errors.UndefinedFunction:
        row = conn.execute(sql.SQL(slow).format(relation)).fetchone()
    assert row is not None  # an aggregate always returns a row
    return tuple(row)


def _tail(text: str | bytes, limit: int = 400) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return " ".join(text.strip().split())[-limit:] or "no output"
