"""The router's access log: one JSON line per answered request, in a rotated file.

client.py appends a tuple of raw values per request (no formatting on the
request path); the sweeper (server.py, 4 times a second) formats the batch
on the event loop with cached pieces (a few microseconds a line) and hands
the text to a writer thread that only writes and rotates (a thread that
formatted would hold the GIL against the event loop: a third of the
throughput in bench/router.py). `ondeck logs SERVICE --access` reads the files
(commands/access.py).
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
from json.encoder import encode_basestring_ascii as _quote  # C: JSON string with quotes
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


_LINE = (
    '{"time":"%s.%03dZ",%s,"method":%s,"path":%s,"status":%d,"bytes":%d,'
    '"duration_ms":%.3f,"upstream_ms":%s,"error":%s}\n'
)


class Formatter:
    """Records to JSON lines, fast: labels, methods and the second's text are cached."""

    def __init__(self) -> None:
        self._labels: dict[tuple[str, str, str, str], str] = {}
        self._methods: dict[bytes, str] = {}
        self._second = -1
        self._second_text = ""

    def lines(self, batch: list[Record], wall_offset: float) -> str:
        out = []
        for started, pool, backend, method, path, status, size, duration, upstream, error in batch:
            wall = started + wall_offset
            second = int(wall)
            if second != self._second:
                self._second = second
                self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            out.append(
                _LINE
                % (
                    self._second_text,
                    int((wall - second) * 1000),
                    self._label(pool, backend),
                    self._method(method),
                    _quote(path),
                    status,
                    size,
                    duration * 1e3,
                    "%.3f" % (upstream * 1e3) if upstream >= 0 else "null",
                    "null" if error is None else _quote(error),
                )
            )
        return "".join(out)

    def _label(self, pool: str, backend: Backend | None) -> str:
        key = (pool, *((backend.id, backend.version, backend.release) if backend else ("", "", "")))
        text = self._labels.get(key)
        if text is None:
            if len(self._labels) > 4096:
                self._labels.clear()
            env, _, service = pool.rpartition("/")
            fields = {
                "env": env or None,
                "service": service or None,
                "version": key[2] or None,
                "release": key[3] or None,
                "instance": key[1] or None,
            }
            text = self._labels[key] = json.dumps(fields, separators=(",", ":"))[1:-1]
        return text

    def _method(self, method: bytes) -> str:
        text = self._methods.get(method)
        if text is None:
            if len(self._methods) > 64:
                self._methods.clear()
            text = self._methods[method] = _quote(method.decode("latin-1"))
        return text


def line(record: Record, wall_offset: float) -> dict[str, Any]:
    """The JSON object of one record, as a dict (what each written line parses to)."""
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
        self._formatter = Formatter()
        self._batches: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="access-log", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Format what was recorded and hand it to the writer (called by the sweeper)."""
        if self.records:
            batch, self.records = self.records, []
            offset = time.time() - time.monotonic()
            self._batches.put(self._formatter.lines(batch, offset))

    def close(self) -> None:
        """Write what is buffered and stop the writer."""
        self.flush()
        self._batches.put(None)
        self._thread.join(timeout=10)

    def _write_loop(self) -> None:
        out: TextIO | None = None
        failing = False
        while (text := self._batches.get()) is not None:
            try:
                if out is None:
                    out = self._open()
                out.write(text)
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
