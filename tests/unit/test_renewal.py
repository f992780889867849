"""The renewal policy as data: what is held and what failed in, the next attempt out."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ondeck.certificates import host_matches, host_set_name, write_secret_file
from ondeck.state.renewal import (
    DAY,
    Attempts,
    FailureKind,
    RenewalPolicy,
    expiry_condition,
    next_attempt,
)

POLICY = RenewalPolicy()
ISSUED = Attempts(not_before=0.0, not_after=90 * DAY)


def test_no_certificate_means_now() -> None:
    assert next_attempt(Attempts(), 0.5, POLICY) == 0.0


@pytest.mark.parametrize(
    ("jitter", "day"),
    [(0.0, 60.0), (0.5, 63.75), (0.999999, 67.5)],
)
def test_renewal_starts_after_two_thirds_of_the_lifetime_plus_jitter(
    jitter: float, day: float
) -> None:
    assert next_attempt(ISSUED, jitter, POLICY) == pytest.approx(day * DAY)


def test_jitter_never_moves_renewal_before_two_thirds() -> None:
    assert next_attempt(ISSUED, -3.0, POLICY) == pytest.approx(60 * DAY)


def test_unreachable_ca_backs_off_exponentially_up_to_a_cap() -> None:
    waits = []
    for failures in range(1, 12):
        failed = Attempts(failures=failures, last_failure_at=1000.0,
                          last_failure=FailureKind.UNREACHABLE)  # fmt: skip
        waits.append(next_attempt(failed, 0.0, POLICY) - 1000.0)
    assert waits[:4] == [60.0, 120.0, 240.0, 480.0]
    assert max(waits) == POLICY.retry_max
    assert waits == sorted(waits)


def test_a_refusal_waits_far_longer_than_an_outage() -> None:
    refused = Attempts(failures=1, last_failure_at=0.0, last_failure=FailureKind.REFUSED)
    assert next_attempt(refused, 0.0, POLICY) == POLICY.refused_initial
    many = Attempts(failures=40, last_failure_at=0.0, last_failure=FailureKind.REFUSED)
    assert next_attempt(many, 0.0, POLICY) == POLICY.refused_max


def test_failed_renewal_retries_after_backoff_not_before_renewal_is_due() -> None:
    failed = Attempts(0.0, 90 * DAY, failures=1, last_failure_at=61 * DAY,
                      last_failure=FailureKind.UNREACHABLE)  # fmt: skip
    assert next_attempt(failed, 0.0, POLICY) == 61 * DAY + 60.0


@pytest.mark.parametrize(
    ("attempts", "now", "reason"),
    [
        (ISSUED, 80 * DAY, None),  # no failure: nothing to say
        (Attempts(0.0, 90 * DAY, failures=2), 70 * DAY, None),  # 20 days left
        (Attempts(0.0, 90 * DAY, failures=2), 80 * DAY, "expires in 10.0 days"),
        (Attempts(0.0, 90 * DAY, failures=1), 91 * DAY, "expired"),
        (Attempts(failures=1), 0.0, "no certificate yet"),
    ],
)
def test_degraded_only_when_expiring_soon_and_failing(
    attempts: Attempts, now: float, reason: str | None
) -> None:
    found = expiry_condition(attempts, now, POLICY)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("shop.example", "shop.example", True),
        ("shop.example", "SHOP.example.", True),
        ("*.shop.example", "a.shop.example", True),
        ("*.shop.example", "shop.example", False),
        ("*.shop.example", "a.b.shop.example", False),
        ("shop.example", "www.shop.example", False),
    ],
)
def test_wildcards_cover_one_label(pattern: str, host: str, matches: bool) -> None:
    assert host_matches(pattern, host) is matches


def test_host_set_name_ignores_order_and_case() -> None:
    assert host_set_name(["b.example", "A.example"]) == host_set_name(["a.example", "b.example"])
    assert host_set_name(["a.example"]) != host_set_name(["a.example", "b.example"])
    assert "/" not in host_set_name(["*.example"])


def test_secret_files_are_0600_from_the_start(tmp_path: Path) -> None:
    target = tmp_path / "keys" / "k.pem"
    old = os.umask(0)
    try:
        write_secret_file(target, b"secret")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert [p.name for p in target.parent.iterdir()] == ["k.pem"]
