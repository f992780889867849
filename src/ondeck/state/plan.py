"""`plan(desired, live, now) -> Plan`: the next actions that bring live to desired.

Repeatable by design (gitops-engine's sync step): the plan holds only what
can be done now without breaking the rollout's bounds; the controller carries
it out, observes, and calls `plan` again until it is `done`. Waiting is a
named result with a reason and, when known, a time to look again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ondeck.state import rollout
from ondeck.state.desired import Desired, DesiredService
from ondeck.state.health import exit_text, restart_delay
from ondeck.state.live import Live, LiveInstance, Phase
from ondeck.state.rollout import Progress, Stage, Traffic

PROGRESSIVE = ("blue-green", "canary")


@dataclass(frozen=True)
class Start:
    service: str
    fingerprint: str


@dataclass(frozen=True)
class Restart:
    service: str
    instance: str


@dataclass(frozen=True)
class Stop:
    service: str
    instance: str
    reason: str


@dataclass(frozen=True)
class Forget:
    """Drop the record of an exited instance that will not run again."""

    service: str
    instance: str


Action = Start | Restart | Stop | Forget


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    waiting: tuple[str, ...] = ()
    wake_at: float | None = None
    progress: Mapping[str, Progress | None] = field(default_factory=dict)  # None: release over
    traffic: Mapping[str, Traffic] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Nothing to do and nothing to wait for: live matches desired."""
        return not self.actions and not self.waiting


@dataclass
class _Builder:
    releases: Mapping[str, Progress]
    actions: list[Action] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    wake_at: float | None = None
    progress: dict[str, Progress | None] = field(default_factory=dict)
    traffic: dict[str, Traffic] = field(default_factory=dict)

    def wake(self, at: float | None) -> None:
        if at is not None:
            self.wake_at = at if self.wake_at is None else min(self.wake_at, at)

    def build(self) -> Plan:
        return Plan(
            tuple(self.actions), tuple(self.waiting), self.wake_at, self.progress, self.traffic
        )


def plan(
    desired: Desired, live: Live, now: float, releases: Mapping[str, Progress] | None = None
) -> Plan:
    """Every service of `desired` plus pruning of live services no longer wanted.

    `releases` holds the stored progress of blue/green and canary releases;
    the plan says how it moves on (`progress`) and how to split traffic.
    """
    out = _Builder(releases or {})
    for service in desired.services:
        _plan_service(service, [_as_old(i) for i in live.of(service.name)], now, out)
    for name in sorted(live.services - desired.names):
        _prune(name, live.of(name), out)
    return out.build()


def _as_old(inst: LiveInstance) -> LiveInstance:
    """A drifted instance no longer runs its release: plan it as an older one."""
    if inst.drift is None:
        return inst
    return replace(inst, fingerprint=f"{inst.fingerprint}~drift")


def _prune(name: str, instances: list[LiveInstance], out: _Builder) -> None:
    for inst in instances:
        if inst.phase is Phase.RUNNING:
            out.actions.append(Stop(name, inst.id, "service removed from the spec"))
        elif inst.phase is Phase.EXITED:
            out.actions.append(Forget(name, inst.id))
        else:
            out.waiting.append(f"{inst.id} stopping")


def _plan_service(
    svc: DesiredService, instances: list[LiveInstance], now: float, out: _Builder
) -> None:
    current = [i for i in instances if i.phase is not Phase.STOPPING]
    stopping = len(instances) - len(current)
    if stopping:
        out.waiting.append(f"{svc.name}: waiting for instances to stop ({stopping} left)")
    new = [i for i in current if i.fingerprint == svc.fingerprint]
    old = [i for i in current if i.fingerprint != svc.fingerprint]
    for inst in old:
        if inst.phase is Phase.EXITED:
            out.actions.append(Forget(svc.name, inst.id))
    old = [i for i in old if i.phase is Phase.RUNNING]
    strategy = svc.spec.rollout.strategy
    release = out.releases.get(svc.name)
    if strategy not in PROGRESSIVE and _halted(release, svc):
        _hold(svc, new, release, out)
        return
    new = _trim(svc, new, out)
    for inst in new:
        _heal_exited(svc, inst, now, out)
    if strategy in PROGRESSIVE and (old or _unfinished(release, svc)):
        _progressive(svc, new, old, release, now, out)
        return
    if release is not None:
        out.progress[svc.name] = None
    out.traffic[svc.name] = Traffic(None)
    if strategy == "recreate":
        if not stopping:
            _recreate(svc, new, old, out)
    else:
        _rolling(svc, new, old, out)


def _trim(svc: DesiredService, new: list[LiveInstance], out: _Builder) -> list[LiveInstance]:
    """Scale down: exited instances go first (forgotten), then not ready, then newest."""
    excess = _stop_order(new)[: max(len(new) - svc.replicas, 0)]
    for inst in excess:
        if inst.phase is Phase.EXITED:
            out.actions.append(Forget(svc.name, inst.id))
        else:
            out.actions.append(Stop(svc.name, inst.id, f"scale down to {svc.replicas}"))
    return [i for i in new if i not in excess]


