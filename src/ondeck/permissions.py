"""Who may read the state dir: ondeck's own user, and a chosen group for the logs.

The state dir holds the db (history, tokens' hashes), instance logs (apps log
what they should not), the API token, and a copy of each release's
`ondeck.yaml`. It is 0700 and every file in it 0600; logs may be 0640 to the
group named by `ONDECK_LOG_GROUP` (e.g. `adm`, for a log shipper). `ondeck up`
calls `secure_state_dir` at start, which also fixes a state dir made by an
older ondeck (0755 dir, 0644 files); writers use `log_mode` / `PRIVATE_FILE`.
"""

from __future__ import annotations

import grp
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ondeck.errors import UserError

log = logging.getLogger("ondeck")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
LOG_GROUP_ENV = "ONDECK_LOG_GROUP"
# Trees of the state dir whose files are logs (group-readable when a log group is set).
_LOG_TREES = ("logs",)
# Trees left alone: app data (the app decides), releases (their modes are part of drift).
_SKIPPED_TREES = ("data", "releases")
_APPS = "apps"  # `ondeck up --host-file`: one state dir per app under it


@dataclass(frozen=True)
class LogAccess:
    """How log files and their directories are shared: with nobody, or with one group."""

    gid: int | None = None

    @property
    def file_mode(self) -> int:
        return PRIVATE_FILE if self.gid is None else 0o640

    @property
    def dir_mode(self) -> int:
        return PRIVATE_DIR if self.gid is None else 0o750


def log_access(environ: Mapping[str, str] = os.environ) -> LogAccess:
    """The log sharing `ONDECK_LOG_GROUP` asks for; an unknown group is a user error."""
    name = environ.get(LOG_GROUP_ENV, "").strip()
    if not name:
        return LogAccess()
    try:
        return LogAccess(grp.getgrnam(name).gr_gid)
    except KeyError as err:
        raise UserError(f"{LOG_GROUP_ENV}={name}: no such group on this host") from err


def secure_state_dir(state_dir: Path, access: LogAccess | None = None) -> list[Path]:
    """Make `state_dir` 0700 and its files 0600 (logs as `access` says); the paths fixed."""
    access = access or log_access()
    state_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    fixed = [p for p in [state_dir] if _chmod(p, PRIVATE_DIR)]
    for path, is_log in _walk(state_dir):
        if path.is_symlink():
            continue
        if is_log and access.gid is not None and _chgrp(path, access.gid):
            fixed.append(path)
        if path.is_dir():
            mode = access.dir_mode if is_log else PRIVATE_DIR
        else:
            mode = access.file_mode if is_log else PRIVATE_FILE
            mode |= stat.S_IMODE(path.lstat().st_mode) & stat.S_IXUSR  # keep scripts runnable
        if _chmod(path, mode):
            fixed.append(path)
    if fixed:
        log.info("state dir %s: made %d paths private to this user", state_dir, len(fixed))
    return fixed


def _walk(state_dir: Path) -> Iterator[tuple[Path, bool]]:
    """Every path ondeck wrote that holds something private, and whether it is a log.

    Releases are left as exported (their modes are part of drift detection;
    a new release's `ondeck.yaml` is written 0600 by `releases.prepare`), and
    app data as the app made it: the state dir's own 0700 closes both.
    """
    for child in state_dir.iterdir():
        if child.name in _SKIPPED_TREES:
            continue
        if child.name == _APPS and child.is_dir() and not child.is_symlink():
            yield from _walk_apps(child)
            continue
        yield child, child.name in _LOG_TREES
        if child.is_dir() and not child.is_symlink():
            for root, dirs, files in os.walk(child):
                for name in dirs + files:
                    yield Path(root) / name, child.name in _LOG_TREES


def _walk_apps(apps: Path) -> Iterator[tuple[Path, bool]]:
    """`ondeck up --host-file`: each app's state dir, walked by the same rules."""
    yield apps, False
    for app in apps.iterdir():
        if app.is_dir() and not app.is_symlink():
            yield app, False
            yield from _walk(app)


def _chmod(path: Path, mode: int) -> bool:
    """Set the permission bits of `path` (not through a link); True when they changed."""
    try:
        current = stat.S_IMODE(path.lstat().st_mode)
        if current == mode:
            return False
        os.chmod(path, mode, follow_symlinks=False)
        return True
    except FileNotFoundError:  # an instance's log rotated away as we walked
        return False


def _chgrp(path: Path, gid: int) -> bool:
    try:
        if path.lstat().st_gid == gid:
            return False
        os.chown(path, -1, gid, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
