"""When a job is due: a pure decision from its spec, what it last did and the time.

The environment asks `due(...)` on every pass and sleeps until `next_slot`.
A slot is a point in time the job should start at (a cron match, or the last
slot plus `every`). Slots missed while the controller was down give one run
when it is back (trigger `catch-up`), not one per missed slot, as a
Kubernetes CronJob does with a starting deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo
from enum import StrEnum
from zoneinfo import ZoneInfo

from croniter import croniter

from ondeck.spec.model import Job

LATE = 60.0  # a run started more than this after its slot is a catch-up


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    CATCH_UP = "catch-up"
    MANUAL = "manual"


class Decision(StrEnum):
    WAIT = "wait"  # not due yet (a named no-op)
    START = "start"
    SKIP = "skip"  # due, but a run is still going and concurrency forbids a second
    REPLACE = "replace"  # due: stop the running one(s), then start


@dataclass(frozen=True)
class Due:
    decision: Decision
    slot: float  # the slot this decision consumes (the latest one passed), or the next one
    trigger: Trigger | None = None


def zone(job: Job) -> tzinfo | None:
    """The time zone cron is evaluated in: the job's, else the host's (None)."""
    return ZoneInfo(job.timezone) if job.timezone else None


def next_slot(job: Job, after: float) -> float:
    """The first slot strictly after `after` (epoch seconds)."""
    if job.every is not None:
        return after + job.every
    assert job.schedule is not None  # validated: exactly one of the two
    start = datetime.fromtimestamp(after, zone(job) or datetime.now().astimezone().tzinfo)
    return float(croniter(job.schedule, start).get_next(float))


def due(job: Job, last_slot: float | None, running: int, now: float) -> Due:
    """What to do about `job` now.

    `last_slot` is the last slot already handled (None: the job is new, and its
    first slot is counted from now, so adding a job never starts it at once);
    `running` is how many of its runs are still going.
    """
    if last_slot is None:
        return Due(Decision.WAIT, now)
    slot = next_slot(job, last_slot)
    if slot > now:
        return Due(Decision.WAIT, last_slot)
    latest = last_passed(job, slot, now)
    trigger = Trigger.CATCH_UP if latest > slot or now - latest > LATE else Trigger.SCHEDULE
    if running and job.concurrency == "forbid":
        return Due(Decision.SKIP, latest, trigger)
    if running and job.concurrency == "replace":
        return Due(Decision.REPLACE, latest, trigger)
    return Due(Decision.START, latest, trigger)


def last_passed(job: Job, slot: float, now: float) -> float:
    """The latest slot at or before `now`, given that `slot` (<= now) is one: O(1)."""
    if job.every is not None:
        return slot + ((now - slot) // job.every) * job.every
    assert job.schedule is not None
    here = datetime.fromtimestamp(now, zone(job) or datetime.now().astimezone().tzinfo)
    latest = max(slot, float(croniter(job.schedule, here).get_prev(float)))
    following = next_slot(job, latest)
    return following if following <= now else latest


def wake_at(job: Job, last_slot: float | None, now: float) -> float:
    """When the environment must look at `job` again."""
    return next_slot(job, last_slot if last_slot is not None else now)
