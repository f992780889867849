"""Releases: an exported revision plus the output of its build step.

One immutable directory per (app, release key): services and environments
whose code, build argv and build environment are equal share it (the key is
`state.desired.release_key`). It is complete only once its marker is written
last, so a crash mid-export or mid-build leaves something `prepare`
recognises as incomplete and redoes; environments preparing the same release
at once take turns (one builds, the other finds it complete).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ondeck.errors import BuildError
from ondeck.runtime.logs import tail

MARKER = ".ondeck-release.json"
BUILD_LOG = ".ondeck-build.log"
SPEC_FILE = "ondeck.yaml"


class Exporter(Protocol):
    def export(self, rev: str, path: str, dest: Path) -> None: ...


SHARED = "_shared"  # not a DNS label: no environment can be named so


def release_dir(state_dir: Path, app: str, release: str) -> Path:
    """The directory of release `release` (a key) of `app`, shared by whoever runs it."""
    return state_dir / "releases" / app / SHARED / release


_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(dest: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(dest, threading.Lock())


def data_dir(state_dir: Path, app: str, env: str) -> Path:
    """The persistent data of an app in an environment (ONDECK_DATA_DIR), made 0700 if new.

    It exists before the first build, so a build step may use it too.
    """
    path = state_dir / "data" / app / env
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.chmod(0o700)  # mkdir's mode passes through the umask
    return path


def is_complete(dest: Path) -> bool:
    return (dest / MARKER).is_file()


def prepare(
    source: Exporter,
    revision: str,
    path: str,
    dest: Path,
    build: Sequence[str] | None,
    environ: Mapping[str, str],
    timeout: float = 1800.0,
) -> Path:
    """Make `dest` a complete release of `revision`; idempotent and crash-safe."""
    with _lock(dest):
        return _prepare(source, revision, path, dest, build, environ, timeout)


def _prepare(
    source: Exporter,
    revision: str,
    path: str,
    dest: Path,
    build: Sequence[str] | None,
    environ: Mapping[str, str],
    timeout: float,
) -> Path:
    if is_complete(dest):
        return dest
    if dest.exists():
        shutil.rmtree(dest)  # an earlier attempt died half-way: start over
    dest.parent.mkdir(parents=True, exist_ok=True)
    source.export(revision, path, dest)
    spec = dest / SPEC_FILE
    if spec.is_file() and not spec.is_symlink():
        spec.chmod(0o600)  # env values and routes: nobody else's business; before the manifest
    if build:
        _build(dest, build, environ, timeout)
    _write_marker(dest, revision, build)
    return dest


def _build(dest: Path, argv: Sequence[str], environ: Mapping[str, str], timeout: float) -> None:
    log_path = dest / BUILD_LOG
    started = time.monotonic()
    with log_path.open("ab") as log:
        try:
            proc = subprocess.run(
                list(argv),
                cwd=dest,
                env=dict(environ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                start_new_session=True,
            )
            code: int | None = proc.returncode
        except FileNotFoundError:
            log.write(f"ondeck: build command not found: {argv[0]}\n".encode())
            code = 127
        except subprocess.TimeoutExpired:
            log.write(f"ondeck: build timed out after {timeout:.0f}s\n".encode())
            code = None
    if code == 0:
        return
    log_tail = tail(log_path, 30)
    shutil.rmtree(dest, ignore_errors=True)  # never leave a half-built release to be used
    what = "timed out" if code is None else f"exited with code {code}"
    raise BuildError(
        f"build {' '.join(argv)!r} {what} after {time.monotonic() - started:.1f}s; "
        "fix the build and push a new commit",
        log_tail,
    )


def _write_marker(dest: Path, revision: str, build: Sequence[str] | None) -> None:
    tmp = dest / (MARKER + ".tmp")
    tmp.write_text(
        json.dumps(
            {
                "revision": revision,
                "build": list(build or []),
                "at": time.time(),
                "manifest": manifest(dest),
            }
        )
    )
    os.replace(tmp, dest / MARKER)


# Written by the running app itself, not drift: Python's bytecode caches.
IGNORED_DIRS = frozenset({"__pycache__"})
IGNORED_SUFFIXES = (".pyc",)


def _files(dest: Path) -> dict[str, os.stat_result]:
    found: dict[str, os.stat_result] = {}
    for root, dirs, names in os.walk(dest):
        dirs[:] = [d for d in dirs if d not in IGNORED_DIRS]
        for name in names:
            path = Path(root) / name
            rel = str(path.relative_to(dest))
            if rel in (MARKER, MARKER + ".tmp", BUILD_LOG) or name.endswith(IGNORED_SUFFIXES):
                continue
            found[rel] = path.lstat()
    return found


def _digest(path: Path) -> str:
    if path.is_symlink():
        return "link:" + os.readlink(path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(dest: Path) -> dict[str, list[Any]]:
    """Every file of a release: mode, size, mtime and content hash (for drift checks)."""
    return {
        rel: [st.st_mode, st.st_size, st.st_mtime_ns, _digest(dest / rel)]
        for rel, st in sorted(_files(dest).items())
    }


def drift(dest: Path) -> list[str]:
    """How a release directory differs from what was built: edits by hand, in short.

    Only files whose mode, size or mtime moved are hashed again, so the check
    stays cheap for large trees; a touch that changes no byte is not drift,
    and neither is a file the app adds at run time.
    """
    if not dest.is_dir():
        return ["the release directory was deleted"]  # its instances run from a ghost cwd
    try:
        recorded: dict[str, list[Any]] = json.loads((dest / MARKER).read_text())["manifest"]
    except FileNotFoundError:
        return [f"{MARKER} removed"]
    except (OSError, ValueError, KeyError):
        return []  # a release from before manifests: nothing to compare
    now = _files(dest)
    # New files are not drift: apps leave caches and logs beside their code, and
    # replacing an instance for that would only make it write them again.
    changes = [f"{rel} removed" for rel in sorted(set(recorded) - set(now))]
    for rel in sorted(set(now) & set(recorded)):
        mode, size, mtime, digest = recorded[rel]
        st = now[rel]
        if (st.st_mode, st.st_size, st.st_mtime_ns) == (mode, size, mtime):
            continue
        if st.st_mode != mode:
            changes.append(f"{rel} mode changed")
        elif _digest(dest / rel) != digest:
            changes.append(f"{rel} modified")
    return changes


def taint(dest: Path) -> Path:
    """Move a drifted release aside (running processes keep their cwd) for a fresh one."""
    if not dest.is_dir():
        return dest  # deleted by hand: nothing to move, the next start prepares it again
    aside = dest.with_name(f"{dest.name}.drifted-{int(time.time())}")
    dest.rename(aside)
    return aside


KEEP_RECENT = 3  # complete releases kept per service beyond the running ones: instant rollback


def prune(root: Path, keep: set[Path], recent: int = KEEP_RECENT) -> list[Path]:
    """Remove release dirs under `root` (…/SERVICE/FINGERPRINT) nothing needs any more.

    Kept: those in `keep` (running or desired) and, per service, the `recent`
    newest complete others, so a rollback finds its release already built.
    Incomplete leftovers and releases set aside as drifted go once unused.
    """
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for service_dir in root.iterdir():
        if service_dir.is_dir():
            removed += _prune_among(service_dir, keep, recent, locked=False)
    return removed


def prune_flat(root: Path, keep: set[Path], recent: int) -> list[Path]:
    """`prune` for shared releases (root/KEY): `recent` spares in all, newest first."""
    if not root.is_dir():
        return []
    return _prune_among(root, keep, recent, locked=True)


def _prune_among(parent: Path, keep: set[Path], recent: int, locked: bool) -> list[Path]:
    """Remove the release dirs under `parent` that are neither kept nor the `recent` newest
    complete spares. `locked`: a shared release is removed under its build lock."""
    releases = [r for r in parent.iterdir() if r.is_dir()]
    spare = sorted(
        (r for r in releases if r not in keep and is_complete(r) and ".drifted-" not in r.name),
        key=_built_at,
        reverse=True,
    )[:recent]
    removed = [r for r in releases if r not in keep and r not in spare]
    for release in removed:
        with _lock(release) if locked else contextlib.nullcontext():
            shutil.rmtree(release, ignore_errors=True)
    return removed


def _built_at(release: Path) -> float:
    try:
        return float(json.loads((release / MARKER).read_text()).get("at", 0.0))
    except (OSError, ValueError):
        return 0.0
