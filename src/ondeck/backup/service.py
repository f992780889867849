"""The backups of one environment, as the controller runs them: scheduled, before a deploy, on demand.

Built from the environment's `backups:` (its spec at the deployed revision),
where it lives (state dir, data dir) and its secrets. Every run happens on a
worker thread (one per environment), so a backup never blocks the reconcile
loop; the controller awaits the returned future only when it must (a
`before_deploy` backup gates the sync). What happened is kept per backup in
`.state.json` beside the manifests, so a restarted controller knows what it
missed and status shows the last error.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from croniter import croniter
from prometheus_client import CollectorRegistry, Counter, Gauge

from ondeck.backup import runner
from ondeck.backup.engines import Engine
from ondeck.backup.manifest import Manifest
from ondeck.backup.postgres import PostgresEngine
from ondeck.backup.retention import Policy
from ondeck.backup.sqlite import SqliteEngine
from ondeck.backup.storage import LocalStorage, ResticStorage, Storage
from ondeck.errors import BackupFailure
from ondeck.spec.model import Backup, Keep

Clock = Callable[[], datetime.datetime]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Action(StrEnum):
    RUN = "run"
    VERIFY = "verify"
    RESTORE = "restore"


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    CATCH_UP = "catch-up"  # a schedule missed while the controller was down
    BEFORE_DEPLOY = "before-deploy"
    BEFORE_RESTORE = "before-restore"
    MANUAL = "manual"


@dataclass(frozen=True)
class Place:
    """Where one environment's backups live and what they may read."""

    app: str
    env: str
    state_dir: Path
    # the host secrets of this app/environment; a callable is asked at each use (a secret
    # set while the controller runs is seen by the next backup)
    secrets: Mapping[str, str] | Callable[[], Mapping[str, str]]
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data" / self.app / self.env

    def index(self, name: str) -> Path:
        return self.state_dir / "backups" / self.app / self.env / name

    def lookup(self, name: str, what: str) -> str:
        """A secret's value, else the controller's environment variable; never shown."""
        secrets = self.secrets() if callable(self.secrets) else self.secrets
        value = secrets.get(name) or self.environ.get(name)
        if not value:
            raise BackupFailure(
                f"{what} {name} is neither a host secret of {self.app}/{self.env} nor set in "
                f"the controller's environment: `ondeck secret set {name} --env {self.env}` "
                "(value on stdin)"
            )
        return value


def policy_of(keep: Keep) -> Policy:
    return Policy(keep.last, keep.hourly, keep.daily, keep.weekly, keep.monthly, keep.yearly)


def target_of(name: str, spec: Backup, place: Place) -> runner.Target:
    """The engine, storage and policy of one named backup."""
    engine: Engine
    if spec.sqlite is not None:
        engine = SqliteEngine(place.data_dir / spec.sqlite)
    else:
        assert spec.postgres is not None  # the spec has exactly one engine
        engine = PostgresEngine(place.lookup(spec.postgres.url_env, "the database URL"))
    storage: Storage
    if spec.restic is not None:
        password = place.lookup(spec.restic.password_env, "the restic password")
        restic = ResticStorage(place.index(name), spec.restic.repository, password)
        restic.init()
        storage = restic
    else:
        storage = LocalStorage(place.index(name))
    return runner.Target(name, engine, storage, policy_of(spec.keep), verify=spec.verify)


def next_run(schedule: str, after: datetime.datetime) -> datetime.datetime:
    """The first cron slot strictly after `after`, in the host's local time."""
    nxt: datetime.datetime = croniter(schedule, after.astimezone()).get_next(datetime.datetime)
    return nxt


def due(schedule: str, last: datetime.datetime, now: datetime.datetime) -> Trigger | None:
    """Whether a scheduled run is due, given the last run (or when the backup appeared).

    However many slots passed since `last`, one run is due (a catch-up when the
    newest slot passed by more than a minute)."""
    slot = next_run(schedule, last)
    if slot > now:
        return None
    latest = slot
    while (following := next_run(schedule, latest)) <= now:
        latest = following
    late = (now - latest).total_seconds() > 60
    return Trigger.CATCH_UP if late else Trigger.SCHEDULE


