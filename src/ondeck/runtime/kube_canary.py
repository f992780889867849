"""Canary by replica ratio on a cluster: the steps of kube/canary.py carried out.

Called by `KubernetesRuntime.sync` (runtime/kubernetes.py) for each canary
service whose release changed. The stable Deployment keeps the old release;
`SERVICE-canary` runs the new one behind the same Service selector, and each
weight step sets how many pods each has (kube/canary.split). Where the canary
is (step, since when, aborted) lives in annotations on the canary Deployment,
so a restarted controller goes on from there; a pause returns at once
(Suspended) and the next sync looks again. While a canary runs, the stable
set's replica count is changed through its /scale subresource by the field
manager `ondeck-canary`; the promotion takes it back with a forced apply.
A person steps in through the sync's `promote` (past the current pause, or a
fresh start of an aborted release) and `abort` (back to the stable set), as
`ondeck rollout promote|abort` does on a host.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ondeck.kube.canary import Decision, Move, decide, share, split
from ondeck.kube.render import Obj, canary_of
from ondeck.state.desired import Desired, DesiredService
from ondeck.state.health import Health
from ondeck.state.rollout import Progress, Stage

if TYPE_CHECKING:
    from ondeck.runtime.kubernetes import ApplyResult, KubernetesRuntime

STEP = "ondeck.dev/canary-step"
SINCE = "ondeck.dev/canary-since"
ABORTED = "ondeck.dev/canary-aborted"
SCALER = "ondeck-canary"
BY_A_PERSON = "aborted by a person (ondeck rollout abort)"


@dataclass(frozen=True)
class Position:
    """Where a service's canary is: pods, the step it is at and since when, why it stopped."""

    replicas: int
    step: int
    since: float
    aborted: str = ""


@dataclass(frozen=True)
class CanaryState:
    """A canary after a sync: at a WEIGHT (pods not ready yet: Progressing), a PAUSE or
    MANUAL pause (Suspended), PROMOTE (done), or aborted (Degraded)."""

    service: str
    step: int
    steps: int
    canary: int
    stable: int
    move: Move
    reason: str
    aborted: bool = False
    since: float = 0.0  # when its current step began (epoch seconds)
    wake_at: float | None = None  # a timed pause: when it is over (epoch seconds)
    images: tuple[str, str] = ("", "")  # (stable, canary)
    failed_now: bool = False  # aborted on its own by this sync (not by a person, not before)

    @property
    def health(self) -> Health:
        if self.aborted:
            return Health.DEGRADED
        if self.move is Move.WEIGHT:
            return Health.PROGRESSING
        return Health.HEALTHY if self.move is Move.PROMOTE else Health.SUSPENDED

    @property
    def waiting(self) -> bool:
        """At a pause (timed or manual): the sync is not over, and has not failed."""
        return not self.aborted and self.move in (Move.PAUSE, Move.MANUAL)


def progress_of(state: CanaryState) -> Progress:
    """A canary on a cluster as the host's release progress (status, `ondeck rollout`)."""
    stage = (
        Stage.ABORTED
        if state.aborted
        else Stage.PAUSED
        if state.move is Move.MANUAL
        else Stage.PROMOTED
        if state.move is Move.PROMOTE
        else Stage.PROGRESSING
    )
    weight = round(100 * share(state.canary, state.stable))
    return Progress(
        state.service,
        state.images[0],
        state.images[1],
        stage,
        step=state.step,
        weight=100 if stage is Stage.PROMOTED else weight,
        since=state.since,
        reason=state.reason,
    )


# build(positions) -> the environment's objects, each service in `positions` as its canary
Build = Callable[[Mapping[str, Position]], list[Obj]]


