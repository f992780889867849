"""Take, prove and restore one backup: the steps in order, each failure a `BackupFailure`.

Called by the CLI (offline, for tests and scripts) and by the controller's
backup service (scheduled, before a deploy, on an API call), always in a worker
thread: a backup never blocks the reconcile loop. One run at a time per
backup (a file lock), so a controller and a CLI never interleave.
"""

from __future__ import annotations

import datetime
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ondeck.backup import retention
from ondeck.backup.engines import Engine
from ondeck.backup.manifest import Manifest, new_id
from ondeck.backup.storage import (
    Storage,
    list_manifests,
    locked,
    sha256_file,
    sweep,
    write_manifest,
)
from ondeck.errors import BackupFailure

Clock = Callable[[], datetime.datetime]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Target:
    """One named backup of one environment: what to dump, where to keep it, how to retain it."""

    name: str
    engine: Engine
    storage: Storage
    policy: retention.Policy
    verify: bool = True


def backups(target: Target) -> list[Manifest]:
    """Whole backups, oldest first."""
    return list_manifests(target.storage.index)


def last_verified(manifests: list[Manifest]) -> Manifest | None:
    proven = [m for m in manifests if m.verified]
    return proven[-1] if proven else None


def take(
    target: Target, revision: str | None = None, clock: Clock = _now, *, retain: bool = True
) -> Manifest:
    """Dump, store, prove (when `verify`), apply retention (unless not `retain`); the manifest."""
    with locked(target.storage.index):
        sweep(target.storage.index)
        created = clock()
        backup_id = new_id(created)
        partial = target.storage.partial(backup_id, target.engine.suffix)
        started = time.monotonic()
        try:
            figures = target.engine.dump(partial)
            size, digest = partial.stat().st_size, sha256_file(partial)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if size == 0:
            partial.unlink(missing_ok=True)
            raise BackupFailure(f"backup {target.name}: the dump is empty")
        manifest = Manifest(
            id=backup_id,
            name=target.name,
            engine=target.engine.kind,
            created=created,
            revision=revision,
            file=f"{backup_id}{target.engine.suffix}",
            size=size,
            sha256=digest,
            dump_seconds=round(time.monotonic() - started, 3),
            figures=figures,
        )
        manifest = target.storage.commit(manifest, partial)
        if target.verify:
            manifest = _prove(target, manifest, clock)
        if retain:
            _retain(target)
        return manifest


def verify(target: Target, backup_id: str | None = None, clock: Clock = _now) -> Manifest:
    """Prove one backup (the newest unless `backup_id`) and record the verdict."""
    with locked(target.storage.index):
        return _prove(target, pick(target, backup_id, verified_only=False), clock)


def restore(target: Target, backup_id: str | None = None, clock: Clock = _now) -> Manifest:
    """Put a backup (the newest verified unless `backup_id`) back into the live database."""
    with locked(target.storage.index):
        manifest = pick(target, backup_id, verified_only=backup_id is None)
        with tempfile.TemporaryDirectory(prefix="ondeck-restore-") as scratch:
            target.engine.restore(target.storage.fetch(manifest, Path(scratch)))
        return manifest


def pick(target: Target, backup_id: str | None, *, verified_only: bool) -> Manifest:
    """The backup `backup_id`, else the newest (verified, when `verified_only`) one."""
    manifests = backups(target)
    if backup_id is not None:
        for manifest in manifests:
            if manifest.id == backup_id:
                return manifest
        raise BackupFailure(
            f"backup {target.name} has no backup {backup_id!r}: see `ondeck backup list`"
        )
    if verified_only:
        found = last_verified(manifests)
        if found is None:
            raise BackupFailure(
                f"backup {target.name} has no verified backup: run `ondeck backup verify`, "
                "or name one with --id"
            )
        return found
    if not manifests:
        raise BackupFailure(f"backup {target.name} has no backups yet: run `ondeck backup run`")
    return manifests[-1]


def _prove(target: Target, manifest: Manifest, clock: Clock) -> Manifest:
    started = time.monotonic()
    error: str | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="ondeck-verify-") as scratch:
            dump = target.storage.fetch(manifest, Path(scratch))
            restored = target.engine.prove(dump, Path(scratch))
        if restored.tables != manifest.figures.tables:
            error = f"row counts differ after restore: {_differences(manifest.figures.tables, restored.tables)}"
        elif restored.checksum != manifest.figures.checksum:
            error = "the restored content's checksum differs from the one taken at backup time"
    except BackupFailure as err:
        error = str(err)
    proven = manifest.model_copy(
        update={
            "verified": error is None,
            "verified_at": clock(),
            "verify_seconds": round(time.monotonic() - started, 3),
            "verify_error": error,
        }
    )
    write_manifest(target.storage.index, proven)
    if error is not None:
        raise BackupFailure(f"backup {target.name} {manifest.id} failed verification: {error}")
    return proven


def _differences(expected: dict[str, int], got: dict[str, int]) -> str:
    names = sorted(set(expected) | set(got))
    return ", ".join(
        f"{n}: {expected.get(n, 'absent')} -> {got.get(n, 'absent')}"
        for n in names
        if expected.get(n) != got.get(n)
    )[:400]


def _retain(target: Target) -> None:
    manifests = backups(target)
    proven = last_verified(manifests)
    snapshots = [
        retention.Snapshot(m.id, m.created.astimezone()) for m in manifests
    ]  # local calendar days
    decision = retention.decide(snapshots, target.policy, protect={proven.id} if proven else ())
    gone = {s.id for s in decision.remove}
    if gone:
        target.storage.remove([m for m in manifests if m.id in gone])
