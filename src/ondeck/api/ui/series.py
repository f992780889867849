"""The last hour of each service's traffic, per version, from the router's counters.

The UI's sampler calls `TrafficSeries.add` every `SAMPLE_EVERY` seconds with
the router's cumulative per-backend stats (router/metrics.py) and which
version each backend (instance) runs. Pure arithmetic over two snapshots; the
points live in fixed-size ring buffers, so memory stays bounded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ondeck.router.metrics import quantile

SAMPLE_EVERY = 10.0  # seconds between samples
KEEP = 360  # samples per series: one hour at SAMPLE_EVERY


@dataclass(frozen=True)
class SeriesKey:
    env: str
    service: str
    version: str  # "1.4.2 @3f2a9c1": the spec's version and the revision


@dataclass(frozen=True)
class Point:
    at: float
    rate: float  # requests per second
    error_rate: float | None  # share of 5xx answers; None without requests
    p50: float | None  # seconds
    p95: float | None


@dataclass
class _Sum:
    requests: int = 0
    errors: int = 0
    buckets: list[int] | None = None  # per bucket (not cumulative) counts

    def add(self, requests: int, errors: int, buckets: list[int]) -> None:
        self.requests += requests
        self.errors += errors
        self.buckets = (
            buckets
            if self.buckets is None
            else [a + b for a, b in zip(self.buckets, buckets, strict=True)]
        )


class TrafficSeries:
    """Ring buffers of `Point`s keyed by environment, service and version."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self.series: dict[SeriesKey, deque[Point]] = {}
        self._last: dict[str, Mapping[str, Any]] = {}
        self._last_at: float | None = None

    def add(
        self,
        now: float,
        backends: Mapping[str, Mapping[str, Any]],
        versions: Mapping[str, SeriesKey],
    ) -> None:
        """One sample: `backends` as the router's `stats` gives them, `versions` by backend id.

        The first call only sets the baseline; a backend first seen later counts in full
        (it started after the previous sample); one without a known version is skipped.
        """
        if self._last_at is None or now <= self._last_at:
            self._last, self._last_at = dict(backends), now
            return
        sums: dict[SeriesKey, _Sum] = {}
        for backend_id, now_stats in backends.items():
            key = versions.get(backend_id)
            if key is None:
                continue
            then = self._last.get(backend_id)
            requests = _count(now_stats, "requests") - (_count(then, "requests") if then else 0)
            if requests < 0:  # the router restarted: its counters began again
                then, requests = None, _count(now_stats, "requests")
            errors = _errors(now_stats) - (_errors(then) if then else 0)
            sums.setdefault(key, _Sum()).add(
                requests, max(0, errors), _bucket_delta(now_stats, then)
            )
        elapsed = now - self._last_at
        for key, total in sums.items():
            ring = self.series.setdefault(key, deque(maxlen=self.keep))
            ring.append(_point(now, elapsed, total))
        self._last, self._last_at = dict(backends), now
        self._forget(now)

    def of(self, env: str, service: str) -> dict[str, list[Point]]:
        """Every version's points for one service, oldest first, by version label."""
        return {
            k.version: list(ring)
            for k, ring in sorted(self.series.items(), key=lambda kv: kv[0].version)
            if k.env == env and k.service == service
        }

    def _forget(self, now: float) -> None:
        """Drop series with no point in the window (versions long gone)."""
        window = self.keep * SAMPLE_EVERY
        for key in [k for k, ring in self.series.items() if not ring or ring[-1].at < now - window]:
            del self.series[key]


def _count(stats: Mapping[str, Any], key: str) -> int:
    return int(stats.get(key, 0))


def _errors(stats: Mapping[str, Any]) -> int:
    return int(stats.get("status", {}).get("5xx", 0))


def _buckets(stats: Mapping[str, Any] | None) -> list[int]:
    """Per-bucket counts from the snapshot's cumulative `[bound, count]` pairs."""
    if not stats:
        return []
    cumulative = [int(n) for _, n in stats.get("latency", {}).get("buckets", [])]
    return [n - (cumulative[i - 1] if i else 0) for i, n in enumerate(cumulative)]


def _bucket_delta(now: Mapping[str, Any], then: Mapping[str, Any] | None) -> list[int]:
    later, earlier = _buckets(now), _buckets(then)
    if len(earlier) != len(later):
        return later
    return [max(0, a - b) for a, b in zip(later, earlier, strict=True)]


def _point(now: float, elapsed: float, total: _Sum) -> Point:
    buckets = total.buckets or []
    has = total.requests > 0 and sum(buckets) > 0
    return Point(
        at=now,
        rate=total.requests / elapsed,
        error_rate=total.errors / total.requests if total.requests > 0 else None,
        p50=quantile(buckets, 0.50) if has else None,
        p95=quantile(buckets, 0.95) if has else None,
    )
