"""When a job is due: cron and `every` against a fake clock, catch-up once, concurrency."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ondeck.jobs.schedule import Decision, Trigger, due, next_slot, wake_at
from ondeck.spec.model import Job


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


NIGHTLY = Job(command=["true"], schedule="0 4 * * *", timezone="UTC")
PARIS = Job(command=["true"], schedule="0 4 * * *", timezone="Europe/Paris")
EVERY = Job(command=["true"], every=10.0)


def test_a_new_job_waits_for_its_first_slot() -> None:
    d = due(NIGHTLY, None, 0, at("2026-12-02T04:00:00"))
    assert d.decision is Decision.WAIT and d.slot == at("2026-12-02T04:00:00")
    assert wake_at(NIGHTLY, d.slot, d.slot) == at("2026-12-03T04:00:00")


def test_cron_is_due_at_its_slot_and_not_before() -> None:
    last = at("2026-12-01T04:00:00")
    assert due(NIGHTLY, last, 0, at("2026-12-02T03:59:59")).decision is Decision.WAIT
    d = due(NIGHTLY, last, 0, at("2026-12-02T04:00:01"))
    assert (d.decision, d.slot, d.trigger) == (
        Decision.START,
        at("2026-12-02T04:00:00"),
        Trigger.SCHEDULE,
    )


def test_slots_missed_while_down_run_once_as_catch_up() -> None:
    last = at("2026-12-01T04:00:00")
    d = due(NIGHTLY, last, 0, at("2026-12-05T10:00:00"))
    assert (d.decision, d.trigger) == (Decision.START, Trigger.CATCH_UP)
    assert d.slot == at("2026-12-05T04:00:00")  # the latest: the others are skipped
    assert due(NIGHTLY, d.slot, 0, at("2026-12-05T10:00:01")).decision is Decision.WAIT


def test_one_slot_missed_long_ago_is_a_catch_up_too() -> None:
    d = due(NIGHTLY, at("2026-12-01T04:00:00"), 0, at("2026-12-02T06:00:00"))
    assert (d.slot, d.trigger) == (at("2026-12-02T04:00:00"), Trigger.CATCH_UP)


def test_cron_follows_the_jobs_time_zone() -> None:
    d = due(PARIS, at("2026-12-01T03:00:00"), 0, at("2026-12-02T03:00:30"))
    assert (d.decision, d.slot) == (Decision.START, at("2026-12-02T03:00:00"))  # 04:00 CET


def test_every_counts_from_the_last_slot() -> None:
    assert next_slot(EVERY, 100.0) == 110.0
    assert due(EVERY, 100.0, 0, 109.9).decision is Decision.WAIT
    d = due(EVERY, 100.0, 0, 110.2)
    assert (d.decision, d.slot, d.trigger) == (Decision.START, 110.0, Trigger.SCHEDULE)


def test_every_after_a_month_down_is_one_run_computed_at_once() -> None:
    d = due(EVERY, 100.0, 0, 100.0 + 30 * 86400 + 3)
    assert (d.decision, d.trigger) == (Decision.START, Trigger.CATCH_UP)
    assert d.slot == 100.0 + 30 * 86400


@pytest.mark.parametrize(
    ("policy", "decision"),
    [("allow", Decision.START), ("forbid", Decision.SKIP), ("replace", Decision.REPLACE)],
)
def test_concurrency_when_a_run_is_still_going(policy: str, decision: Decision) -> None:
    job = Job(command=["true"], every=10.0, concurrency=policy)
    assert due(job, 100.0, 1, 110.5).decision is decision
    assert due(job, 100.0, 0, 110.5).decision is Decision.START


def test_a_job_image_is_refused_until_container_jobs_exist() -> None:
    import pytest as _pytest
    from pydantic import ValidationError

    from ondeck.spec.model import Spec

    with _pytest.raises(ValidationError, match="image is not supported yet"):
        Spec.model_validate(
            {
                "app": "shop",
                "services": {"web": {"command": ["python3", "web.py"]}},
                "jobs": {"j": {"command": ["true"], "every": "1m", "image": "busybox"}},
            }
        )
