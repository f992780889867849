"""Benchmark of proven backups against the plain tools, measured in the same run.

A real PostgreSQL (a throwaway cluster, as in the tests) loaded with
`pgbench -i -s SCALE`:
- backup: ondeck's `runner.take` (pg_dump -Fc in an exported snapshot, row
  counts and checksums read beside it, sha256, manifest) against plain
  `pg_dump -Fc` of the same database; goal <= 1.10x.
- verify: ondeck's `runner.verify` (sha256, scratch database, pg_restore,
  figures compared) against plain `createdb` + `pg_restore` into a fresh
  database; goal <= 1.2x.
Rounds alternate peer and ondeck; every sample is kept and the medians compared.
SQLite: the commit latency of a writer (one insert per transaction) for a
fixed time with no backup, then with backups taken back to back.

Run: `.venv/bin/python bench/backup.py [--scale 50] [--rounds 3]`; writes
bench/results/backup.json. docs/benchmarks.md explains the figures.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import save_results

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from backups.pgcluster import Cluster, pg_bin, running_cluster  # noqa: E402

from ondeck.backup import runner  # noqa: E402
from ondeck.backup.postgres import PostgresEngine  # noqa: E402
from ondeck.backup.retention import Policy  # noqa: E402
from ondeck.backup.sqlite import SqliteEngine  # noqa: E402
from ondeck.backup.storage import LocalStorage  # noqa: E402


def _timed(fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _plain_dump(pg: Cluster, db: str, dest: Path) -> None:
    subprocess.run(
        [pg_bin("pg_dump"), "-Fc", "-f", str(dest), pg.url(db)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _plain_restore(pg: Cluster, dump: Path, fresh: str) -> None:
    pg.psql(f"CREATE DATABASE {fresh}")
    subprocess.run(
        [pg_bin("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
         "-d", pg.url(fresh), str(dump)],
        check=True,
    )  # fmt: skip


def postgres(scale: int, rounds: int, work: Path) -> dict[str, Any]:
    with running_cluster() as pg:
        pg.psql("CREATE DATABASE bench")
        load = _timed(pg.pgbench, "bench", "-i", "-s", str(scale), "-q")
        size = int(pg.psql("SELECT pg_database_size('bench')"))
        target = runner.Target(
            "db", PostgresEngine(pg.url("bench")), LocalStorage(work / "pg"), Policy(), verify=False
        )
        dump_peer, dump_ours, verify_peer, verify_ours = [], [], [], []
        for i in range(rounds):
            plain = work / f"plain-{i}.dump"
            dump_peer.append(_timed(_plain_dump, pg, "bench", plain))
            start = time.perf_counter()
            manifest = runner.take(target)
            dump_ours.append(time.perf_counter() - start)
            verify_peer.append(_timed(_plain_restore, pg, plain, f"fresh{i}"))
            pg.psql(f"DROP DATABASE fresh{i}")
            start = time.perf_counter()
            proven = runner.verify(target, manifest.id)
            verify_ours.append(time.perf_counter() - start)
            assert proven.verified, proven.verify_error
            plain.unlink()
            print(
                f"round {i + 1}: pg_dump {dump_peer[-1]:.2f}s, ondeck backup {dump_ours[-1]:.2f}s; "
                f"pg_restore {verify_peer[-1]:.2f}s, ondeck verify {verify_ours[-1]:.2f}s",
                flush=True,
            )
        dump_ratio = statistics.median(dump_ours) / statistics.median(dump_peer)
        verify_ratio = statistics.median(verify_ours) / statistics.median(verify_peer)
        return {
            "scale": scale,
            "database_bytes": size,
            "dump_bytes": manifest.size,
            "load_seconds": load,
            "backup": {
                "plain_pg_dump_seconds": dump_peer,
                "ondeck_seconds": dump_ours,
                "ratio_of_medians": dump_ratio,
                "goal": 1.10,
                "met": dump_ratio <= 1.10,
            },
            "verify": {
                "plain_pg_restore_seconds": verify_peer,
                "ondeck_seconds": verify_ours,
                "ratio_of_medians": verify_ratio,
                "goal": 1.2,
                "met": verify_ratio <= 1.2,
            },
        }


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _writer(path: Path, seconds: float) -> list[float]:
    conn = sqlite3.connect(path, timeout=30)
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        with conn:
            conn.execute("INSERT INTO events (body) VALUES (?)", (os.urandom(200),))
        latencies.append(time.perf_counter() - start)
    conn.close()
    return latencies


def sqlite(seconds: float, work: Path) -> dict[str, Any]:
    path = work / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, body BLOB)")
    conn.executemany(
        "INSERT INTO events (body) VALUES (?)", ((os.urandom(200),) for _ in range(200_000))
    )
    conn.commit()
    conn.close()
    quiet = _writer(path, seconds)
    target = runner.Target(
        "db", SqliteEngine(path), LocalStorage(work / "sq"), Policy(last=1), verify=False
    )
    stop = threading.Event()
    taken = [0]

    def backups() -> None:
        while not stop.is_set():
            runner.take(target)
            taken[0] += 1

    thread = threading.Thread(target=backups)
    thread.start()
    try:
        busy = _writer(path, seconds)
    finally:
        stop.set()
        thread.join()

    def stats(samples: list[float]) -> dict[str, float | int]:
        return {
            "n": len(samples),
            "p50_ms": 1000 * _percentile(samples, 0.5),
            "p99_ms": 1000 * _percentile(samples, 0.99),
            "max_ms": 1000 * max(samples),
        }

    return {
        "db_bytes": path.stat().st_size,
        "seconds_each": seconds,
        "without_backup": stats(quiet),
        "with_backups_running": stats(busy),
        "backups_taken_meanwhile": taken[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sqlite-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ondeck-bench-backup-") as tmp:
        work = Path(tmp)
        pg = postgres(args.scale, args.rounds, work)
        lite = sqlite(args.sqlite_seconds, work)
    results = {"postgres": pg, "sqlite_writer": lite}
    b, v = pg["backup"], pg["verify"]
    print(
        f"backup: ondeck / pg_dump = {b['ratio_of_medians']:.3f} (goal <= 1.10: {'met' if b['met'] else 'MISSED'})"
    )
    print(
        f"verify: ondeck / pg_restore = {v['ratio_of_medians']:.3f} (goal <= 1.2: {'met' if v['met'] else 'MISSED'})"
    )
    print(
        f"sqlite writer p99: {lite['without_backup']['p99_ms']:.2f} ms alone, "
        f"{lite['with_backups_running']['p99_ms']:.2f} ms with backups running"
    )
    out = save_results("backup", vars(args), results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
