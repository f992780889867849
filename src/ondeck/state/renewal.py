"""When to ask the ACME server for a certificate: pure decisions, no clock, no I/O.

The controller's certificate manager calls `next_attempt` after every issuance
or failure and sleeps until the time it returns; `expiry_condition` says
whether a host's certificate is a Degraded condition. Renewal starts once two
thirds of the lifetime has passed (plus a per-host jitter, so many hosts do not
renew in the same second); failures back off exponentially, refusals (the CA
said no) much longer, so ondeck never hammers a CA that refused it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DAY = 86400.0


class FailureKind(StrEnum):
    """Why the last attempt failed: decides how long to wait before the next one."""

    UNREACHABLE = "unreachable"  # network, timeout, 5xx: the CA is briefly away
    REFUSED = "refused"  # the CA answered no (validation failed, rate limit, policy)


@dataclass(frozen=True)
class RenewalPolicy:
    """The numbers of the policy; tests shorten them, production keeps the defaults."""

    renew_fraction: float = 2 / 3  # of the lifetime, before renewal starts
    jitter_fraction: float = 1 / 12  # of the lifetime, spread over hosts
    retry_initial: float = 60.0  # first retry after an unreachable CA
    retry_max: float = 6 * 3600.0
    refused_initial: float = 3600.0  # first retry after a refusal
    refused_max: float = DAY
    degraded_within: float = 14 * DAY  # expiring this soon and failing: Degraded


@dataclass(frozen=True)
class Attempts:
    """What happened so far for one host set: the certificate held and the failures since."""

    not_before: float | None = None  # epoch seconds of the certificate held, if any
    not_after: float | None = None
    failures: int = 0  # consecutive failures since the last success
    last_failure_at: float | None = None
    last_failure: FailureKind | None = None


def renewal_due(attempts: Attempts, jitter: float, policy: RenewalPolicy) -> float:
    """The time renewal of the held certificate starts (0.0: there is none, obtain now).

    `jitter` is in [0, 1), fixed per host set, so a set always renews at the same
    point of its certificate's life.
    """
    if attempts.not_before is None or attempts.not_after is None:
        return 0.0
    lifetime = max(attempts.not_after - attempts.not_before, 0.0)
    fraction = policy.renew_fraction + min(max(jitter, 0.0), 1.0) * policy.jitter_fraction
    return attempts.not_before + lifetime * fraction


def backoff(attempts: Attempts, policy: RenewalPolicy) -> float:
    """Seconds to wait after the last failure before trying again (0 without failures)."""
    if attempts.failures <= 0:
        return 0.0
    if attempts.last_failure is FailureKind.REFUSED:
        initial, cap = policy.refused_initial, policy.refused_max
    else:
        initial, cap = policy.retry_initial, policy.retry_max
    return float(min(initial * 2 ** min(attempts.failures - 1, 30), cap))


def next_attempt(attempts: Attempts, jitter: float, policy: RenewalPolicy) -> float:
    """The earliest time (epoch seconds) to ask the CA again for this host set."""
    due = renewal_due(attempts, jitter, policy)
    if attempts.failures <= 0 or attempts.last_failure_at is None:
        return due
    return max(due, attempts.last_failure_at + backoff(attempts, policy))


def expiry_condition(attempts: Attempts, now: float, policy: RenewalPolicy) -> str | None:
    """A Degraded reason when the certificate expires soon and renewing it keeps failing."""
    if attempts.failures <= 0:
        return None
    if attempts.not_after is None:
        return "no certificate yet: obtaining one failed"
    left = attempts.not_after - now
    if left > policy.degraded_within:
        return None
    if left <= 0:
        return "certificate expired and renewing it failed"
    return f"certificate expires in {left / DAY:.1f} days and renewing it failed"
