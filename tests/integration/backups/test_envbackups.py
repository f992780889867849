"""The gate before a deploy and the environment's schedule, with real SQLite backups."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ondeck.backup.envbackups import BackupGateFailed, EnvBackups, changes_a_service
from ondeck.backup.service import Action, BackupMetrics
from ondeck.spec.model import Backup, Service
from ondeck.state.desired import Desired, DesiredService

WEB = Service(command=["python3", "app.py"])


def _desired(fingerprint: str, backups: dict[str, Backup], replicas: int = 1) -> Desired:
    svc = DesiredService("web", WEB.model_copy(update={"replicas": replicas}), fingerprint)
    return Desired(
        "shop", "production", "r" * 40, "process", (svc,), backups=tuple(backups.items())
    )


def _db(state: Path) -> None:
    path = state / "data" / "shop" / "production" / "shop.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()


def _env(state: Path, logged: list[str] | None = None) -> EnvBackups:
    metrics = BackupMetrics(CollectorRegistry())
    sink = logged.append if logged is not None else (lambda _m: None)
    return EnvBackups(state, "production", metrics, lambda _a, _e: {}, sink)


GATED = {"db": Backup(sqlite="shop.db", before_deploy=True)}


def test_only_a_change_to_an_instance_needs_the_gate() -> None:
    base = _desired("aaa", GATED)
    assert not changes_a_service(None, base)  # first deploy: nothing to protect yet
    assert not changes_a_service(base, _desired("aaa", {}))
    assert changes_a_service(base, _desired("bbb", GATED))
    assert changes_a_service(base, _desired("aaa", GATED, replicas=2))


def test_a_deploy_that_changes_a_service_is_preceded_by_a_verified_backup(tmp_path: Path) -> None:
    _db(tmp_path)
    env = _env(tmp_path)
    try:
        taken = asyncio.run(
            env.before_deploy(_desired("aaa", GATED), _desired("bbb", GATED), False)
        )
        assert len(taken) == 1
        (manifest,) = env.service.manifests("db") if env.service else []
        assert manifest.id == taken[0] and manifest.verified is True
        assert manifest.revision == "r" * 40  # the revision that was running
        same = asyncio.run(env.before_deploy(_desired("bbb", GATED), _desired("bbb", GATED), False))
        assert same == []
    finally:
        env.close()


def test_a_failed_gate_backup_stops_the_sync_and_says_how_to_override(tmp_path: Path) -> None:
    env = _env(tmp_path)  # no database file: the backup fails
    try:
        with pytest.raises(BackupGateFailed, match="--skip-backup") as caught:
            asyncio.run(env.before_deploy(_desired("aaa", GATED), _desired("bbb", GATED), False))
        assert "does not exist" in str(caught.value)
        (row,) = env.status()
        assert "does not exist" in row["last_error"]
    finally:
        env.close()


def test_skip_backup_deploys_without_it_and_says_so(tmp_path: Path) -> None:
    logged: list[str] = []
    env = _env(tmp_path, logged)
    try:
        assert (
            asyncio.run(env.before_deploy(_desired("a", GATED), _desired("b", GATED), True)) == []
        )
        assert any("skipped (--skip-backup)" in line for line in logged)
    finally:
        env.close()


def _rows(state: Path) -> list[int]:
    conn = sqlite3.connect(state / "data" / "shop" / "production" / "shop.db")
    rows = [r[0] for r in conn.execute("SELECT x FROM t ORDER BY x")]
    conn.close()
    return rows


def test_restore_backs_up_the_current_state_first_and_runs_between_pause_and_resume(
    tmp_path: Path,
) -> None:
    _db(tmp_path)
    env = _env(tmp_path)
    keep_one = {
        "db": Backup(sqlite="shop.db", keep={"last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    }
    env.follow(_desired("aaa", keep_one))
    assert env.service is not None
    good = env.service.submit("db", Action.RUN).result(timeout=60)
    conn = sqlite3.connect(tmp_path / "data" / "shop" / "production" / "shop.db")
    conn.execute("INSERT INTO t VALUES (2)")  # a bad migration, say
    conn.commit()
    conn.close()
    seen: list[tuple[str, list[int]]] = []

    async def pause() -> None:
        seen.append(("pause", _rows(tmp_path)))

    async def resume() -> None:
        seen.append(("resume", _rows(tmp_path)))

    try:
        restored, safety = asyncio.run(env.restore("db", None, False, pause, resume))
        assert restored.id == good.id  # the latest verified before the safety backup
        assert seen == [("pause", [1, 2]), ("resume", [1])]
        assert safety.figures.tables == {"t": 2} and safety.verified is True
        ids = [m.id for m in env.service.manifests("db")]
        assert good.id in ids and safety.id in ids  # the safety backup retired nothing
        seen.clear()
        asyncio.run(
            env.restore("db", safety.id, True, pause, resume)
        )  # undo: --id, --while-running
        assert seen == [] and _rows(tmp_path) == [1, 2]
    finally:
        env.close()
