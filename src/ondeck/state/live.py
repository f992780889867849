"""The live state as the planner sees it: instances, their phase and readiness.

The controller builds this from its instance records, the runtime's
observations and the probes' verdicts; the planner only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    """Where an instance is in its life, as far as planning cares."""

    RUNNING = "running"  # its process is alive (ready or not)
    EXITED = "exited"  # its process ended on its own; awaiting restart or removal
    STOPPING = "stopping"  # we asked it to stop; it no longer counts


@dataclass(frozen=True)
class LiveInstance:
    id: str
    service: str
    fingerprint: str
    revision: str
    phase: Phase
    ready: bool = False  # running and its health check passes (or it has none)
    failing: bool = False  # running but its health check fails past the threshold
    pid: int | None = None
    port: int | None = None
    restarts: int = 0
    failures: int = 0  # consecutive crashes, drives the backoff
    exit_code: int | None = None
    started_at: float | None = None
    exited_at: float | None = None
    last_error: str | None = None
    drift: str | None = None  # changed by hand since it started: replaced (or reported)
    code_revision: str | None = None  # the commit its code came from (`source:` or the spec's)


@dataclass(frozen=True)
class Live:
    env: str
    instances: tuple[LiveInstance, ...]

    def of(self, service: str) -> list[LiveInstance]:
        return [i for i in self.instances if i.service == service]

    @property
    def services(self) -> frozenset[str]:
        return frozenset(i.service for i in self.instances)
