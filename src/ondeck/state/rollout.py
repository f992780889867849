"""Progressive releases (blue/green, canary) as a pure, resumable state machine.

`advance(...)` takes one service's stored `Progress`, its instances and the
time, and returns the next `Progress`, the actions to take, and how traffic
must be split. The controller stores `Progress` after every step, so a
controller killed at any point resumes exactly where it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from ondeck.state.desired import DesiredService
from ondeck.state.live import LiveInstance, Phase


class Stage(StrEnum):
    PROGRESSING = "progressing"  # new set starting, or steps under way
    PAUSED = "paused"  # waiting for `ondeck rollout promote` (health: Suspended)
    ABORTED = "aborted"  # traffic back on stable, new set stopped (health: Degraded)
    PROMOTED = "promoted"  # all traffic on the new set; old set retiring


@dataclass(frozen=True)
class Progress:
    """Where one service's release stands; stored between reconciles."""

    service: str
    stable: str  # fingerprint that served before the release began
    canary: str  # fingerprint being released
    stage: Stage = Stage.PROGRESSING
    step: int = 0  # canary: index of the next step
    weight: int = 0  # percent of traffic on the new set
    since: float = 0.0  # when the current step or stage began
    reason: str | None = None
    failures: int = 0  # failed analysis measurements so far

    def to_json(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, Stage) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        return cls(**{**data, "stage": Stage(data["stage"])})


@dataclass(frozen=True)
class Traffic:
    """How the router splits one service: `weight` percent to `canary`."""

    stable: str | None
    canary: str | None = None
    weight: int = 0


@dataclass
class Outcome:
    progress: Progress | None
    traffic: Traffic
    stop: list[tuple[str, str]] = field(default_factory=list)  # (instance id, reason)
    start: int = 0
    waiting: list[str] = field(default_factory=list)
    wake_at: float | None = None


def start(
    svc: DesiredService, old: list[LiveInstance], previous: Progress | None, now: float
) -> Progress:
    """A new release of `svc` begins (or supersedes one under way)."""
    stable = (
        previous.stable if previous and previous.stage is not Stage.PROMOTED else _majority(old)
    )
    return Progress(svc.name, stable, svc.fingerprint, since=now)


def advance(
    svc: DesiredService,
    progress: Progress,
    new: list[LiveInstance],
    old: list[LiveInstance],
    now: float,
) -> Outcome:
    """The next step of a blue/green or canary release."""
    if progress.stage is Stage.ABORTED:
        return _aborted(progress, new)
    out = Outcome(progress, Traffic(progress.stable, progress.canary, progress.weight))
    others = [i for i in old if i.fingerprint != progress.stable and i.phase is Phase.RUNNING]
    out.stop += [(i.id, f"superseded by release {progress.canary}") for i in others]
    out.start = max(svc.replicas - len(new), 0)
    ready = sum(1 for i in new if i.ready)
    if ready < svc.replicas:
        out.waiting.append(f"{svc.name}: new set {ready}/{svc.replicas} ready")
        return out
    if svc.spec.rollout.strategy == "blue-green":
        return _blue_green(svc, out, old, now)
    return _canary(svc, out, old, now)


def abort(progress: Progress, reason: str, now: float) -> Progress:
    return replace(progress, stage=Stage.ABORTED, weight=0, reason=reason, since=now)


def promote(progress: Progress, now: float) -> Progress:
    """`ondeck rollout promote`: skip the current pause, or retry an aborted release."""
    if progress.stage is Stage.ABORTED:
        return replace(
            progress, stage=Stage.PROGRESSING, step=0, weight=0, reason=None, failures=0, since=now
        )
    return replace(progress, stage=Stage.PROGRESSING, step=progress.step + 1, since=now)


def _aborted(progress: Progress, new: list[LiveInstance]) -> Outcome:
    out = Outcome(progress, Traffic(progress.stable))
    out.stop += [
        (i.id, f"release aborted: {progress.reason}") for i in new if i.phase is Phase.RUNNING
    ]
    return out


def _blue_green(svc: DesiredService, out: Outcome, old: list[LiveInstance], now: float) -> Outcome:
    assert out.progress is not None
    progress = out.progress
    if progress.weight < 100:  # the whole new set is ready: switch all traffic at once
        progress = replace(progress, weight=100, since=now)
    keep_until = progress.since + svc.spec.rollout.keep_old
    if old and now < keep_until:
        out.waiting.append(
            f"{svc.name}: switched; old set kept until it is {keep_until - now:.0f}s older"
        )
        out.wake_at = keep_until
    else:
        progress = replace(progress, stage=Stage.PROMOTED)
        out.stop += [(i.id, "blue-green: old set retired") for i in old if i.phase is Phase.RUNNING]
    return _finish(out, progress, old)


def _canary(svc: DesiredService, out: Outcome, old: list[LiveInstance], now: float) -> Outcome:
    assert out.progress is not None
    progress = out.progress
    steps = svc.spec.rollout.steps
    while progress.step < len(steps) and progress.stage is not Stage.PROMOTED:
        step = steps[progress.step]
        if step.weight is not None:
            progress = replace(progress, weight=step.weight, step=progress.step + 1, since=now)
        elif step.pause == "manual":
            progress = replace(progress, stage=Stage.PAUSED)
            out.waiting.append(
                f"{svc.name}: paused at {progress.weight}%: run `ondeck rollout promote {svc.name}`"
            )
            return _finish(out, progress, old)
        else:
            assert isinstance(step.pause, float)
            until = progress.since + step.pause
            if now < until:
                out.waiting.append(
                    f"{svc.name}: at {progress.weight}%, next step in {until - now:.0f}s"
                )
                out.wake_at = until
                return _finish(out, progress, old)
            progress = replace(progress, step=progress.step + 1, since=now)
    progress = replace(progress, weight=100, stage=Stage.PROMOTED)
    out.stop += [
        (i.id, "canary: promoted, old set retired") for i in old if i.phase is Phase.RUNNING
    ]
    return _finish(out, progress, old)


def _finish(out: Outcome, progress: Progress, old: list[LiveInstance]) -> Outcome:
    out.progress = progress
    out.traffic = Traffic(progress.stable, progress.canary, progress.weight)
    retiring = {i for i, _ in out.stop}
    if progress.stage is Stage.PROMOTED and all(
        i.id in retiring or i.phase is not Phase.RUNNING for i in old
    ):
        out.traffic = Traffic(progress.canary)
    return out


def _majority(instances: list[LiveInstance]) -> str:
    counts: dict[str, int] = {}
    for inst in instances:
        counts[inst.fingerprint] = counts.get(inst.fingerprint, 0) + (2 if inst.ready else 1)
    return max(sorted(counts), key=lambda fp: counts[fp]) if counts else ""
