"""Store: a writer killed with SIGKILL mid-loop loses no committed row.

A real child process writes in a tight loop and reports each committed sync id
on stdout; we kill -9 it while it writes, then reopen the database ourselves.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from ondeck.store import Store

WRITER = """
import sys
from pathlib import Path
from ondeck.store import InstanceRecord, Store

store = Store(Path(sys.argv[1]))
while True:
    sid = store.begin_sync("production", "rev", "ann", "msg", "poll", 1.0)
    store.add_sync_actions(sid, [f"start web-{sid}", f"stop web-{sid - 1}"])
    store.put_instance(InstanceRecord(
        id=f"web-{sid}", app="shop", env="production", service="web", fingerprint="fp",
        revision="r", release_dir="/r", log_path="/l", created_at=float(sid),
    ))
    store.events_add("production", "web", "restart", f"web-{sid}", float(sid))
    store.finish_sync(sid, "Succeeded", 2.0)
    print(sid, flush=True)
"""

ROWS_BEFORE_KILL = 1000
DEADLINE_SECONDS = 60.0


def wait_for_rows(store: Store, count: int, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while len(store.history(limit=count)) < count:
        assert child.poll() is None, f"writer exited early with {child.returncode}"
        assert time.monotonic() < deadline, f"fewer than {count} syncs within the deadline"
        time.sleep(0.01)  # polling interval, not a wait for an outcome


def test_kill_9_loses_no_committed_write(tmp_path: Path) -> None:
    db_path = tmp_path / "state" / "ondeck.db"
    report = tmp_path / "committed.txt"
    with Store(db_path) as store, report.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db_path)], stdout=out, stderr=subprocess.PIPE
        )
        try:
            wait_for_rows(store, ROWS_BEFORE_KILL, child)
        finally:
            child.send_signal(signal.SIGKILL)
            _, stderr = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, stderr.decode()

    text = report.read_text()
    lines = text.splitlines()
    if not text.endswith("\n"):  # killed mid-print: the last id may be cut short
        lines = lines[:-1]
    committed = [int(line) for line in lines]
    # Of the rows seen, one sync may have been open and one finished but not yet printed.
    assert len(committed) >= ROWS_BEFORE_KILL - 2

    with Store(db_path) as store:
        assert store._db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        syncs = {s.id: s for s in store.history(limit=len(committed) + 10)}
        instances = {i.id for i in store.instances(env="production")}
        events = {e["message"] for e in store.events(limit=len(committed) + 10)}
    for sid in committed:
        assert syncs[sid].result == "Succeeded"
        assert syncs[sid].actions == [f"start web-{sid}", f"stop web-{sid - 1}"]
        assert f"web-{sid}" in instances
        assert f"web-{sid}" in events
