"""One environment's state on this host: what it should run, what runs, the sync under way.

The controller keeps one `EnvState` per environment it was given; report.py
reads it to build the status document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ondeck.rollout.analysis import Measurement
from ondeck.source.git import CommitInfo
from ondeck.state.desired import Desired
from ondeck.state.lifecycle import SyncResult, Trigger
from ondeck.state.rollout import Progress, Traffic
from ondeck.supervisor import Supervisor


@dataclass
class Operation:
    """A sync in progress: from a new desired state until live matches it."""

    id: int
    revision: str
    trigger: Trigger
    started: float


@dataclass
class EnvState:
    name: str
    overlay: str | None
    supervisor: Supervisor | None = None
    desired: Desired | None = None
    commit: CommitInfo | None = None
    candidate: CommitInfo | None = None  # a newer revision not applied (auto-sync off)
    seen: str | None = None
    error: str | None = None
    error_commit: CommitInfo | None = None
    op: Operation | None = None
    last_result: SyncResult | None = None
    wake_at: float | None = None
    manual: bool = False  # a person asked for a sync: act even with self-heal off
    releases: dict[str, Progress] = field(default_factory=dict)  # blue/green, canary in flight
    traffic: dict[str, Traffic] = field(default_factory=dict)
    measurements: dict[str, Measurement] = field(default_factory=dict)
    snapshots: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
