"""What an engine does: dump a live database, prove a dump in a scratch target, restore it.

`sqlite.SqliteEngine` and `postgres.PostgresEngine` implement it; the backup
runner and verification only see this protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ondeck.backup.manifest import EngineKind, Figures


class Engine(Protocol):
    """One database. Every method raises `BackupFailure` with a reason a user can act on."""

    kind: EngineKind
    suffix: str

    def dump(self, dest: Path) -> Figures:
        """Write a consistent copy to `dest`; the figures describe exactly that copy."""
        ...

    def prove(self, dump: Path, scratch: Path) -> Figures:
        """Restore `dump` into a throwaway target (files under `scratch`), check it, count it."""
        ...

    def restore(self, dump: Path) -> None:
        """Replace the live database's content with `dump`."""
        ...
