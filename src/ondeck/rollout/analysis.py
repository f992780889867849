"""Automated analysis: is the new version healthy enough, judged from router stats?

Pure: two cumulative stats snapshots of the router (see router/metrics.py) in,
one `Measurement` out. The controller takes a snapshot every
`analysis.interval`, and aborts a release after more than `failure_limit`
failed measurements.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ondeck.spec.model import Analysis
from ondeck.units import format_duration


@dataclass(frozen=True)
class Measurement:
    ok: bool
    requests: int
    error_rate: float
    p95: float | None
    reason: str


def measure(
    before: Mapping[str, Any], after: Mapping[str, Any], backends: Collection[str], spec: Analysis
) -> Measurement | None:
    """Judge `backends` on the traffic between two snapshots; None when they got none."""
    requests = errors = 0
    buckets: list[tuple[float | None, int]] = []
    for backend in backends:
        now, then = after.get(backend), before.get(backend)
        if now is None:
            continue
        requests += _delta(now, then, "requests")
        errors += _server_errors(now) - (_server_errors(then) if then else 0)
        buckets = _add(buckets, _bucket_delta(now, then))
    if requests <= 0:
        return None
    rate = errors / requests
    p95 = _quantile(buckets, 0.95)
    figures = f"{requests} requests, error rate {rate:.1%}, p95 {_ms(p95)}"
    if rate > spec.max_error_rate:
        return Measurement(
            False,
            requests,
            rate,
            p95,
            f"error rate {rate:.1%} > {spec.max_error_rate:.1%} ({figures})",
        )
    if p95 is not None and p95 > spec.max_p95:
        return Measurement(
            False, requests, rate, p95, f"p95 {_ms(p95)} > {_ms(spec.max_p95)} ({figures})"
        )
    return Measurement(True, requests, rate, p95, figures)


def _delta(now: Mapping[str, Any], then: Mapping[str, Any] | None, key: str) -> int:
    return int(now.get(key, 0)) - (int(then.get(key, 0)) if then else 0)


def _server_errors(snapshot: Mapping[str, Any]) -> int:
    """5xx answers, the router's own 502/504 included (it counts them in the class too)."""
    return int(snapshot.get("status", {}).get("5xx", 0))


def _bucket_delta(
    now: Mapping[str, Any], then: Mapping[str, Any] | None
) -> list[tuple[float | None, int]]:
    later = now.get("latency", {}).get("buckets", [])
    earlier = {b[0]: b[1] for b in (then or {}).get("latency", {}).get("buckets", [])}
    return [(le, int(n) - int(earlier.get(le, 0))) for le, n in later]


def _add(
    a: list[tuple[float | None, int]], b: list[tuple[float | None, int]]
) -> list[tuple[float | None, int]]:
    if not a:
        return b
    return [(le, n + m) for (le, n), (_, m) in zip(a, b, strict=True)]


def _quantile(cumulative: list[tuple[float | None, int]], q: float) -> float | None:
    """The upper bound of the bucket holding quantile `q` (cumulative counts)."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    last_bound = 0.0
    for bound, count in cumulative:
        if count >= rank:
            return bound if bound is not None else last_bound
        last_bound = bound if bound is not None else last_bound
    return last_bound


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else format_duration(seconds)
