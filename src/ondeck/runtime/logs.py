"""Instance log files: size-based rotation and reading the last lines.

Instances append straight to their log (O_APPEND) and never reopen it, so the
controller rotates by copy-and-truncate; `tail` serves `ondeck logs` and the
log excerpts shown when an instance or build fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO

_CHUNK = 64 * 1024
_TAIL_BLOCK = 8 * 1024


def rotate(path: Path, max_bytes: int, keep: int) -> bool:
    """Rotate `path` into `path.1` (older ones shift up to `path.KEEP`) once it exceeds
    `max_bytes`; True if rotated. Lines a writer appends during the last instant
    between the final copy and the truncate are lost, as with logrotate's copytruncate."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    _shift(path, keep)
    if keep < 1:
        os.truncate(path, 0)
        return True
    staged = path.with_name(f"{path.name}.1.tmp")
    with path.open("rb") as source, staged.open("wb") as target:
        _copy_until_caught_up(source, target)
        # Right after the last copy, to keep the window for lost lines tiny.
        os.truncate(path, 0)
    staged.replace(_numbered(path, 1))
    return True


def _numbered(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _shift(path: Path, keep: int) -> None:
    """path.1 -> path.2 ... up to path.KEEP, which is overwritten (dropped)."""
    for n in range(keep - 1, 0, -1):
        older = _numbered(path, n)
        if older.exists():
            older.replace(_numbered(path, n + 1))


def _copy_until_caught_up(source: BinaryIO, target: BinaryIO) -> None:
    """Copy to the end, then again whatever the writer appended meanwhile."""
    while True:
        shutil.copyfileobj(source, target, _CHUNK)
        if os.fstat(source.fileno()).st_size <= source.tell():
            target.flush()
            return


def tail(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of `path` (joined by newlines, no trailing newline),
    reading at most `max_bytes` from its end; "" if the file does not exist."""
    if lines <= 0:
        return ""
    try:
        with path.open("rb") as file:
            data, at_start = _read_tail(file, lines, max_bytes)
    except FileNotFoundError:
        return ""
    found = data.decode(errors="replace").splitlines()
    if not at_start and found:
        found = found[1:]  # the first line was cut by where we started reading
    return "\n".join(found[-lines:])


def _read_tail(file: BinaryIO, lines: int, max_bytes: int) -> tuple[bytes, bool]:
    """Read backwards in blocks until `lines` whole lines are in hand or `max_bytes` read;
    also says whether the data starts at the beginning of the file."""
    end = file.seek(0, os.SEEK_END)
    start = end
    data = b""
    # One newline more than lines wanted: the line before them must be complete too.
    while start > 0 and end - start < max_bytes and data.count(b"\n") <= lines:
        step = min(_TAIL_BLOCK, start, max_bytes - (end - start))
        start -= step
        file.seek(start)
        data = file.read(step) + data
    return data, start == 0
