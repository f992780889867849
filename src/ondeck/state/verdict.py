"""How an open sync ends: the verdict, a pure function of what is known.

`verdict(...)` reads the desired fingerprints, the live instances, the
releases in flight and where the plan stands, and answers a `SyncVerdict`:
Succeeded, Failed (a crash loop, a deadline passed) or Aborted (a release
stopped), or `CONTINUE` (the named no-op: the sync goes on). The environment
carries it out. `analysis_step` is the bookkeeping of one analysis figure on
a release's `Progress`. No I/O, no clock: time comes in as `now`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ondeck.state import rollout
from ondeck.state.lifecycle import SyncResult
from ondeck.state.live import Live
from ondeck.state.rollout import Progress, Stage

CRASH_LOOP_FAILURES = 3  # a new release whose instance crashed this often fails its sync
PROGRESS_DEADLINE = 600.0  # a sync still not done after this long has failed


@dataclass(frozen=True)
class SyncVerdict:
    """A sync's result and why; `result` None means it is not over (see CONTINUE)."""

    result: SyncResult | None
    reason: str | None = None

    @property
    def final(self) -> bool:
        return self.result is not None


CONTINUE = SyncVerdict(None)  # nothing to decide yet: live is still converging
SUCCEEDED = SyncVerdict(SyncResult.SUCCEEDED)


def verdict(
    current: Mapping[str, str],
    live: Live,
    releases: Mapping[str, Progress],
    done: bool,
    waiting: Sequence[str],
    started: float,
    now: float,
    deadline: float = PROGRESS_DEADLINE,
    deadlines: Mapping[str, float] | None = None,
) -> SyncVerdict:
    """The verdict on an open sync.

    `current` maps each desired service to its fingerprint; `done` and
    `waiting` are the plan's. A done plan succeeds unless the release it
    reached was aborted; an unfinished one fails when an instance of the new
    release crash-loops or when a deadline has passed: a service's own (its
    `rollout.deadline`, from `deadlines`) for what it waits on, `deadline` for
    a reason that names no service.
    """
    if done:
        aborted = [
            p
            for p in releases.values()
            if p.stage is Stage.ABORTED and current.get(p.service) == p.canary
        ]
        if aborted:
            return SyncVerdict(SyncResult.ABORTED, f"{aborted[0].service}: {aborted[0].reason}")
        return SUCCEEDED
    looping = [
        i
        for i in live.instances
        if current.get(i.service) == i.fingerprint and i.failures >= CRASH_LOOP_FAILURES
    ]
    if looping:
        return SyncVerdict(
            SyncResult.FAILED, f"{looping[0].id} is crash-looping: {looping[0].last_error}"
        )
    late: dict[float, list[str]] = {}
    for reason in waiting:
        service = _service_of(reason, current)
        limit = (deadlines or {}).get(service, deadline) if service else deadline
        if now - started > limit:
            late.setdefault(limit, []).append(reason)
    if late:
        limit = min(late)
        return SyncVerdict(
            SyncResult.FAILED, f"not done after {limit:.0f}s: {'; '.join(late[limit])}"
        )
    if not waiting and now - started > deadline:
        return SyncVerdict(SyncResult.FAILED, f"not done after {deadline:.0f}s")
    return CONTINUE


def _service_of(reason: str, services: Mapping[str, str]) -> str | None:
    """The service a plan's waiting reason is about (`web: ...`, or an instance id `web-...`)."""
    named = [s for s in services if reason.startswith((f"{s}:", f"{s}-"))]
    return max(named, key=len, default=None)


def analysis_step(progress: Progress, ok: bool, reason: str, limit: int, now: float) -> Progress:
    """One analysis figure on a release: a bad one counts, past `limit` the release aborts."""
    if ok:
        return progress
    progress = replace(progress, failures=progress.failures + 1)
    if progress.failures > limit:
        return rollout.abort(progress, f"analysis: {reason}", now)
    return progress
