"""Files that matter, written whole: a temp file beside the target, fsynced, renamed.

Every file ondeck keeps (router.json, keys and certificates, the secret store,
the API token, unit files, rendered manifests) goes through `write_atomic`, so a
crash leaves the old file or the new one, never half of either, and a private
file is never readable by others, not even for the instant before a chmod.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace `path` with `data`, mode `mode` from the first byte; durable once it returns."""
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
