"""Lifecycles as enums with explicit transitions: instances, probes, syncs.

The supervisor moves an instance and its probe through these states only by
`transition`, which refuses a move the tables do not allow (a bug, not a user
error). `Trigger` and `SyncResult` are what the history records. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar


class InstanceState(StrEnum):
    """Where one instance's record is in its life (stored, so the values are a contract)."""

    LAUNCHING = "launching"  # recorded; its process is not known to exist yet
    RUNNING = "running"  # its process lives (ready or not: see ProbeState)
    EXITED = "exited"  # its process ended on its own; awaiting a restart or removal
    STOPPING = "stopping"  # we asked it to stop; the record goes when the process has


class ProbeState(StrEnum):
    """What the health checks say of a running instance (in memory only)."""

    PENDING = "pending"  # not judged yet: starting, or not running
    READY = "ready"  # the check passes (or there is none)
    FAILING = "failing"  # the check failed past its threshold


class Trigger(StrEnum):
    """Why a sync began; history shows it."""

    STARTUP = "startup"
    POLL = "poll"
    CLI = "cli"
    ROLLBACK = "rollback"
    WEBHOOK = "webhook"
    SELF_HEAL = "self-heal"
    UI = "ui"  # the dashboard's Sync button
    RESTORE = "restore"  # `ondeck backup restore`


class SyncResult(StrEnum):
    """How a sync ended (Argo CD's vocabulary)."""

    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ABORTED = "Aborted"


class IllegalTransition(Exception):
    """A lifecycle move its table forbids: a bug in the caller."""


L, R, X, S = (
    InstanceState.LAUNCHING,
    InstanceState.RUNNING,
    InstanceState.EXITED,
    InstanceState.STOPPING,
)
INSTANCE_TRANSITIONS: Mapping[InstanceState, frozenset[InstanceState]] = {
    L: frozenset({R, X, S}),  # spawned | could not spawn (or died while we were down) | stopped
    R: frozenset({R, X, S}),  # adopted again | crashed | asked to stop
    X: frozenset({R, X, S}),  # restarted | restart failed to spawn | removed
    S: frozenset({S}),  # a stop is final; the record is deleted when the process has gone
}

P, OK, BAD = ProbeState.PENDING, ProbeState.READY, ProbeState.FAILING
PROBE_TRANSITIONS: Mapping[ProbeState, frozenset[ProbeState]] = {
    P: frozenset({P, OK, BAD}),  # first verdict; spawned again
    OK: frozenset({OK, BAD, P}),  # failed past its threshold | exited, stopped or respawned
    BAD: frozenset({BAD, OK, P}),  # recovered | exited, stopped or respawned
}

_E = TypeVar("_E", InstanceState, ProbeState)


def transition(current: _E, target: _E) -> _E:
    """`target`, if the table allows moving there from `current`; else IllegalTransition."""
    table: Mapping[_E, frozenset[_E]] = (
        INSTANCE_TRANSITIONS if isinstance(current, InstanceState) else PROBE_TRANSITIONS  # type: ignore[assignment]
    )
    if target not in table[current]:
        raise IllegalTransition(f"{type(current).__name__}: {current} -> {target} is not allowed")
    return target