def _finished(svc: DesiredService, inst: LiveInstance) -> bool:
    """Exited, and its restart policy says it must not run again."""
    policy = svc.spec.restart.policy
    return inst.phase is Phase.EXITED and (
        policy == "never" or (policy == "on-failure" and inst.exit_code == 0)
    )


def _heal_exited(svc: DesiredService, inst: LiveInstance, now: float, out: _Builder) -> None:
    """Restart a crashed instance of the current version, after its backoff.

    An exited instance keeps its slot either way: while it backs off, and for
    good when its restart policy says it must not run again.
    """
    if inst.phase is not Phase.EXITED or _finished(svc, inst):
        return
    policy = svc.spec.restart
    exited_at = inst.exited_at if inst.exited_at is not None else 0.0
    at = exited_at + restart_delay(inst.failures, policy.backoff_initial, policy.backoff_max)
    if at <= now:
        out.actions.append(Restart(svc.name, inst.id))
    else:
        out.waiting.append(
            f"{inst.id} {exit_text(inst.exit_code)}; restarting in {at - now:.0f}s (crash loop backoff)"
        )
        out.wake(at)


def _serving(instances: Sequence[LiveInstance]) -> list[LiveInstance]:
    return [i for i in instances if i.phase is Phase.RUNNING and i.ready]


def _stop_order(instances: Sequence[LiveInstance]) -> list[LiveInstance]:
    """Who goes first when some must stop: not ready, then the newest."""
    return sorted(instances, key=lambda i: (i.ready, -(i.started_at or 0.0), i.id))


def _scale(svc: DesiredService, new: list[LiveInstance], out: _Builder) -> None:
    """Only the current version runs (already trimmed to `replicas`): start the missing."""
    missing = svc.replicas - len(new)
    out.actions.extend(Start(svc.name, svc.fingerprint) for _ in range(missing))
    active = [i for i in new if not _finished(svc, i)]
    if missing <= 0 and len(_serving(active)) < len(active):
        out.waiting.append(f"{svc.name}: {len(_serving(active))}/{len(active)} ready")


def _recreate(
    svc: DesiredService, new: list[LiveInstance], old: list[LiveInstance], out: _Builder
) -> None:
    if old:
        out.actions.extend(
            Stop(svc.name, i.id, "recreate: replaced by the new version") for i in old
        )
        return
    _scale(svc, new, out)


def _rolling(
    svc: DesiredService, new: list[LiveInstance], old: list[LiveInstance], out: _Builder
) -> None:
    """Surge up to `max_surge` new instances; stop old ones while enough stay ready."""
    if not old:
        _scale(svc, new, out)
        return
    bounds = svc.spec.rollout
    ceiling = svc.replicas + bounds.max_surge
    can_start = min(svc.replicas - len(new), ceiling - len(new) - len(old))
    actions: list[Action] = [Start(svc.name, svc.fingerprint) for _ in range(max(can_start, 0))]
    ready = len(_serving(new)) + len(_serving(old))
    floor = svc.replicas - bounds.max_unavailable
    for inst in _stop_order(old):
        if inst.ready and ready - 1 < floor:
            continue
        ready -= 1 if inst.ready else 0
        actions.append(Stop(svc.name, inst.id, "rolling: replaced by the new version"))
    out.actions.extend(actions)
    if not actions:
        out.waiting.append(f"{svc.name}: rolling, {len(_serving(new))}/{svc.replicas} new ready")


def _halted(release: Progress | None, svc: DesiredService) -> bool:
    """A person aborted the rolling (or recreate) release of this very version."""
    return (
        release is not None and release.stage is Stage.ABORTED and release.canary == svc.fingerprint
    )


def _hold(
    svc: DesiredService, new: list[LiveInstance], release: Progress | None, out: _Builder
) -> None:
    """An aborted rolling release: its new instances go, what is left of the old set stays."""
    reason = release.reason if release is not None else None
    for inst in new:
        if inst.phase is Phase.RUNNING:
            out.actions.append(Stop(svc.name, inst.id, f"release aborted: {reason}"))
        elif inst.phase is Phase.EXITED:
            out.actions.append(Forget(svc.name, inst.id))
    out.progress[svc.name] = release
    out.traffic[svc.name] = Traffic(None)


def _unfinished(release: Progress | None, svc: DesiredService) -> bool:
    return (
        release is not None
        and release.canary == svc.fingerprint
        and release.stage is not Stage.PROMOTED
    )


def _progressive(
    svc: DesiredService,
    new: list[LiveInstance],
    old: list[LiveInstance],
    release: Progress | None,
    now: float,
    out: _Builder,
) -> None:
    """Blue/green and canary: the new set beside the old, traffic moved by the router."""
    if release is None or release.canary != svc.fingerprint:
        release = rollout.start(svc, old, release, now)
    step = rollout.advance(svc, release, new, old, now)
    if step.progress is not None and step.progress.stage is not Stage.ABORTED:
        out.actions.extend(Start(svc.name, svc.fingerprint) for _ in range(step.start))
    out.actions.extend(Stop(svc.name, inst, why) for inst, why in step.stop)
    out.waiting.extend(step.waiting)
    out.wake(step.wake_at)
    out.progress[svc.name] = step.progress
    out.traffic[svc.name] = step.traffic