class BackupMetrics:
    """`ondeck_backup_*` in the controller's registry."""

    @classmethod
    def of(cls, registry: CollectorRegistry) -> BackupMetrics:
        """The one set of backup metrics of `registry` (every environment shares it)."""
        found = _METRICS.get(registry)
        if found is None:
            found = _METRICS[registry] = cls(registry)
        return found

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["app", "env", "backup"]
        self.last_success = Gauge(
            "ondeck_backup_last_success_timestamp_seconds",
            "When the last backup was taken whole.",
            labels,
            registry=registry,
        )
        self.last_verified = Gauge(
            "ondeck_backup_last_verified_timestamp_seconds",
            "When a backup was last proven by a scratch restore.",
            labels,
            registry=registry,
        )
        self.failures = Counter(
            "ondeck_backup_failures", "Backups, verifications and restores that failed.",
            [*labels, "action"], registry=registry,
        )  # fmt: skip


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, BackupMetrics] = weakref.WeakKeyDictionary()


@dataclass
class Record:
    """What happened to one backup, kept in `.state.json`."""

    since: str
    last_attempt: str | None = None
    last_success: str | None = None
    last_error: str | None = None
    last_trigger: str | None = None

    @classmethod
    def load(cls, path: Path, now: datetime.datetime) -> Record:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return cls(since=now.isoformat())

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".state.json.tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2) + "\n")
        tmp.replace(path)


