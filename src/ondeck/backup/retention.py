"""Which backups to keep: restic's `forget` policy, as a pure function.

Newest first, each policy (`last`, `hourly`, `daily`, `weekly`, `monthly`,
`yearly`) keeps the newest backup of each calendar bucket (ISO weeks) until
its count is spent; the policies are ORed. An empty policy keeps everything,
as restic does. Unlike restic, the protected ids (the last verified backup)
are never removed. Called by the backup service after each run; tested against
restic's own `forget --dry-run`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Bucket = Callable[[datetime.datetime, int], tuple[int, ...]]


@dataclass(frozen=True)
class Policy:
    """How many of each kind to keep; 0 means that policy keeps none."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def empty(self) -> bool:
        return not any(count for _, count, _ in self.counts())

    def counts(self) -> list[tuple[str, int, Bucket]]:
        return [
            ("last", self.last, lambda _t, nr: (nr,)),
            ("hourly", self.hourly, lambda t, _nr: (t.year, t.month, t.day, t.hour)),
            ("daily", self.daily, lambda t, _nr: (t.year, t.month, t.day)),
            ("weekly", self.weekly, lambda t, _nr: tuple(t.isocalendar()[:2])),
            ("monthly", self.monthly, lambda t, _nr: (t.year, t.month)),
            ("yearly", self.yearly, lambda t, _nr: (t.year,)),
        ]


@dataclass(frozen=True)
class Snapshot:
    """A backup as retention sees it: its id and when it was taken (local time)."""

    id: str
    time: datetime.datetime


@dataclass(frozen=True)
class Decision:
    """What to keep (newest first, with the reasons) and what to remove."""

    keep: list[Snapshot]
    remove: list[Snapshot]
    reasons: dict[str, list[str]] = field(default_factory=dict)


def decide(snapshots: Iterable[Snapshot], policy: Policy, protect: Iterable[str] = ()) -> Decision:
    """Apply `policy` to `snapshots`; ids in `protect` are always kept."""
    ordered = sorted(snapshots, key=lambda s: s.time, reverse=True)  # stable, like restic
    protected = set(protect)
    if policy.empty():
        return Decision(ordered, [], {s.id: ["policy is empty"] for s in ordered})
    remaining = {name: count for name, count, _ in policy.counts()}
    last_seen: dict[str, tuple[int, ...] | None] = {name: None for name in remaining}
    keep: list[Snapshot] = []
    remove: list[Snapshot] = []
    reasons: dict[str, list[str]] = {}
    for nr, snap in enumerate(ordered):
        why: list[str] = []
        for name, _, bucket in policy.counts():
            value = bucket(snap.time, nr)
            if remaining[name] > 0 and value != last_seen[name]:
                last_seen[name] = value
                remaining[name] -= 1
                why.append(f"{name} snapshot")
        if snap.id in protected:
            why.append("last verified")
        if why:
            keep.append(snap)
            reasons[snap.id] = why
        else:
            remove.append(snap)
    return Decision(keep, remove, reasons)
