"""The router's access log: one JSON line per answered request, in a rotated file.

client.py appends a tuple of raw values per request (no formatting on the
request path); the sweeper (server.py, 4 times a second) hands the batch to a
writer thread, which formats the lines, appends them to STATE_DIR/logs/
access.log and rotates it by size. `ondeck logs SERVICE --access` reads the
files (commands/access.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from ondeck.router.table import Backend

log = logging.getLogger("ondeck.router")

MAX_BYTES = 64 << 20  # a file is rotated past this size
KEEP = 3  # access.log.1 .. access.log.3 are kept

# (started monotonic, pool, backend or None, method, path, status, bytes, duration,
#  upstream time or -1, error or None)
Record = tuple[float, str, Backend | None, bytes, str, int, int, float, float, str | None]


def log_path(state_dir: Path, worker: int = 0) -> Path:
    """Each router process writes its own file (workers never share one)."""
    name = "access.log" if worker == 0 else f"access.w{worker}.log"
    return state_dir / "logs" / name


def line(record: Record, wall_offset: float) -> dict[str, Any]:
    """The JSON object of one record; `wall_offset` turns monotonic time into Unix time."""
    started, pool, backend, method, path, status, size, duration, upstream, error = record
    env, _, service = pool.rpartition("/")
    when = dt.datetime.fromtimestamp(started + wall_offset, dt.UTC)
    return {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "env": env or None,
        "service": service or None,
        "version": (backend.version or None) if backend else None,
        "release": (backend.release or None) if backend else None,
        "instance": backend.id if backend else None,
        "method": method.decode("latin-1"),
        "path": path,
        "status": status,
        "bytes": size,
        "duration_ms": round(duration * 1e3, 3),
        "upstream_ms": round(upstream * 1e3, 3) if upstream >= 0 else None,
        "error": error,
    }


class AccessLog:
    """Buffers records on the event loop; a daemon thread writes and rotates the file."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.records: list[Record] = []
        self._batches: queue.SimpleQueue[list[Record] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="access-log", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Hand what was recorded to the writer (called by the sweeper)."""
        if self.records:
            batch, self.records = self.records, []
            self._batches.put(batch)

    def close(self) -> None:
        """Write what is buffered and stop the writer."""
        self.flush()
        self._batches.put(None)
        self._thread.join(timeout=10)

    def _write_loop(self) -> None:
        out: TextIO | None = None
        failing = False
        while (batch := self._batches.get()) is not None:
            try:
                if out is None:
                    out = self._open()
                offset = time.time() - time.monotonic()
                out.write("".join(json.dumps(line(r, offset)) + "\n" for r in batch))
                out.flush()
                if out.tell() > self.max_bytes:
                    out.close()
                    out = None
                    self._rotate()
                failing = False
            except OSError as exc:  # a full disk: drop lines, never stop serving
                if not failing:
                    log.error("access log %s: %s; lines are dropped until it works", self.path, exc)
                failing = True
                if out is not None:
                    with contextlib.suppress(OSError):
                        out.close()
                    out = None
        if out is not None:
            out.close()

    def _open(self) -> TextIO:
        """Append to the file, created 0600: paths and addresses are the users'."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return open(fd, "a", encoding="utf-8")

    def _rotate(self) -> None:
        """access.log -> access.log.1 -> ... -> access.log.KEEP (dropped)."""
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
