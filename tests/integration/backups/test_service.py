"""The backup service of one environment: schedule, catch-up, failures in status and metrics."""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from backups.pgcluster import Cluster
from ondeck.backup.service import Action, BackupMetrics, BackupService, Place, Trigger
from ondeck.errors import BackupFailure
from ondeck.spec.model import Backup


class Clock:
    def __init__(self, start: str) -> None:
        self.now = datetime.datetime.fromisoformat(start).astimezone()

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += datetime.timedelta(**delta)


def _app_db(state: Path) -> Path:
    path = state / "data" / "shop" / "production" / "shop.db"
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    conn.commit()
    conn.close()
    return path


def _service(
    state: Path, clock: Clock, spec: dict[str, Backup], **place: object
) -> tuple[BackupService, CollectorRegistry]:
    registry = CollectorRegistry()
    where = Place("shop", "production", state, secrets=place.pop("secrets", {}), **place)  # type: ignore[arg-type]
    return BackupService(where, spec, BackupMetrics(registry), clock), registry


def test_a_schedule_missed_while_down_runs_once_and_status_says_so(tmp_path: Path) -> None:
    _app_db(tmp_path)
    clock = Clock("2024-05-01 02:00:00")
    spec = {"db": Backup(sqlite="shop.db", schedule="0 3 * * *")}
    service, registry = _service(tmp_path, clock, spec)
    try:
        assert service.tick() == []  # first sight at 02:00; first slot 03:00
        clock.advance(days=3)  # the controller was down over three slots
        assert service.tick() == ["db"]
        service._running["db"].result(timeout=60)
        assert service.tick() == []  # one run for all the missed slots
        (row,) = service.status()
        assert row["backups"] == 1 and row["last_error"] is None
        assert row["last_verified_restore"] == clock.now.isoformat()
        record = (tmp_path / "backups/shop/production/db/.state.json").read_text()
        assert Trigger.CATCH_UP.value in record
        metrics = generate_latest(registry).decode()
        assert (
            'ondeck_backup_last_verified_timestamp_seconds{app="shop",backup="db",env="production"}'
            in metrics
        )
    finally:
        service.close()


def test_a_failure_is_in_status_metrics_and_the_log_and_the_next_run_recovers(
    tmp_path: Path,
) -> None:
    clock = Clock("2024-05-01 02:00:00")
    logged: list[str] = []
    spec = {"db": Backup(sqlite="shop.db")}
    registry = CollectorRegistry()
    place = Place("shop", "production", tmp_path, secrets={})
    service = BackupService(place, spec, BackupMetrics(registry), clock, logged.append)
    try:
        with pytest.raises(BackupFailure, match="does not exist"):
            service.submit("db", Action.RUN).result(timeout=60)
        (row,) = service.status()
        assert "does not exist" in row["last_error"] and row["last_success"] is None
        assert logged and "does not exist" in logged[0]
        assert (
            'ondeck_backup_failures_total{action="run",app="shop",backup="db",env="production"} 1.0'
            in generate_latest(registry).decode()
        )
        _app_db(tmp_path)
        service.submit("db", Action.RUN).result(timeout=60)
        (row,) = service.status()
        assert row["last_error"] is None and row["backups"] == 1
    finally:
        service.close()


def test_before_deploy_backs_up_only_those_that_ask(tmp_path: Path) -> None:
    _app_db(tmp_path)
    spec = {
        "db": Backup(sqlite="shop.db", before_deploy=True),
        "cache": Backup(sqlite="shop.db", before_deploy=False, verify=False),
    }
    service, _ = _service(tmp_path, Clock("2024-05-01 02:00:00"), spec)
    try:
        (future,) = service.before_deploy()
        manifest = future.result(timeout=60)
        assert manifest.name == "db" and manifest.verified is True
        assert service.manifests("cache") == []
    finally:
        service.close()


def test_the_postgres_url_comes_from_a_host_secret_or_the_environment(
    tmp_path: Path, pg: Cluster, pg_db: str
) -> None:
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 10) AS x", pg_db)
    spec = {"db": Backup.model_validate({"postgres": {"url_env": "DATABASE_URL"}})}
    clock = Clock("2024-05-01 02:00:00")
    missing, _ = _service(tmp_path, clock, spec, environ={})
    try:
        with pytest.raises(BackupFailure, match="ondeck secret set DATABASE_URL --env production"):
            missing.submit("db", Action.RUN).result(timeout=60)
    finally:
        missing.close()
    for place in (
        {"secrets": {"DATABASE_URL": pg.url(pg_db)}, "environ": {}},
        {"environ": {"DATABASE_URL": pg.url(pg_db)}},
    ):
        service, _ = _service(tmp_path, clock, spec, **place)
        try:
            manifest = service.submit("db", Action.RUN).result(timeout=120)
            assert manifest.verified is True and manifest.figures.tables == {"public.t": 10}
            assert pg.url(pg_db) not in str(service.status())
        finally:
            service.close()


def test_a_restic_repository_with_its_password_from_a_secret_read_at_each_run(
    tmp_path: Path,
) -> None:
    _app_db(tmp_path)
    spec = {
        "db": Backup.model_validate(
            {
                "sqlite": "shop.db",
                "restic": {"repository": str(tmp_path / "repo"), "password_env": "RESTIC_PW"},
            }
        )
    }
    secrets: dict[str, str] = {}
    place = Place("shop", "production", tmp_path, secrets=lambda: secrets, environ={})
    service = BackupService(place, spec, None, Clock("2024-05-01 02:00:00"))
    try:
        with pytest.raises(BackupFailure, match="RESTIC_PW is neither a host secret"):
            service.submit("db", Action.RUN).result(timeout=60)
        secrets["RESTIC_PW"] = "pw-from-the-host-store"  # set while the service runs
        manifest = service.submit("db", Action.RUN).result(timeout=120)
        assert manifest.verified is True and manifest.location
        assert (tmp_path / "repo" / "config").exists()
        assert "pw-from-the-host-store" not in str(service.status())
    finally:
        service.close()
