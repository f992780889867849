"""When a scheduled backup is due: one run however many slots were missed."""

from __future__ import annotations

import datetime

from ondeck.backup.service import Trigger, due, next_run

LOCAL = datetime.datetime.now().astimezone().tzinfo


def _at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=LOCAL)


def test_not_due_before_the_next_slot() -> None:
    assert due("0 3 * * *", _at("2024-05-01 03:00:00"), _at("2024-05-02 02:59:59")) is None


def test_due_at_the_slot() -> None:
    assert (
        due("0 3 * * *", _at("2024-05-01 03:00:00"), _at("2024-05-02 03:00:10")) is Trigger.SCHEDULE
    )


def test_three_missed_days_give_one_catch_up_run() -> None:
    last = _at("2024-05-01 03:00:00")
    now = _at("2024-05-04 12:00:00")
    assert due("0 3 * * *", last, now) is Trigger.CATCH_UP
    # the run is recorded at `now`: nothing more is due until tomorrow's slot
    assert due("0 3 * * *", now, now) is None
    assert next_run("0 3 * * *", now) == _at("2024-05-05 03:00:00")