class BackupService:
    """Runs one environment's backups on a worker thread; the controller asks and awaits."""

    def __init__(
        self,
        place: Place,
        backups: Mapping[str, Backup],
        metrics: BackupMetrics | None = None,
        clock: Clock = _now,
        log: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.place, self.backups, self.metrics = place, dict(backups), metrics
        self.clock, self.log = clock, log
        self.revision: str | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"backup-{place.app}-{place.env}")
        self._running: dict[str, Future[Manifest]] = {}
        self._records: dict[str, Record] = {}
        self.version = 0  # bumped when a run starts or ends: the status shows something new
        self._lock = threading.Lock()

    def update(self, backups: Mapping[str, Backup], revision: str | None) -> None:
        """The spec of the revision now deployed."""
        self.backups, self.revision = dict(backups), revision

    def close(self) -> None:
        # Never blocks the loop: a backup under way finishes on its thread (whole or not at all).
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- asking -----------------------------------------------------------------

    def tick(self) -> list[str]:
        """Start every scheduled backup that is due (not already running); their names."""
        now = self.clock()
        started = []
        for name, spec in self.backups.items():
            record = self._record(name)
            last = record.last_attempt or record.since
            trigger = due(spec.schedule, datetime.datetime.fromisoformat(last), now)
            if trigger is not None and not self.running(name):
                self.submit(name, Action.RUN, trigger)
                started.append(name)
        return started

    def submit(
        self,
        name: str,
        action: Action,
        trigger: Trigger = Trigger.MANUAL,
        backup_id: str | None = None,
    ) -> Future[Manifest]:
        if name not in self.backups:
            known = ", ".join(sorted(self.backups)) or "none"
            raise BackupFailure(f"no backup named {name!r} in {self.place.env} (known: {known})")
        with self._lock:
            future = self._pool.submit(self._do, name, action, trigger, backup_id)
            self._running[name] = future
            self.version += 1
        future.add_done_callback(lambda _f: self._bump())
        return future

    def before_deploy(self) -> list[Future[Manifest]]:
        """A backup of each `before_deploy` backup (verified when `verify`): the sync awaits them."""
        return [
            self.submit(name, Action.RUN, Trigger.BEFORE_DEPLOY)
            for name, spec in self.backups.items()
            if spec.before_deploy
        ]

    def _bump(self) -> None:
        with self._lock:
            self.version += 1

    def running(self, name: str) -> bool:
        future = self._running.get(name)
        return future is not None and not future.done()

    def pick(self, name: str, backup_id: str | None) -> Manifest:
        """What a restore would take: `backup_id`, else the latest verified backup."""
        return runner.pick(self._static_target(name), backup_id, verified_only=backup_id is None)

    def manifests(self, name: str) -> list[Manifest]:
        return runner.backups(self._target(name))

    def status(self) -> list[dict[str, Any]]:
        """Per backup: last success, last verified restore, last error, next run."""
        rows = []
        for name, spec in self.backups.items():
            record = self._record(name)
            manifests = runner.backups(self._static_target(name))
            proven = runner.last_verified(manifests)
            last = record.last_attempt or record.since
            rows.append(
                {
                    "name": name,
                    "engine": "sqlite" if spec.sqlite else "postgres",
                    "backups": len(manifests),
                    "last_success": record.last_success,
                    "last_verified_restore": proven.verified_at.isoformat()
                    if proven and proven.verified_at
                    else None,
                    "last_verified_id": proven.id if proven else None,
                    "last_error": record.last_error,
                    "running": self.running(name),
                    "next_run": next_run(
                        spec.schedule, datetime.datetime.fromisoformat(last)
                    ).isoformat(),
                }
            )
        return rows

    # -- doing (worker thread) ----------------------------------------------------

    def _do(self, name: str, action: Action, trigger: Trigger, backup_id: str | None) -> Manifest:
        path = self.place.index(name) / ".state.json"
        record = self._record(name)
        now = self.clock()
        if action is Action.RUN:
            record.last_attempt, record.last_trigger = now.isoformat(), trigger.value
            record.save(path)
        try:
            target = self._target(name)
            if action is Action.RUN:
                # a restore's safety backup must not retire the backup about to be restored
                retain = trigger is not Trigger.BEFORE_RESTORE
                manifest = runner.take(target, self.revision, self.clock, retain=retain)
            elif action is Action.VERIFY:
                manifest = runner.verify(target, backup_id, self.clock)
            else:
                manifest = runner.restore(target, backup_id, self.clock)
        except BackupFailure as err:
            record.last_error = f"{action.value} failed: {err}"
            record.save(path)
            self.log(f"backup {self.place.app}/{self.place.env}/{name}: {record.last_error}")
            if self.metrics:
                self._labels(self.metrics.failures, name, action=action.value).inc()
            raise
        if action is Action.RUN:
            record.last_success, record.last_error = manifest.created.isoformat(), None
        elif action is Action.VERIFY:
            record.last_error = None
        record.save(path)
        self._export(name)
        return manifest

    def _export(self, name: str) -> None:
        if self.metrics is None:
            return
        manifests = runner.backups(self._static_target(name))
        if manifests:
            self._labels(self.metrics.last_success, name).set(manifests[-1].created.timestamp())
        proven = runner.last_verified(manifests)
        if proven and proven.verified_at:
            self._labels(self.metrics.last_verified, name).set(proven.verified_at.timestamp())

    def _labels(self, metric: Any, name: str, **extra: str) -> Any:
        return metric.labels(app=self.place.app, env=self.place.env, backup=name, **extra)

    def _record(self, name: str) -> Record:
        """Read once, then kept in memory (every pass asks `tick`); saved on each change."""
        record = self._records.get(name)
        if record is None:
            path = self.place.index(name) / ".state.json"
            record = Record.load(path, self.clock())
            if not path.exists():
                record.save(path)  # `since`: a new backup's first slot is after it appeared
            self._records[name] = record
        return record

    def _target(self, name: str) -> runner.Target:
        return target_of(name, self.backups[name], self.place)

    def _static_target(self, name: str) -> runner.Target:
        """For listing only: no secret needed, nothing contacted."""
        index = self.place.index(name)
        return runner.Target(name, SqliteEngine(index), LocalStorage(index), Policy())
