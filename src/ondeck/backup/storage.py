"""Where backups live: a local directory (default) or a restic repository.

Local: each backup is `ID.SUFFIX` plus `ID.json` (its manifest). The dump is
written as `.partial-ID.SUFFIX`, synced and renamed; the manifest is written
last the same way, so a crash at any point leaves nothing that lists as a
backup, and `sweep` removes the leftovers. restic: the dump goes into the
repository (dedup, encryption, remote backends), the manifest stays in the
local index directory with the snapshot id; retention is `restic forget --prune`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Protocol

from pydantic import ValidationError

from ondeck.backup.manifest import Manifest
from ondeck.errors import BackupFailure

PARTIAL = ".partial-"


class Storage(Protocol):
    """Keeps backup files and their manifests."""

    index: Path

    def partial(self, backup_id: str, suffix: str) -> Path:
        """Where the engine writes a dump that is not a backup yet."""
        ...

    def commit(self, manifest: Manifest, partial: Path) -> Manifest:
        """Make the partial dump a listed backup (atomically)."""
        ...

    def fetch(self, manifest: Manifest, scratch: Path) -> Path:
        """A local path of the dump, checked against the manifest's sha256."""
        ...

    def remove(self, manifests: Sequence[Manifest]) -> None: ...


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(index: Path, manifest: Manifest) -> None:
    """`ID.json`, via a partial file renamed into place."""
    tmp = index / f"{PARTIAL}{manifest.id}.json"
    try:
        tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
        fsync_file(tmp)
        tmp.replace(index / f"{manifest.id}.json")
        _fsync_dir(index)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise BackupFailure(f"cannot write the manifest in {index}: {err.strerror}") from err


def list_manifests(index: Path) -> list[Manifest]:
    """Every whole backup, oldest first; a manifest that does not parse is skipped."""
    found: list[Manifest] = []
    if not index.is_dir():
        return found
    for path in index.glob("*.json"):
        if path.name.startswith(PARTIAL):
            continue
        try:
            found.append(Manifest.model_validate_json(path.read_text()))
        except (ValidationError, OSError):
            continue
    return sorted(found, key=lambda m: (m.created, m.id))


def sweep(index: Path) -> list[str]:
    """Remove what a crashed run left behind; returns the names removed."""
    removed = []
    for path in index.glob(f"{PARTIAL}*"):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


@contextlib.contextmanager
def locked(index: Path) -> Iterator[None]:
    """One backup, verify or restore at a time per backup name (across processes)."""
    index.mkdir(parents=True, exist_ok=True)
    with (index / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class LocalStorage:
    """A directory of `ID.SUFFIX` + `ID.json`."""

    def __init__(self, index: Path) -> None:
        self.index = index

    def partial(self, backup_id: str, suffix: str) -> Path:
        self.index.mkdir(parents=True, exist_ok=True)
        return self.index / f"{PARTIAL}{backup_id}{suffix}"

    def commit(self, manifest: Manifest, partial: Path) -> Manifest:
        try:
            fsync_file(partial)
            partial.replace(self.index / manifest.file)
        except OSError as err:
            partial.unlink(missing_ok=True)
            raise BackupFailure(f"cannot store the backup in {self.index}: {err.strerror}") from err
        try:
            write_manifest(self.index, manifest)
        except BackupFailure:
            (self.index / manifest.file).unlink(missing_ok=True)
            raise
        return manifest

    def fetch(self, manifest: Manifest, scratch: Path) -> Path:
        path = self.index / manifest.file
        if not path.is_file():
            raise BackupFailure(f"backup {manifest.id}: its file {path} is missing")
        if sha256_file(path) != manifest.sha256:
            raise BackupFailure(
                f"backup {manifest.id}: {path} is corrupted (sha256 differs from the manifest)"
            )
        return path

    def remove(self, manifests: Sequence[Manifest]) -> None:
        for manifest in manifests:
            (self.index / f"{manifest.id}.json").unlink(missing_ok=True)
            (self.index / manifest.file).unlink(missing_ok=True)


class ResticStorage:
    """A restic repository; the password comes from a secret or the environment."""

    def __init__(self, index: Path, repository: str, password: str) -> None:
        self.index = index
        self._repository = repository
        self._password = password

    def partial(self, backup_id: str, suffix: str) -> Path:
        self.index.mkdir(parents=True, exist_ok=True)
        return self.index / f"{PARTIAL}{backup_id}{suffix}"

    def commit(self, manifest: Manifest, partial: Path) -> Manifest:
        try:
            with partial.open("rb") as data:
                out = self._restic(
                    "backup", "--json", "--host", "ondeck", "--tag", f"ondeck-{manifest.name}",
                    "--stdin", "--stdin-filename", manifest.file, stdin=data,
                )  # fmt: skip
        finally:
            partial.unlink(missing_ok=True)
        snapshot = _snapshot_id(out)
        stored = manifest.model_copy(update={"location": snapshot})
        write_manifest(self.index, stored)
        return stored

    def fetch(self, manifest: Manifest, scratch: Path) -> Path:
        dest = scratch / manifest.file
        with dest.open("wb") as out:
            self._restic("dump", str(manifest.location), f"/{manifest.file}", stdout=out)
        if sha256_file(dest) != manifest.sha256:
            raise BackupFailure(
                f"backup {manifest.id}: the copy in the restic repository is corrupted "
                "(sha256 differs from the manifest)"
            )
        return dest

    def remove(self, manifests: Sequence[Manifest]) -> None:
        snapshots = [m.location for m in manifests if m.location]
        if snapshots:
            self._restic("forget", "--prune", *snapshots)
        for manifest in manifests:
            (self.index / f"{manifest.id}.json").unlink(missing_ok=True)

    def init(self) -> None:
        """Create the repository if it does not exist yet."""
        code, _, _ = self._run("cat", "config", stdout=subprocess.DEVNULL)
        if code != 0:
            self._restic("init")

    def _restic(
        self, *args: str, stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None
    ) -> str:
        code, out, err = self._run(*args, stdin=stdin, stdout=stdout)
        if code != 0:
            if "locked" in err:
                raise BackupFailure(f"the restic repository is locked: {err}")
            raise BackupFailure(f"restic {args[0]} failed (exit {code}): {err}")
        return out

    def _run(
        self, *args: str, stdin: IO[bytes] | None = None, stdout: IO[bytes] | int | None = None
    ) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        env["RESTIC_REPOSITORY"] = self._repository
        env["RESTIC_PASSWORD"] = self._password  # the child's environment only, never argv
        env["RESTIC_CACHE_DIR"] = str(self.index / ".restic-cache")
        try:
            result = subprocess.run(
                ["restic", "--quiet", *args],
                env=env,
                stdin=stdin,
                stdout=stdout if stdout is not None else subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
            )
        except FileNotFoundError as err:
            raise BackupFailure(
                "restic is not installed: install the Debian package restic"
            ) from err
        out = result.stdout.decode(errors="replace") if result.stdout else ""
        err_text = " ".join(result.stderr.decode(errors="replace").split())[-400:]
        return result.returncode, out, err_text


def _snapshot_id(output: str) -> str:
    for line in output.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("message_type") == "summary":
                return str(event["snapshot_id"])
    raise BackupFailure("restic backup did not report a snapshot id")
