"""Canary by replica ratio on Kubernetes, where no router splits traffic: pure decisions.

Called by the Kubernetes runtime (runtime/kubernetes.py) at each sync of a canary
service with a new release. The stable Deployment keeps the old pods, a second
Deployment `SERVICE-canary` runs the new ones behind the same Service selector, so
traffic splits by how many pods each has: a step's weight is approximated with
whole replicas (granularity 1/replicas), never exactly as the host's router does.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ondeck.spec.model import Step


def split(replicas: int, weight: int) -> tuple[int, int]:
    """(canary, stable) pods for `weight` percent of `replicas`.

    The canary gets ceil(weight x replicas), at least 1 once the weight is above 0;
    the stable set the rest, at least 1 until the weight is 100 (the old version keeps
    serving while any traffic is meant for it).
    """
    if weight <= 0 or replicas <= 0:
        return 0, replicas
    canary = min(replicas, max(1, math.ceil(replicas * weight / 100)))
    stable = replicas - canary
    if weight < 100:
        stable = max(stable, 1)
    return canary, stable


def share(canary: int, stable: int) -> float:
    """The share of pods (so of traffic, roughly) the canary gets."""
    total = canary + stable
    return canary / total if total else 0.0


class Move(enum.Enum):
    WEIGHT = "weight"  # set the step's weight, wait until its pods are ready, go on
    PAUSE = "pause"  # wait `left` seconds more (the controller syncs again)
    MANUAL = "manual"  # wait for `ondeck rollout promote`
    NEXT = "next"  # a pause that is over: go on
    PROMOTE = "promote"  # every step done: the stable Deployment takes the new release


@dataclass(frozen=True)
class Decision:
    move: Move
    weight: int = 0
    left: float = 0.0


def decide(steps: Sequence[Step], step: int, since: float, now: float) -> Decision:
    """What the canary at `step` (entered at `since`, epoch seconds) does at `now`."""
    if step >= len(steps):
        return Decision(Move.PROMOTE)
    current = steps[step]
    if current.weight is not None:
        return Decision(Move.WEIGHT, weight=current.weight)
    if current.pause == "manual":
        return Decision(Move.MANUAL)
    assert isinstance(current.pause, float)  # validation: a step is a weight or a pause
    left = since + current.pause - now
    return Decision(Move.PAUSE, left=left) if left > 0 else Decision(Move.NEXT)
