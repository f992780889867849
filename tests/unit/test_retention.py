"""Retention as a pure function over synthetic calendars (restic's `forget` semantics)."""

from __future__ import annotations

import datetime

from ondeck.backup.retention import Policy, Snapshot, decide

UTC = datetime.UTC


def _snaps(*stamps: str) -> list[Snapshot]:
    return [
        Snapshot(f"s{i}", datetime.datetime.fromisoformat(stamp).replace(tzinfo=UTC))
        for i, stamp in enumerate(stamps)
    ]


def _kept(decision_keep: list[Snapshot]) -> list[str]:
    return [s.time.strftime("%Y-%m-%d %H:%M") for s in decision_keep]


def test_daily_keeps_the_newest_of_each_calendar_day() -> None:
    snaps = _snaps("2024-03-01 03:00", "2024-03-01 23:59", "2024-03-02 00:01", "2024-03-03 12:00")
    decision = decide(snaps, Policy(daily=2))
    assert _kept(decision.keep) == ["2024-03-03 12:00", "2024-03-02 00:01"]
    assert {s.id for s in decision.remove} == {"s0", "s1"}


def test_weekly_uses_iso_weeks_so_a_sunday_and_the_next_monday_differ() -> None:
    # 2024-03-10 is a Sunday (ISO week 10), 2024-03-11 a Monday (week 11).
    snaps = _snaps("2024-03-09 10:00", "2024-03-10 10:00", "2024-03-11 10:00")
    assert _kept(decide(snaps, Policy(weekly=5)).keep) == ["2024-03-11 10:00", "2024-03-10 10:00"]


def test_policies_are_ored_and_reasons_say_which() -> None:
    snaps = _snaps("2023-12-31 10:00", "2024-01-15 10:00", "2024-01-20 10:00", "2024-01-20 11:00")
    decision = decide(snaps, Policy(last=1, monthly=2, yearly=3))
    assert _kept(decision.keep) == ["2024-01-20 11:00", "2023-12-31 10:00"]
    assert decision.reasons["s3"] == ["last snapshot", "monthly snapshot", "yearly snapshot"]
    assert decision.reasons["s0"] == ["monthly snapshot", "yearly snapshot"]


def test_an_empty_policy_keeps_everything_as_restic_does() -> None:
    snaps = _snaps("2024-01-01 00:00", "2024-01-02 00:00")
    decision = decide(snaps, Policy())
    assert len(decision.keep) == 2 and decision.remove == []


def test_the_last_verified_backup_is_never_removed() -> None:
    snaps = _snaps("2024-01-01 00:00", "2024-01-02 00:00", "2024-01-03 00:00")
    decision = decide(snaps, Policy(last=1), protect={"s0"})
    assert {s.id for s in decision.keep} == {"s2", "s0"}
    assert decision.reasons["s0"] == ["last verified"]
    assert [s.id for s in decision.remove] == ["s1"]


def test_hourly_counts_buckets_not_backups() -> None:
    snaps = _snaps("2024-01-01 10:05", "2024-01-01 10:55", "2024-01-01 11:10", "2024-01-01 13:00")
    assert _kept(decide(snaps, Policy(hourly=2)).keep) == ["2024-01-01 13:00", "2024-01-01 11:10"]
