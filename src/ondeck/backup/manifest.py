"""The manifest stored beside each backup file: what was taken, and whether a restore proved it.

Written by `runner` when a backup is whole, rewritten by `verify`; read by
`ondeck backup list` and the status. A value crossing the disk boundary: pydantic.
"""

from __future__ import annotations

import datetime
import secrets
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class EngineKind(StrEnum):
    """What was dumped."""

    SQLITE = "sqlite"
    POSTGRES = "postgres"


class Figures(BaseModel):
    """Row counts per table and a content checksum: captured at backup time, compared at restore."""

    model_config = ConfigDict(frozen=True)

    tables: dict[str, int]
    checksum: str


class Manifest(BaseModel):
    """One backup. `verified` is None until verification ran, then its verdict."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    engine: EngineKind
    created: datetime.datetime
    revision: str | None = None
    file: str
    size: int
    sha256: str
    dump_seconds: float
    figures: Figures
    location: str | None = Field(None, description="Where the storage keeps it (restic snapshot).")
    verified: bool | None = None
    verified_at: datetime.datetime | None = None
    verify_seconds: float | None = None
    verify_error: str | None = None

    def summary(self) -> dict[str, object]:
        """The stable `backup list --json` object."""
        return {
            "id": self.id,
            "name": self.name,
            "engine": self.engine.value,
            "created": self.created.isoformat(),
            "size": self.size,
            "sha256": self.sha256,
            "verified": self.verified,
            "verified_at": self.verified_at.isoformat() if self.verified_at else None,
            "verify_error": self.verify_error,
            "revision": self.revision,
            "tables": self.figures.tables,
        }


def new_id(now: datetime.datetime) -> str:
    """Sortable by time, unique: 20240301T030000Z-1a2b3c."""
    return f"{now.astimezone(datetime.UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
