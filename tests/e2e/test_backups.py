"""Backups end to end: a real `ondeck up`, an app writing SQLite, run/list/verify/restore via the CLI."""

from __future__ import annotations

import datetime
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import Ondeck, Repo, wait_for

WRITER = """\
import os, sqlite3, time
db = sqlite3.connect(os.path.join(os.environ["ONDECK_DATA_DIR"], "shop.db"), timeout=30)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS ticks (at REAL)")
db.commit()
while True:
    db.execute("INSERT INTO ticks VALUES (?)", (time.time(),))
    db.commit()
    time.sleep(0.02)
"""

SPEC = """\
app: shop
services:
  web:
    command: ["python3", "web.py"]
    version: "{version}"
    port: true
    health: {{http: /healthz, interval: 1s}}
    stop: {{grace: 5s}}
  writer:
    command: ["python3", "writer.py"]
    stop: {{grace: 5s}}
backups:
  db:
    sqlite: shop.db
    keep: {{last: 5}}
    verify: true
    before_deploy: true
"""


def _json(od: Ondeck, *args: str) -> Any:
    return json.loads(od.cli(*args, "--json").stdout)


def test_backups_are_taken_proven_listed_gated_and_restored(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    repo.write("writer.py", WRITER)
    first = repo.commit("v1", SPEC.format(version="1.0.0"))
    od = ondeck(repo.path)
    od.wait_synced(first)
    db = od.state_dir / "data" / "shop" / "default" / "shop.db"
    wait_for(lambda: db.exists() and _ticks(db) > 20, "the writer to write")

    taken = _json(od, "backup", "run", "db")
    assert isinstance(taken, dict) and taken["verified"] is True and taken["revision"] == first
    (listed,) = _json(od, "backup", "list", "db")
    assert set(listed) >= {"id", "created", "size", "sha256", "verified", "verified_at", "revision"}
    assert listed["id"] == taken["id"]

    env = od.env_status()
    (row,) = env["backups"]
    assert row["last_verified_id"] == taken["id"] and row["last_error"] is None
    assert "last verified restore:" in od.cli("status").stdout

    # a deploy that changes a service is preceded by a verified backup of what ran
    second = repo.commit("v2", SPEC.format(version="1.1.0"))
    od.cli("sync", "--wait")
    od.wait_synced(second)
    backups = _json(od, "backup", "list", "db")
    assert isinstance(backups, list) and len(backups) == 2
    assert backups[1]["revision"] == first and backups[1]["verified"] is True

    # restore: the current state is backed up first, services stopped and started again
    writer_pid = _pid(od, "writer")
    since = datetime.datetime.fromisoformat(backups[1]["created"]).timestamp() + 1

    def written_after_that_backup() -> float | None:
        until = time.time() - 1  # a window that closes before the restore can start
        return until if until > since and _ticks(db, since, until) > 0 else None

    # rows written after that backup, which a restore loses (the window needs a second or more)
    until = wait_for(written_after_that_backup, "the writer to write after that backup")
    restored = _json(od, "backup", "restore", "db")
    assert isinstance(restored, dict) and restored["id"] == backups[1]["id"]
    assert len(_json(od, "backup", "list", "db")) == 3
    od.wait_synced(second)
    assert _ticks(db, since, until) == 0
    assert _pid(od, "writer") != writer_pid  # stopped for the restore, started after it
    history = json.loads(od.cli("history", "--json").stdout)
    restores = [s for s in history["syncs"] if s["trigger"] == "restore"]
    assert restores and restores[0]["result"] == "Succeeded"

    # a backup that fails before a deploy stops it; --skip-backup deploys anyway, recorded
    third = repo.commit(
        "v3: back up a file that is gone",
        SPEC.format(version="1.1.0").replace("shop.db", "gone.db"),
    )
    od.cli("sync", "--wait")
    od.wait_synced(third)  # no service changed: no gate
    fourth = repo.commit("v4", SPEC.format(version="1.2.0").replace("shop.db", "gone.db"))
    refused = wait_for(lambda: od.env_status()["error"], "the deploy to be refused", 60)
    assert "gone.db does not exist" in refused and "--skip-backup" in refused
    assert od.env_status()["live_revision"] == third
    od.cli("sync", "--wait", "--skip-backup")
    od.wait_synced(fourth)
    api = json.loads((od.state_dir / "api.json").read_text())["url"]
    token = (od.state_dir / "token").read_text().strip()
    events = httpx.get(
        f"{api}/api/v1/events", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).json()["events"]
    assert any(e["kind"] == "backup-skipped" and fourth[:12] in e["message"] for e in events)
    metrics = httpx.get(f"{api}/metrics", timeout=10).text
    assert (
        'ondeck_backup_last_verified_timestamp_seconds{app="shop",backup="db",env="default"}'
        in metrics
    )


def _pid(od: Ondeck, service: str) -> int:
    svc = od.service(service)
    assert svc is not None
    (instance,) = svc["instances"]
    return int(instance["pid"])


def _ticks(db: Path, since: float = 0.0, until: float = 1e12) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        query = "SELECT count(*) FROM ticks WHERE at BETWEEN ? AND ?"
        return int(conn.execute(query, (since, until)).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()