@dataclass
class CanaryRun:
    """One sync's canaries: advanced with `advance`, then rendered by the caller's `build`."""

    runtime: KubernetesRuntime
    matches: Callable[[Obj, Obj], bool]  # every field the first sets is in the second
    desired: Desired
    namespace: str
    revision: str
    timeout: float
    keep: frozenset[str]
    promote: frozenset[str] = frozenset()  # past the current pause; an aborted one starts again
    abort: frozenset[str] = frozenset()  # back to the stable set, by a person
    clock: Callable[[], float] = time.time
    positions: dict[str, Position] = field(default_factory=dict)
    states: dict[str, CanaryState] = field(default_factory=dict)
    writes: int = 0
    applied: list[ApplyResult] = field(default_factory=list)  # each step's apply, for history
    _images: tuple[str, str] = ("", "")  # the service at hand's (stable, canary) images

    def kept(self) -> frozenset[str]:
        """Objects the environment's apply must not prune: stable sets under a canary."""
        stable = {f"Deployment/{self.namespace}/{name}" for name in self.positions}
        return self.keep | stable

    def advance(self, build: Build, live: Mapping[str, Obj]) -> None:
        """Take each canary service as far as it can go now (weights wait to be ready)."""
        for svc in self.desired.services:
            if svc.spec.rollout.strategy == "canary" and svc.spec.replicas > 0:
                self._service(svc, build, live)

    def _service(self, svc: DesiredService, build: Build, live: Mapping[str, Obj]) -> None:
        is_subset = self.matches
        name = svc.name
        stable = live.get(name)
        plain = _deployment(build({}), name)
        if stable is None or is_subset(plain["spec"]["template"], stable["spec"]["template"]):
            return  # a first deploy, or no new release: no canary (a leftover one is pruned)
        total = svc.spec.replicas
        steps = svc.spec.rollout.steps
        wanted = canary_of(plain, 0)["spec"]["template"]
        current = live.get(f"{name}-canary")
        if current is not None and is_subset(wanted, current["spec"]["template"]):
            pos = _position(current)
        else:
            pos = Position(0, 0, self.clock())
        self._images = (_image(stable), _image(plain))
        self.positions[name] = pos
        if name in self.abort and not pos.aborted:
            self._abort(build, name, pos, total, BY_A_PERSON)
            return
        passed = name not in self.promote  # a promotion goes past one pause, as on a host
        if pos.aborted and not passed:  # a person retries it: from the first step
            pos, passed = self._move(build, name, Position(0, 0, self.clock())), True
        elif pos.aborted:
            why = f"canary aborted: {pos.aborted}"
            self._state(name, pos, total, len(steps), Move.WEIGHT, why, aborted=True)
            return
        while True:
            decision = decide(steps, pos.step, pos.since, self.clock())
            if decision.move in (Move.MANUAL, Move.PAUSE) and not passed:
                decision, passed = Decision(Move.NEXT), True
            if decision.move is Move.WEIGHT:
                canary, rest = split(total, decision.weight)
                pos = self._move(build, name, Position(canary, pos.step, pos.since), rest)
                status = self.runtime.wait(
                    self.namespace,
                    self.desired.app,
                    self.desired.env,
                    {name: f"{name}-canary"},
                    self.timeout,
                )
                if status.health is Health.DEGRADED:
                    self._abort(build, name, pos, total, "; ".join(status.reasons()))
                    return
                if status.health is not Health.HEALTHY:  # not ready yet: the next sync looks
                    why = "; ".join(status.reasons()) or "its pods are not ready yet"
                    self._state(name, pos, total, len(steps), Move.WEIGHT, why)
                    return
                pos = self._move(build, name, Position(canary, pos.step + 1, self.clock()))
            elif decision.move is Move.NEXT:
                pos = self._move(build, name, Position(pos.replicas, pos.step + 1, self.clock()))
            elif decision.move is Move.PROMOTE:
                self._promote(plain, name, pos, total, len(steps))
                return
            else:
                reason = (
                    f"waiting for `ondeck rollout promote {name}`"
                    if decision.move is Move.MANUAL
                    else f"paused, {decision.left:.0f} s left"
                )
                wake = self.clock() + decision.left if decision.move is Move.PAUSE else None
                self._state(name, pos, total, len(steps), decision.move, reason, wake_at=wake)
                return

    def _move(self, build: Build, name: str, pos: Position, stable: int | None = None) -> Position:
        """Record `pos` on the canary Deployment (and scale the stable set to `stable`)."""
        self.positions[name] = pos
        self._apply(build(self.positions))
        if stable is not None:
            self._scale(name, stable)
        return pos

    def _abort(self, build: Build, name: str, pos: Position, total: int, why: str) -> None:
        """The canary failed: its pods go, the stable set is whole again, the reason is kept."""
        stopped = Position(0, pos.step, pos.since, why[:500])
        self._move(build, name, stopped, total)
        self._state(name, stopped, total, 0, Move.WEIGHT, f"canary aborted: {why}", aborted=True)
        if why != BY_A_PERSON:  # a person's abort is recorded when asked for
            self.states[name] = dataclasses.replace(self.states[name], failed_now=True)

    def _promote(self, plain: Obj, name: str, pos: Position, total: int, steps: int) -> None:
        """Every step done: the stable Deployment takes the new release and all its replicas."""
        # forced: takes .spec.replicas back from the /scale writes of `ondeck-canary`
        self.runtime.force_apply(plain, self.revision)
        self.writes += 1
        del self.positions[name]
        self.states[name] = CanaryState(
            name,
            steps,
            steps,
            0,
            total,
            Move.PROMOTE,
            "promoted: every step done",
            since=self.clock(),
            images=self._images,
        )

    def _state(
        self,
        name: str,
        pos: Position,
        total: int,
        steps: int,
        move: Move,
        reason: str,
        aborted: bool = False,
        wake_at: float | None = None,
    ) -> None:
        stable = total if aborted else max(total - pos.replicas, 0 if pos.replicas >= total else 1)
        if not aborted:
            pct = round(100 * share(pos.replicas, stable))
            reason = f"canary {pos.replicas} of {pos.replicas + stable} pods (~{pct}%), {reason}"
        self.states[name] = CanaryState(
            name,
            pos.step,
            steps,
            pos.replicas,
            stable,
            move,
            reason,
            aborted,
            since=pos.since,
            wake_at=wake_at,
            images=self._images,
        )

    def _apply(self, objects: list[Obj]) -> ApplyResult:
        result = self.runtime.apply(objects, self.revision, keep=self.kept())
        self.writes += result.writes
        self.applied.append(result)
        return result

    def _scale(self, name: str, replicas: int) -> None:
        self.runtime.scale(self.namespace, name, replicas, SCALER)
        self.writes += 1


def annotate(objects: list[Obj], positions: Mapping[str, Position]) -> None:
    """Put each canary's position on its Deployment (read back by `_position`)."""
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        name = str(obj["metadata"]["name"]).removesuffix("-canary")
        pos = positions.get(name)
        if pos is None or obj["metadata"]["name"] != f"{name}-canary":
            continue
        notes = obj["metadata"].setdefault("annotations", {})
        notes[STEP] = str(pos.step)
        notes[SINCE] = str(int(pos.since))
        if pos.aborted:
            notes[ABORTED] = pos.aborted


def _position(deployment: Obj) -> Position:
    notes = deployment["metadata"].get("annotations") or {}
    try:
        step, since = int(notes.get(STEP, 0)), float(notes.get(SINCE, 0))
    except ValueError:
        step, since = 0, 0.0
    return Position(int(deployment["spec"].get("replicas", 0)), step, since, notes.get(ABORTED, ""))


def _image(deployment: Obj) -> str:
    containers = deployment["spec"]["template"]["spec"].get("containers") or [{}]
    return str(containers[0].get("image", ""))


def _deployment(objects: list[Obj], name: str) -> Obj:
    found: Obj = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name
    )
    return json.loads(json.dumps(found))  # type: ignore[no-any-return]
