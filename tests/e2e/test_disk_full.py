"""A full disk under the state dir: instances are still restarted, the status says why
writes are held, and they are written once there is room again.

On 2026-12-01 the SQLite write in the instance-exit handler crashed the
controller, and crashed instances stayed down. The state dir here is a small
tmpfs mounted by the test (it runs as root, as `make test` does), filled up
with a file; the app under test writes nothing, so only ondeck meets the full disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Ondeck, Repo, wait_for

QUIET_APP = """\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # nothing written: the disk is full

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""
SPEC = """\
app: shop
services:
  web:
    command: ["python3", "quiet.py"]
    port: true
    health: {http: /healthz, interval: 1s}
    stop: {grace: 5s}
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/state as a 64 MiB tmpfs (needs root, as `make test` runs)."""
    state = tmp_path / "state"
    state.mkdir()
    assert os.geteuid() == 0, "the disk-full test mounts a tmpfs: run it as root (make test does)"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(state)], check=True)
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def _fill(disk: Path) -> Path:
    """A file as large as the disk allows, down to the last block."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def _store(od: Ondeck) -> dict[str, Any]:
    """The `store` part of GET /api/v1/status (`status --json` shows environments only)."""
    url = json.loads((od.state_dir / "api.json").read_text())["url"]
    token = (od.state_dir / "token").read_text().strip()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as api:
        store: dict[str, Any] = api.get("/api/v1/status").raise_for_status().json()["store"]
    return store


def _web(od: Ondeck) -> dict[str, Any]:
    web = od.service("web")
    assert web is not None and web["instances"]
    return dict(web["instances"][0])


def test_a_full_disk_holds_writes_but_not_restarts(
    repo: Repo, ondeck: Callable[..., Ondeck], small_disk: Path
) -> None:
    repo.write("quiet.py", QUIET_APP)
    sha = repo.commit("quiet web", SPEC)
    od = ondeck(repo.path)
    od.wait_synced(sha, timeout=60)
    first = _web(od)

    filler = _fill(small_disk)
    os.kill(int(first["pid"]), signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        inst = _web(od)
        return inst if inst["pid"] != first["pid"] and inst["health"] == "Healthy" else None

    again = wait_for(restarted, "the killed instance to be restarted on a full disk", 60)
    assert od.proc is not None and od.proc.poll() is None, od.log()  # the controller lives
    error = wait_for(lambda: _store(od)["error"], "the full disk in status", 30)
    assert "ondeck.db" in error and "held in memory" in error
    assert _store(od)["held_writes"] > 0
    assert "state dir: cannot write ondeck.db" in od.cli("status").stdout

    filler.unlink()
    wait_for(lambda: _store(od)["held_writes"] == 0, "held writes written", 60)
    assert _store(od)["error"] is None
    db = sqlite3.connect(f"file:{small_disk / 'ondeck.db'}?mode=ro", uri=True)
    rows = [json.loads(d) for (d,) in db.execute("SELECT data FROM instances")]
    db.close()
    assert any(r["id"] == again["id"] and r["pid"] == again["pid"] for r in rows), rows
    assert "cannot write" in od.log() and "writable again" in od.log()
