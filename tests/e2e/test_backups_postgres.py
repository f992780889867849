"""PostgreSQL backups through a real `ondeck up`: the URL from its environment, a kill -9 mid-backup."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import Ondeck, Repo, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from backups.pgcluster import Cluster, running_cluster

SPEC = """\
app: shop
services:
  web:
    command: ["python3", "web.py"]
    port: true
    health: {http: /healthz, interval: 1s}
backups:
  db:
    postgres: {url_env: DATABASE_URL}
    verify: true
    before_deploy: false
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[Cluster]:
    with running_cluster() as cluster:
        cluster.psql("CREATE DATABASE shop")
        cluster.psql("CREATE TABLE orders AS SELECT generate_series(1, 1000) AS id", "shop")
        yield cluster


def test_a_controller_killed_mid_backup_lists_no_half_backup_and_the_next_run_works(
    pg: Cluster, repo: Repo, ondeck: Callable[..., Ondeck], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg.url("shop"))
    rev = repo.commit("v1", SPEC)
    od = ondeck(repo.path)
    od.wait_synced(rev)
    index = od.state_dir / "backups" / "shop" / "default" / "db"
    holder = psycopg.connect(pg.url("shop"))
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")  # pg_dump waits here, midway
    run = subprocess.Popen(
        [sys.executable, "-m", "ondeck", "backup", "run", "db"],
        env=od.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: list(index.glob(".partial-*")), "pg_dump to start writing", 60)
        od.stop(signal.SIGKILL)
    finally:
        holder.rollback()
        holder.close()
    run.communicate(timeout=60)
    assert run.returncode != 0  # the CLI saw its controller die
    od.start()
    assert json.loads(od.cli("backup", "list", "db", "--json").stdout) == []
    taken = json.loads(od.cli("backup", "run", "db", "--json").stdout)
    assert taken["verified"] is True and taken["tables"] == {"public.orders": 1000}
    listed = json.loads(od.cli("backup", "list", "db", "--json").stdout)
    assert [b["id"] for b in listed] == [taken["id"]]
    assert not list(index.glob(".partial-*"))
    assert pg.url("shop") not in od.log() and "s3cret-pg-pw" not in od.cli("status").stdout
