"""Per-backend traffic counters of the router, as JSON stats and Prometheus text.

The proxy bumps plain integers on its hot path (no prometheus_client there);
the control socket renders them on demand: `stats` for the controller's canary
analysis (cumulative counters: diff two snapshots), `metrics` for Prometheus.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Seconds; from a loopback hop to a slow report page.
BUCKETS: tuple[float, ...] = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
ERROR_KINDS = ("connect", "timeout", "reset", "client")
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class BackendStats:
    """Counters of one backend; `active` is its in-flight request count."""

    __slots__ = ("active", "buckets", "classes", "errors", "latency_sum", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.active = 0
        self.classes = [0, 0, 0, 0, 0, 0]  # index status // 100
        self.buckets = [0] * (len(BUCKETS) + 1)  # last one: over the largest bound
        self.latency_sum = 0.0
        self.errors = dict.fromkeys(ERROR_KINDS, 0)

    def observe(self, status: int, seconds: float) -> None:
        """One answered request: its status and time to the last response byte."""
        self.requests += 1
        self.classes[min(status // 100, 5)] += 1
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> BackendStats:
        """Counters back from their JSON form (to merge the workers' stats)."""
        stats = cls()
        stats.requests = int(snapshot["requests"])
        stats.active = int(snapshot["active"])
        for i, name in enumerate(CLASSES):
            stats.classes[i + 1] = int(snapshot["status"][name])
        stats.errors = {k: int(snapshot["errors"].get(k, 0)) for k in ERROR_KINDS}
        latency = snapshot["latency"]
        stats.latency_sum = float(latency["sum"])
        previous = 0
        for i, (_, cumulative) in enumerate(latency["buckets"]):
            stats.buckets[i] = int(cumulative) - previous
            previous = int(cumulative)
        return stats

    def add(self, other: BackendStats) -> None:
        self.requests += other.requests
        self.active += other.active
        self.latency_sum += other.latency_sum
        for i, n in enumerate(other.classes):
            self.classes[i] += n
        for i, n in enumerate(other.buckets):
            self.buckets[i] += n
        for kind, n in other.errors.items():
            self.errors[kind] += n

    def snapshot(self) -> dict[str, Any]:
        """The JSON form of these counters (see `stats` in control.py)."""
        count = sum(self.buckets)
        return {
            "requests": self.requests,
            "status": {name: self.classes[i + 1] for i, name in enumerate(CLASSES)},
            "errors": dict(self.errors),
            "active": self.active,
            "latency": {
                "count": count,
                "sum": round(self.latency_sum, 6),
                "p50": quantile(self.buckets, 0.50),
                "p95": quantile(self.buckets, 0.95),
                "p99": quantile(self.buckets, 0.99),
                "buckets": [
                    [le, n]
                    for le, n in zip((*BUCKETS, None), _cumulative(self.buckets), strict=True)
                ],
            },
        }


def merge_snapshots(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One backend's snapshots from several workers, as one (labels from the first)."""
    total = BackendStats()
    for snapshot in snapshots:
        total.add(BackendStats.from_snapshot(snapshot))
    merged = dict(snapshots[0])
    merged.update(total.snapshot())
    merged["removed"] = all(s.get("removed", False) for s in snapshots)
    return merged


def _cumulative(counts: Iterable[int]) -> list[int]:
    total, out = 0, []
    for n in counts:
        total += n
        out.append(total)
    return out


def quantile(buckets: list[int], q: float) -> float | None:
    """Estimate of quantile `q` from histogram counts, interpolated in its bucket."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            low = BUCKETS[i - 1] if i > 0 else 0.0
            high = BUCKETS[i] if i < len(BUCKETS) else BUCKETS[-1]
            return round(low + (high - low) * (rank - seen) / n, 6)
        seen += n
    return BUCKETS[-1]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Mapping[str, str]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items())


# The router's own protection counters (Router.stats keys): metric, type, help.
LIMIT_METRICS = {
    "connections": ("ondeck_router_connections", "gauge", "Open client connections."),
    "held_bytes": (
        "ondeck_router_held_bytes",
        "gauge",
        "Bytes held in unfinished request heads and buffered bodies (budget: max_held_total).",
    ),
    "shed": (
        "ondeck_router_shed_connections_total",
        "counter",
        "Connections cut because all connections together held too much.",
    ),
    "pressure_closed": (
        "ondeck_router_pressure_closed_total",
        "counter",
        "Idle keep-alive connections closed early because descriptors ran short.",
    ),
}


def render_prometheus(
    backends: Mapping[str, tuple[Mapping[str, str], BackendStats]],
    local: Mapping[int, int],
    generation: int,
    limits: Mapping[str, int] | None = None,
) -> str:
    """Prometheus text exposition: `backends` maps id -> (labels, counters)."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")

    family(
        "ondeck_router_requests_total", "counter", "Requests answered, by backend and status class."
    )
    for labels, stats in backends.values():
        for i, code in enumerate(CLASSES):
            out.append(
                f'ondeck_router_requests_total{{{_labels(labels)},code="{code}"}} {stats.classes[i + 1]}\n'
            )
    family("ondeck_router_upstream_errors_total", "counter", "Failed upstream exchanges, by kind.")
    for labels, stats in backends.values():
        for kind, n in stats.errors.items():
            out.append(
                f'ondeck_router_upstream_errors_total{{{_labels(labels)},kind="{kind}"}} {n}\n'
            )
    family("ondeck_router_active_requests", "gauge", "Requests in flight to a backend.")
    for labels, stats in backends.values():
        out.append(f"ondeck_router_active_requests{{{_labels(labels)}}} {stats.active}\n")
    _render_histograms(out, backends)
    family("ondeck_router_local_responses_total", "counter", "Answers made by the router itself.")
    for status, n in sorted(local.items()):
        out.append(f'ondeck_router_local_responses_total{{code="{status}"}} {n}\n')
    family("ondeck_router_config_generation", "gauge", "Generation of the served config.")
    out.append(f"ondeck_router_config_generation {generation}\n")
    for key, value in (limits or {}).items():
        name, kind, help_text = LIMIT_METRICS[key]
        family(name, kind, help_text)
        out.append(f"{name} {value}\n")
    return "".join(out)


def _render_histograms(
    out: list[str], backends: Mapping[str, tuple[Mapping[str, str], BackendStats]]
) -> None:
    name = "ondeck_router_request_duration_seconds"
    out.append(f"# HELP {name} Time from request headers to the last response byte.\n")
    out.append(f"# TYPE {name} histogram\n")
    for labels, stats in backends.values():
        text = _labels(labels)
        cumulative = _cumulative(stats.buckets)
        for le, n in zip(BUCKETS, cumulative[:-1], strict=True):
            out.append(f'{name}_bucket{{{text},le="{le}"}} {n}\n')
        out.append(f'{name}_bucket{{{text},le="+Inf"}} {cumulative[-1]}\n')
        out.append(f"{name}_sum{{{text}}} {stats.latency_sum}\n")
        out.append(f"{name}_count{{{text}}} {cumulative[-1]}\n")
