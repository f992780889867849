"""`ondeck logs SERVICE --access [-f]`: the router's access log, one line per request.

Reads the JSON lines the router writes to STATE_DIR/logs/access*.log (its own
file per worker, rotated to .1 .. .3; see router/accesslog.py) on this host,
keeps the service's (and environment's, and under a host file the app's: the
router names those pools APP/ENV/SERVICE) requests and prints them as columns.
With -f it follows the files, rotation included. Called by cli.py's `logs`.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ondeck.errors import UserError

FOLLOW_POLL = 0.2  # seconds between looks at the files while following


def show(
    state_dir: Path,
    service: str,
    env: str | None,
    lines: int,
    follow: bool,
    out: TextIO,
    app: str | None = None,
) -> None:
    """Print the last `lines` requests of `service`, then (with `follow`) new ones."""
    want = Want(service, env, app)
    logs = state_dir / "logs"
    current = sorted(logs.glob("access*.log"))
    if not current and not follow:
        raise UserError(
            f"no access log in {logs}: the router writes one once it serves requests "
            "(unless started with --no-access-log)"
        )
    last: deque[str] = deque(maxlen=max(lines, 0))
    for path in _oldest_first(logs):
        last.extend(_matching(_read_lines(path), want))
    for text in last:
        out.write(text + "\n")
    out.flush()
    if follow:
        _follow(logs, want, out)


def format_line(entry: dict[str, Any]) -> str:
    """`2026-12-02T01:53:00.123Z production/web 1.4.2 web-1 GET /cart 200 512B 3.2ms (up 2.9ms)`."""
    upstream = entry.get("upstream_ms")
    where = f"{entry.get('env') or '-'}/{entry.get('service') or '-'}"
    parts = [
        str(entry.get("time")),
        where,
        entry.get("version") or "-",
        entry.get("instance") or "-",
        str(entry.get("method")),
        str(entry.get("path")),
        str(entry.get("status")),
        f"{entry.get('bytes')}B",
        f"{entry.get('duration_ms')}ms",
    ]
    if upstream is not None:
        parts.append(f"(up {upstream}ms)")
    if entry.get("error"):
        parts.append(f"[{entry['error']}]")
    return " ".join(parts)


@dataclass(frozen=True)
class Want:
    """Which requests to show: a service's, of one environment and app if given."""

    service: str
    env: str | None = None
    app: str | None = None

    def wants(self, entry: dict[str, Any]) -> bool:
        """Whether `entry` is one of them; under a host file its env field is APP/ENV."""
        if entry.get("service") != self.service:
            return False
        app, _, env = str(entry.get("env") or "").rpartition("/")
        return (self.env is None or env == self.env) and (self.app is None or app == self.app)


def _matching(raw: Iterator[str], want: Want) -> Iterator[str]:
    for text in raw:
        try:
            entry = json.loads(text)
        except ValueError:
            continue  # a line cut by a crash
        if want.wants(entry):
            yield format_line(entry)


def _oldest_first(logs: Path) -> list[Path]:
    """Rotated files (highest number first), then the current ones."""
    rotated = sorted(logs.glob("access*.log.*"), key=lambda p: -_rotation(p))
    return [*rotated, *sorted(logs.glob("access*.log"))]


def _rotation(path: Path) -> int:
    suffix = path.name.rsplit(".", 1)[1]
    return int(suffix) if suffix.isdigit() else 0


def _read_lines(path: Path) -> Iterator[str]:
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            yield from (line.rstrip("\n") for line in f)
    except FileNotFoundError:
        return


def _follow(logs: Path, want: Want, out: TextIO) -> None:
    """Print lines appended from now on; a rotated file is reopened from its start."""
    positions = {p: (p.stat().st_ino, p.stat().st_size) for p in logs.glob("access*.log")}
    try:
        while True:
            time.sleep(FOLLOW_POLL)
            for path in sorted(logs.glob("access*.log")):
                positions[path] = _print_new(path, positions.get(path), want, out)
    except KeyboardInterrupt:
        sys.stdout.flush()


def _print_new(
    path: Path, seen: tuple[int, int] | None, want: Want, out: TextIO
) -> tuple[int, int]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return seen or (0, 0)
    start = 0
    if seen is not None and seen[0] == stat.st_ino and stat.st_size >= seen[1]:
        start = seen[1]
    if stat.st_size == start:
        return stat.st_ino, start
    with path.open("rb") as f:
        f.seek(start)
        chunk = f.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for its end
    texts = complete.decode("utf-8", "replace").splitlines()
    for text in _matching(iter(texts), want):
        out.write(text + "\n")
    out.flush()
    return stat.st_ino, start + len(complete)
