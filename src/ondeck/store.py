"""Durable state of one state dir: instances, sync history, env status, events.

The controller writes, the CLI and API read. SQLite in WAL mode, one transaction
per write, a lock per call (usable from the event loop and `asyncio.to_thread`).
Records rest as JSON beside the columns we query by: new fields need no migration.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from ondeck.errors import UserError
from ondeck.state.lifecycle import InstanceState, SyncResult, Trigger

log = logging.getLogger("ondeck")

MAX_PENDING = 100_000  # writes held in memory while the disk is full
_FULL_CODES = (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)


def _disk_full(err: sqlite3.OperationalError) -> bool:
    """SQLITE_FULL, or an I/O error (ENOSPC while growing the WAL shows as one)."""
    code = getattr(err, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF in _FULL_CODES) or "full" in str(err)


# Forward migrations: index i brings the schema from user_version i to i + 1.
# Append only; never edit a script that has shipped.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        app TEXT NOT NULL,
        env TEXT NOT NULL,
        service TEXT NOT NULL,
        created_at REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX instances_by_env ON instances (app, env, created_at, id);
    CREATE TABLE syncs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        env TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        result TEXT,
        data TEXT NOT NULL
    );
    CREATE INDEX syncs_by_env ON syncs (env, id);
    CREATE INDEX syncs_open ON syncs (env, id) WHERE finished_at IS NULL;
    CREATE TABLE envs (
        env TEXT PRIMARY KEY,
        updated_at REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        env TEXT NOT NULL,
        service TEXT,
        kind TEXT NOT NULL,
        at REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX events_by_env ON events (env, id);
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
]


@dataclass(frozen=True)
class InstanceRecord:
    """One app instance the supervisor launched, keyed by its instance id."""

    id: str
    app: str
    env: str
    service: str
    fingerprint: str
    revision: str
    release_dir: str
    log_path: str
    code_revision: str | None = None  # the commit its code came from (`source:`), if pinned
    port: int | None = None
    pid: int | None = None
    start_ticks: int | None = None  # /proc/PID/stat starttime: pid + this = one process
    state: InstanceState = InstanceState.LAUNCHING  # moved only by lifecycle.transition
    restarts: int = 0
    failures: int = 0  # consecutive crashes, drives the restart backoff
    exit_code: int | None = None
    created_at: float = 0.0
    started_at: float | None = None
    exited_at: float | None = None
    healthy_since: float | None = None
    runtime: str = "process"  # which Runtime runs it: process | container
    last_error: str | None = None  # why it last exited or failed its health check
    log_tail: str | None = None  # the end of its log when it last exited
    drift: str | None = None  # changed by hand since it started (files, environment)
    env_signature: dict[str, str | None] = field(default_factory=dict)  # name -> value hash
    # What the instance keeps of its spec even after the spec moves on:
    stop_signal: str = "TERM"
    stop_grace: float = 30.0
    reset_after: float = 600.0  # healthy this long: the crash count starts over
    drain: float = 30.0  # in-flight requests may finish this long before it is stopped
    health: dict[str, Any] | None = None  # its HealthCheck, as JSON
    extra: dict[str, Any] = field(default_factory=dict)  # anything else, kept as is

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", InstanceState(self.state))


@dataclass(frozen=True)
class SyncRecord:
    """One sync of one environment; `result` is None while it runs."""

    id: int
    env: str
    revision: str
    author: str
    message: str
    trigger: str
    started_at: float
    finished_at: float | None
    result: str | None  # Succeeded | Failed | Aborted
    actions: list[str]
    error: str | None
    changes: list[str] = field(default_factory=list)  # what the revision changed, for people


@dataclass(frozen=True)
class EnvRecord:
    """Last known state of one environment, kept across restarts of `ondeck up`."""

    env: str
    desired_revision: str | None
    live_revision: str | None
    error: str | None
    error_revision: str | None
    updated_at: float
    extra: dict[str, Any] = field(default_factory=dict)  # anything else, kept as is
    live_commit: dict[str, Any] | None = None  # the commit last synced: sha, author, message


@dataclass(frozen=True)
class ClusterMark:
    """An environment has (or may have) objects on a cluster: where, to remove them later.

    Kept so that a controller that only sees the new spec (runtime process) still
    knows what to take off the cluster after a restart.
    """

    app: str
    namespace: str
    kubeconfig: str | None = None  # the cluster it was applied to, as `ondeck up` was told
    context: str | None = None


_ON_CLUSTER = "on-cluster/"  # kv key prefix: env -> ClusterMark

_R = TypeVar("_R")

# Rows written before these were fields kept them in `extra` under these keys.
_LEGACY_EXTRA: dict[str, dict[str, str]] = {
    "InstanceRecord": {
        "runtime": "runtime",
        "last_error": "last_error",
        "log_tail": "log_tail",
        "drift": "drift",
        "env": "env_signature",
        "stop_signal": "stop_signal",
        "stop_grace": "stop_grace",
        "reset_after": "reset_after",
        "drain": "drain",
        "health": "health",
    },
    "EnvRecord": {"live_commit": "live_commit"},
}


def _from_json(cls: type[_R], data: str, **columns: Any) -> _R:
    """Build `cls` from a JSON blob; unknown keys (from a newer ondeck) are dropped.

    Old rows' `extra` keys that are fields now move to their fields.
    """
    values = {**json.loads(data), **columns}
    legacy = _LEGACY_EXTRA.get(cls.__name__, {})
    if legacy and isinstance(values.get("extra"), dict):
        extra = dict(values["extra"])
        for key, name in legacy.items():
            if key in extra:
                value = extra.pop(key)
                values.setdefault(name, value)
        values["extra"] = extra
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in values.items() if k in names})


def _to_json(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


class Store:
    """The SQLite database of a state dir. Create once, share, `close()` at exit."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self.changes = 0  # bumped by every write: readers cache views until it moves
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per write.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.unwritable: str | None = None  # why writes are held back (a full disk), for status
        self._pending: list[Callable[[sqlite3.Connection], object]] = []
        self._dropped = 0
        try:
            self._configure()
            self._migrate()
        except BaseException:
            self._db.close()
            raise
        (last,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM syncs").fetchone()
        self._next_sync_id = int(last) + 1

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- instances ---------------------------------------------------------

    def put_instance(self, rec: InstanceRecord) -> None:
        self._apply(
            lambda db: db.execute(
                "INSERT INTO instances (id, app, env, service, created_at, data)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET app = excluded.app, env = excluded.env,"
                " service = excluded.service, created_at = excluded.created_at,"
                " data = excluded.data",
                (rec.id, rec.app, rec.env, rec.service, rec.created_at, _to_json(asdict(rec))),
            )
        )

    def get_instance(self, id: str) -> InstanceRecord | None:
        row = self._one("SELECT data FROM instances WHERE id = ?", (id,))
        return None if row is None else _from_json(InstanceRecord, row[0])

    def instances(self, app: str | None = None, env: str | None = None) -> list[InstanceRecord]:
        """Instances, optionally of one app and/or env, ordered by (created_at, id)."""
        rows = self._all(
            "SELECT data FROM instances WHERE (?1 IS NULL OR app = ?1) AND (?2 IS NULL OR env = ?2)"
            " ORDER BY created_at, id",
            (app, env),
        )
        return [_from_json(InstanceRecord, r[0]) for r in rows]

    def delete_instance(self, id: str) -> None:
        self._apply(lambda db: db.execute("DELETE FROM instances WHERE id = ?", (id,)))

    # -- syncs -------------------------------------------------------------

    def begin_sync(
        self,
        env: str,
        revision: str,
        author: str,
        message: str,
        trigger: Trigger | str,
        started_at: float,
        changes: list[str] | None = None,
    ) -> int:
        """Record a running sync and return its id (increasing, never reused)."""
        data: dict[str, Any] = {
            "revision": revision,
            "author": author,
            "message": message,
            "trigger": trigger,
            "actions": [],
            "error": None,
            "changes": changes or [],
        }
        with self._lock:  # ids are handed out here, so a sync held back by a full disk has one
            sync_id, self._next_sync_id = self._next_sync_id, self._next_sync_id + 1
            self._apply(
                lambda db: db.execute(
                    "INSERT INTO syncs (id, env, started_at, data) VALUES (?, ?, ?, ?)",
                    (sync_id, env, started_at, _to_json(data)),
                )
            )
            return sync_id

    def add_sync_actions(self, sync_id: int, actions: list[str]) -> None:
        """Append actions, in order, to a sync's list. Unknown sync_id: KeyError."""

        def add(db: sqlite3.Connection) -> None:
            data = json.loads(self._sync_data(db, sync_id))
            data["actions"] = [*data.get("actions", []), *actions]
            db.execute("UPDATE syncs SET data = ? WHERE id = ?", (_to_json(data), sync_id))

        self._apply(add)

    def finish_sync(
        self, sync_id: int, result: SyncResult | str, finished_at: float, error: str | None = None
    ) -> None:
        """Close a sync with its result. Unknown sync_id: KeyError."""

        def finish(db: sqlite3.Connection) -> None:
            data = json.loads(self._sync_data(db, sync_id))
            data["error"] = error
            db.execute(
                "UPDATE syncs SET finished_at = ?, result = ?, data = ? WHERE id = ?",
                (finished_at, result, _to_json(data), sync_id),
            )

        self._apply(finish)

    def open_sync(self, env: str) -> SyncRecord | None:
        """The newest unfinished sync of `env`, e.g. one cut short by a crash."""
        found = self._syncs("WHERE env = ? AND finished_at IS NULL", (env,), 1)
        return found[0] if found else None

    def history(self, env: str | None = None, limit: int = 100) -> list[SyncRecord]:
        """Syncs, newest (highest id) first, at most `limit`."""
        return self._syncs("WHERE (? IS NULL OR env = ?)", (env, env), max(limit, 0))

    # -- environments ------------------------------------------------------

    def put_env(self, rec: EnvRecord) -> None:
        self._apply(
            lambda db: db.execute(
                "INSERT INTO envs (env, updated_at, data) VALUES (?, ?, ?)"
                " ON CONFLICT (env) DO UPDATE SET"
                " updated_at = excluded.updated_at, data = excluded.data",
                (rec.env, rec.updated_at, _to_json(asdict(rec))),
            )
        )

    def get_env(self, env: str) -> EnvRecord | None:
        row = self._one("SELECT data FROM envs WHERE env = ?", (env,))
        return None if row is None else _from_json(EnvRecord, row[0])

    # -- events ------------------------------------------------------------

    def events_add(self, env: str, service: str | None, kind: str, message: str, at: float) -> None:
        self._apply(
            lambda db: db.execute(
                "INSERT INTO events (env, service, kind, at, data) VALUES (?, ?, ?, ?, ?)",
                (env, service, kind, at, _to_json({"message": message})),
            )
        )

    def events(self, env: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Events newest first: dicts with id, env, service, kind, message, at."""
        rows = self._all(
            "SELECT id, env, service, kind, at, data FROM events WHERE (?1 IS NULL OR env = ?1)"
            " ORDER BY id DESC LIMIT ?2",
            (env, max(limit, 0)),
        )
        return [
            {"id": i, "env": e, "service": s, "kind": k, "at": at, **json.loads(d)}
            for i, e, s, k, at, d in rows
        ]

    # -- key/value ---------------------------------------------------------

    def get_kv(self, key: str) -> str | None:
        row = self._one("SELECT value FROM kv WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_kv(self, key: str, value: str) -> None:
        self._apply(
            lambda db: db.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    def delete_kv(self, key: str) -> None:
        self._apply(lambda db: db.execute("DELETE FROM kv WHERE key = ?", (key,)))

    # -- objects on a cluster (runtime kubernetes) ----------------------------

    def cluster_mark(self, env: str) -> ClusterMark | None:
        """Where `env` may have objects on a cluster (None: nowhere known)."""
        raw = self.get_kv(f"{_ON_CLUSTER}{env}")
        return None if raw is None else _from_json(ClusterMark, raw)

    def put_cluster_mark(self, env: str, mark: ClusterMark) -> None:
        """Record that `env`'s objects are on a cluster: set before each apply there."""
        self.set_kv(f"{_ON_CLUSTER}{env}", _to_json(asdict(mark)))

    def clear_cluster_mark(self, env: str) -> None:
        """`env` has nothing left on a cluster (its objects were torn down)."""
        self.delete_kv(f"{_ON_CLUSTER}{env}")

    # -- a full disk ---------------------------------------------------------

    def retry(self) -> bool:
        """Write what a full disk held back, if there is room again; True when all is written."""
        with self._lock:
            return self._flush()

    def _apply(self, body: Callable[[sqlite3.Connection], object]) -> None:
        """Run `body` in a write transaction, after anything held back, in order.

        A full disk must not stop supervision (restarting an instance needs no
        disk): the write is held in memory, the reason shown in the status, and
        written with the next one once there is room.
        """
        with self._lock:
            self._pending.append(body)
            if len(self._pending) > MAX_PENDING:
                del self._pending[0]  # the oldest: its row is rewritten by later ones, or lost
                self._dropped += 1
            try:
                self._flush()
            except BaseException:
                if self._pending and self._pending[-1] is body:
                    self._pending.pop()  # not a full disk: the caller sees its own error
                raise

    def _flush(self) -> bool:
        if not self._pending:
            return True
        try:
            with self._write() as db:
                for body in self._pending:
                    body(db)
        except sqlite3.OperationalError as err:
            if not _disk_full(err):
                raise
            if self.unwritable is None:
                log.error("cannot write %s (%s): holding writes in memory", self.path, err)
            self.unwritable = f"cannot write {self.path.name}: {err}; writes held in memory"
            return False
        if self.unwritable is not None:
            log.info("%s is writable again: %d held writes written", self.path, len(self._pending))
        self._pending.clear()
        self.unwritable = None
        return True

    @property
    def held(self) -> int:
        """Writes waiting for room on the disk."""
        return len(self._pending)

    # -- internals ---------------------------------------------------------

    def _configure(self) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout = 5000")
        (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise UserError(f"{self.path}: SQLite cannot use WAL mode here (got {mode!r})")
        # NORMAL in WAL: a commit survives a crash of this process, not a power cut.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        with self._write() as db:  # BEGIN IMMEDIATE: two processes never migrate at once
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > len(MIGRATIONS):
                raise UserError(
                    f"{self.path} has schema version {version}, newer than this ondeck"
                    f" knows ({len(MIGRATIONS)}): upgrade ondeck or use another state dir"
                )
            for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with the lock; rolled back on any error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self.changes += 1
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # some errors have rolled back already
                    self._db.execute("ROLLBACK")
                raise

    def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._db.execute(sql, params).fetchone()
            return row

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _sync_data(self, db: sqlite3.Connection, sync_id: int) -> str:
        row = db.execute("SELECT data FROM syncs WHERE id = ?", (sync_id,)).fetchone()
        if row is None:
            raise KeyError(f"no sync with id {sync_id}")
        return str(row[0])

    def _syncs(self, where: str, params: tuple[Any, ...], limit: int) -> list[SyncRecord]:
        rows = self._all(
            f"SELECT id, env, started_at, finished_at, result, data FROM syncs {where}"
            " ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [
            _from_json(
                SyncRecord,
                data,
                id=id,
                env=env,
                started_at=started,
                finished_at=finished,
                result=result,
            )
            for id, env, started, finished, result, data in rows
        ]


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (executescript would commit early)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()!r}")


def open_store(path: Path, now: float) -> Store:
    """The store at `path`; a corrupt file is moved aside (with its WAL) and a new one begun.

    The controller then rebuilds what it needs from live state: instances from
    the processes that run (`supervisor.records_from_proc`), the deployed
    revision from git. Locked or unreadable files are not corruption: they raise.
    """
    try:
        return Store(path)
    except sqlite3.OperationalError:
        raise
    except sqlite3.DatabaseError as err:
        aside = path.with_name(f"{path.name}.corrupt-{int(now)}")
        for suffix in ("", "-wal", "-shm"):
            part = path.with_name(path.name + suffix)
            if part.exists():
                part.rename(aside.with_name(aside.name + suffix))
        log.error(
            "%s is corrupt (%s): moved aside to %s; starting a new one and rebuilding "
            "from what runs",
            path,
            err,
            aside,
        )
        return Store(path)
