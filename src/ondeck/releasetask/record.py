"""The record of a release task and what to do next: a pure decision.

"Once" means: a release whose task succeeded never runs it again; an attempt
whose process still runs (after a controller restart) is waited for, not
started twice; an attempt that ended leaves its exit code in a result file,
which is collected; only an attempt provably dead without a result (a host
reboot, a kill of the whole process group) or a failed one is run again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any


class TaskState(StrEnum):
    STARTED = "started"  # an attempt was spawned; its record is written before the spawn returns
    SUCCEEDED = "succeeded"  # exit 0: never run again for this release
    FAILED = "failed"  # non-zero, timeout, killed: a retry runs it again


class Next(StrEnum):
    SKIP = "skip"  # succeeded before
    WAIT = "wait"  # an attempt is still running: adopt it
    COLLECT = "collect"  # an attempt ended and wrote its result: take it
    RUN = "run"  # never ran, failed, or was interrupted without a result


@dataclass(frozen=True)
class TaskRecord:
    """One release's task, as stored (kv `release-task/APP/ENV/SERVICE/FINGERPRINT`)."""

    state: TaskState
    attempt: int
    started_at: float
    deadline: float  # absolute: a controller restarted mid-task keeps the same limit
    pid: int = 0
    start_ticks: int = 0
    exit_code: int | None = None
    reason: str = ""
    finished_at: float | None = None

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "state": self.state.value}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TaskRecord:
        data: dict[str, Any] = json.loads(text)
        return cls(**{**data, "state": TaskState(data["state"])})

    def finished(self, ok: bool, exit_code: int | None, reason: str, at: float) -> TaskRecord:
        state = TaskState.SUCCEEDED if ok else TaskState.FAILED
        return replace(self, state=state, exit_code=exit_code, reason=reason, finished_at=at)


def decide(record: TaskRecord | None, alive: bool, has_result: bool) -> Next:
    """What to do about a release's task given its record, whether the recorded attempt's
    process still runs, and whether that attempt left a result file."""
    if record is None or record.state is TaskState.FAILED:
        return Next.RUN
    if record.state is TaskState.SUCCEEDED:
        return Next.SKIP
    if alive:
        return Next.WAIT
    return Next.COLLECT if has_result else Next.RUN
